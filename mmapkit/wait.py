"""Cross-process wait/notify on a 32-bit word in shared memory.

Design rules:

- The word is the truth; wake-ups are only hints.  ``wait(expected)`` returns as soon as
  the word differs from ``expected`` (checked before sleeping, so a change that happened
  just before the call is never missed), when woken, or at the timeout.  Callers loop:
  re-read their state, and wait again if nothing they care about changed.
- Linux: a futex on the word itself, *without* FUTEX_PRIVATE_FLAG so it works across
  processes on a MAP_SHARED mapping (fork children and unrelated processes alike).  The
  syscall goes through ctypes, which releases the GIL while asleep.
- Elsewhere (or ``backend="fifo"``): a named FIFO doorbell next to the word.  Sleepers
  wait in ``select`` on the FIFO's read end; ``wake`` writes a byte per sleeper to be
  woken.  Sleepers also re-check the word every ``_FIFO_RECHECK`` seconds, so a lost
  doorbell byte costs latency, never a hang.  Nothing spins while idle.
- A dead peer is the caller's business (it knows who the peers are); every wait takes a
  timeout so the caller gets the chance to look.
"""

from __future__ import annotations

import errno
import os
import select
import stat
import time
from collections.abc import Callable

from . import _platform
from .errors import AlignmentError, OutOfRangeError, UnsupportedPlatformError
from .region import Region

__all__ = ["WAKE_ALL", "Waiter"]

_FIFO_RECHECK = 0.05
WAKE_ALL = _platform.FUTEX_WAKE_ALL  # wake(WAKE_ALL), waker(WAKE_ALL): every sleeper


class Waiter:
    """Wait for, and announce, changes of the 32-bit word at ``offset`` of ``region``.

    ``backend`` is ``"futex"`` (Linux default), or ``"fifo"`` (the portable doorbell; its
    FIFO lives at ``doorbell`` or beside the region's file, or in a temporary directory for
    anonymous memory -- create the Waiter before fork() so children share it).
    """

    def __init__(self, region: Region, offset: int, *, backend: str | None = None,
                 doorbell: str | None = None) -> None:
        if offset % 4:
            raise AlignmentError(f"the wait word must be 4-byte aligned; offset {offset} is not")
        if offset < 0 or offset + 4 > region.size:
            raise OutOfRangeError(f"offset {offset} is outside the region of {region.size} bytes")
        if backend is None:
            backend = "futex" if _platform.HAVE_FUTEX else "fifo"
        if backend == "futex" and not _platform.HAVE_FUTEX:
            raise UnsupportedPlatformError("futex is Linux only; use backend='fifo'")
        if backend not in ("futex", "fifo"):
            raise ValueError(f"unknown backend {backend!r}; use 'futex' or 'fifo'")
        self._region = region
        self._offset = offset
        self._backend = backend
        self._word = region.view[offset : offset + 4].cast("I")
        self._fifo: str | None = None
        # Bound once to this mapping's address, like ``_word`` above.
        self._wake_word = self._wait_word = None
        if backend == "futex":
            self._wake_word = _platform.futex_waker(region.address + offset)
            self._wait_word = _platform.futex_waiter(region.address + offset)
        if backend == "fifo":
            self._fifo = doorbell or self._default_doorbell(region, offset)
            try:
                os.mkfifo(self._fifo, 0o600)
            except FileExistsError:
                pass
            if not stat.S_ISFIFO(os.stat(self._fifo).st_mode):
                raise ValueError(f"{self._fifo} exists and is not a FIFO; pass doorbell=")

    @staticmethod
    def _default_doorbell(region: Region, offset: int) -> str:
        if region.path is not None:
            return f"{region.path}.{offset}.bell"
        import tempfile  # only for a FIFO bell without a path; it imports random, shutil...

        return os.path.join(tempfile.mkdtemp(prefix="mmapkit-bell-"), "bell")

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def doorbell(self) -> str | None:
        """Path of the FIFO doorbell (``None`` with the futex backend)."""
        return self._fifo

    @property
    def waker(self) -> Callable[[int], int]:
        """``wake(count)`` as one call, for the hot path of a waker: the futex call with
        its arguments converted once (the FIFO backend: :meth:`wake` itself)."""
        return self._wake_word or self.wake

    @property
    def sleeper(self) -> Callable[[int, float | None], bool]:
        """``sleep(expected, timeout)`` as one call, for a caller that loops on its own
        state anyway: one sleep (futex) or one FIFO wait, True unless the timeout passed
        (the word may still equal ``expected``: a wake-up is a hint)."""
        return self._wait_word or self._wait_fifo

    def load(self) -> int:
        """The word's current value."""
        return int(self._word[0])

    def store(self, value: int) -> None:
        """Set the word (an aligned 4-byte store: never torn)."""
        self._word[0] = value & 0xFFFFFFFF

    def add(self, delta: int = 1) -> int:
        """Add to the word and return the new value.

        Not atomic across processes: only the single writer of a word may use it (e.g. a
        sequence counter bumped under a lock).
        """
        value = (int(self._word[0]) + delta) & 0xFFFFFFFF
        self._word[0] = value
        return value

    def wait(self, expected: int, timeout: float | None = None, *, spin: float = 0.0) -> bool:
        """Sleep while the word equals ``expected``.

        Returns True when the word differs (now or after a wake-up), False when the timeout
        passed with the word still equal to ``expected``.  A wake-up with the word unchanged
        (someone called wake() without changing it) also returns True.

        ``spin`` seconds (e.g. 50e-6) are first spent re-reading the word without sleeping:
        when the peer answers within that window (a ping-pong on another core), this saves
        the kernel round trip of sleeping and waking.  The spin is bounded, so an idle
        waiter still sleeps.
        """
        word = self._word
        if word[0] != expected:
            return True
        if spin > 0:
            now = time.perf_counter()
            end = now + (spin if timeout is None else min(spin, timeout))
            while now < end:
                if word[0] != expected:
                    return True
                now = time.perf_counter()
            if timeout is not None:
                timeout -= spin
        if self._backend == "futex":
            return self._wait_futex(expected, timeout)
        return self._wait_fifo(expected, timeout)

    def _wait_futex(self, expected: int, timeout: float | None) -> bool:
        wait = self._wait_word
        assert wait is not None
        if timeout is None:
            wait(expected, None)
            return True
        deadline = time.monotonic() + timeout
        while True:
            if wait(expected, timeout):
                return True
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return int(self._word[0]) != expected

    def _wait_fifo(self, expected: int, timeout: float | None) -> bool:
        assert self._fifo is not None
        fd = os.open(self._fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                # Check after opening: a wake() from now on finds a reader and rings.
                if int(self._word[0]) != expected:
                    return True
                remaining = _FIFO_RECHECK if deadline is None else min(
                    _FIFO_RECHECK, deadline - time.monotonic())
                if remaining <= 0:
                    return False
                ready, _, _ = select.select([fd], [], [], remaining)
                if ready:
                    try:
                        if os.read(fd, 1):
                            return True
                    except BlockingIOError:
                        pass
        finally:
            os.close(fd)

    def wake(self, n: int | None = None) -> int:
        """Wake up to ``n`` sleepers (all when ``None``).  Returns how many were woken
        (the FIFO backend cannot tell and returns how many doorbell bytes it wrote)."""
        count = WAKE_ALL if n is None else n
        if self._wake_word is not None:
            return self._wake_word(count)
        assert self._fifo is not None
        try:
            fd = os.open(self._fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return 0  # nobody has the FIFO open for reading: nobody sleeps
            raise
        try:
            try:
                return os.write(fd, b"\1" * min(count, 64))
            except BlockingIOError:
                return 0  # the pipe is full of unread rings already
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release the view of the word (so the region can close)."""
        self._word.release()
