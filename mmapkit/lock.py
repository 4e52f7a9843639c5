"""FileLock: a cross-process shared/exclusive lock on a file (flock), with timeouts.

Design rules:

- The kernel holds the real lock (``flock``), so a process that dies holding it, even by
  ``kill -9``, releases it at once: no stale lock files, no lock-breaking heuristics.
- flock locks belong to an *open file description*, which every thread of a process (and
  a fork child) shares.  So the kernel cannot tell our threads apart, and a process-local
  state machine sits in front of it: it makes the lock re-entrant per thread,
  excludes other threads of this process, and counts holders per process the way MMKV's
  InterProcessLock does.
- A fork child must neither keep nor release its parent's lock.  ``flock(LOCK_UN)`` through
  an inherited descriptor would release the parent's lock (same description), and merely
  keeping the inherited descriptor open keeps a lock alive after the parent died.  So
  right after ``fork()`` the child gets its own description of the same file (by
  /proc/self/fd where there is one, else by path) and closes the inherited one; it then
  holds nothing.  Never through the parent's description does the child lock or unlock.
- A kernel call that may wait (taking or converting the lock) runs *outside* the
  process-local mutex, marked "busy": other threads wait for it on the condition, with
  their own timeouts, instead of stalling on the mutex; ``close()`` from another thread
  never waits for it (the busy thread finishes the close).
- Timeouts poll the non-blocking flock with a backoff (flock itself has no timeout);
  ``timeout=None`` blocks in the kernel with the GIL released.

Process-local states (``S`` = shared holds, ``X`` = exclusive holds, by any thread):

    ============  ============================  =======================  ==============
    state         event                         kernel call              next state
    ============  ============================  =======================  ==============
    free          acquire shared                flock(LOCK_SH)           shared
    free          acquire exclusive             flock(LOCK_EX)           exclusive
    shared        acquire shared (any thread)   none                     shared
    shared        acquire exclusive, the only   flock(LOCK_EX) convert*  exclusive
                  holder being this thread
    shared        acquire exclusive, others     wait for them            --
    shared        upgrade times out             flock(LOCK_SH) again*    shared
    shared        last shared release           flock(LOCK_UN)           free
    exclusive     acquire either, owner thread  none (re-entrant)        exclusive
    exclusive     acquire either, other thread  wait for the owner       --
    exclusive     last exclusive release,       flock(LOCK_SH) convert   shared
                  shared holds remain
    exclusive     last release                  flock(LOCK_UN)           free
    any           close()                       flock(LOCK_UN), close    closed
    any           fork(), in the child          new description; the     free
                                                inherited one is closed
                                                (never unlocked)
    ============  ============================  =======================  ==============

    * flock converts by dropping the old lock and taking the new one, so another process
      may get the lock in between: re-read shared state after an upgrade.  A failed
      non-blocking attempt has dropped the shared lock already, so an upgrade that times
      out takes the shared lock again (waiting for it if another process got in) before
      it raises LockTimeout: the caller still holds what it held.

Between two steps another thread of this process sees the lock "busy" and waits; another
process sees only what the kernel holds.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import weakref

from . import _fileio, _platform
from .errors import ClosedError, LockTimeout, UnsupportedPlatformError

# ``typing`` is for type checkers only (importing it costs milliseconds); type
# checkers take any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import contextmanager
    from types import TracebackType
else:
    from ._light_typing import contextmanager

__all__ = ["FileLock"]

_POLL_FIRST = 0.0005
_POLL_MAX = 0.02

# Every FileLock alive in this process: one at-fork hook gives each its own description
# in the child (a hook per lock would pile up for the life of the process).
_LIVE: weakref.WeakSet[FileLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for lock in list(_LIVE):
        lock._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class FileLock:
    """A shared/exclusive lock on a file, held by the kernel for this process.

    ``FileLock(path)`` opens (and creates) ``path``; ``FileLock(fd)`` locks an open file
    descriptor the caller keeps open (in a fork child, a new description of that file
    that the lock opens and closes itself: the caller's descriptor is not used there).
    Use as ``with lock:`` (exclusive), or ``with lock.shared():`` /
    ``with lock.exclusive(timeout=1):``.
    """

    def __init__(self, path_or_fd: str | os.PathLike[str] | int, *, create: bool = True) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None  # thread holding the exclusive lock
        # thread id -> its holds, innermost last (True: exclusive), so release() undoes
        # the most recent acquire() of the calling thread
        self._holds: dict[int, list[bool]] = {}
        self._kernel = 0  # 0 none, 1 shared, 2 exclusive: what flock currently holds
        self._busy: int | None = None  # thread in a kernel call that may wait
        self._closing = False  # close() asked while busy: the busy thread closes
        self._fork_error: OSError | None = None  # why a fork child has no descriptor
        if isinstance(path_or_fd, int):
            self._path: str | None = None
            self._fd: int | None = path_or_fd
            self._own_fd = False
        else:
            self._path = os.fspath(path_or_fd)
            self._own_fd = True
            self._fd = self._open(create)
        self._create = create
        self._pid = os.getpid()
        _LIVE.add(self)

    def _open(self, create: bool) -> int:
        assert self._path is not None
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0) | (os.O_CREAT if create else 0)
        try:
            return os.open(self._path, flags, 0o644)
        except PermissionError:
            return os.open(self._path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    # --- properties -------------------------------------------------------------------

    @property
    def path(self) -> str | None:
        return self._path

    @property
    def fileno(self) -> int:
        self._check_fork()
        if self._fd is None:
            raise ClosedError("the FileLock is closed")
        return self._fd

    @property
    def held(self) -> str | None:
        """What this process holds now: ``"exclusive"``, ``"shared"`` or ``None``."""
        self._check_fork()
        with self._cond:
            return (None, "shared", "exclusive")[self._kernel]

    def held_by_me(self) -> str | None:
        """What the calling thread holds: ``"exclusive"``, ``"shared"`` or ``None``."""
        self._check_fork()
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                return "exclusive"
            return "shared" if me in self._holds else None

    # --- fork -------------------------------------------------------------------------

    def _forked(self) -> None:
        """In a fork child (at-fork hook, or the first use after a fork the hook did not
        see): forget the parent's holds and threads, and swap the inherited description
        for our own.  Never unlocks through the inherited one (that is the parent's
        lock); closing our copy of it does not release anything."""
        if os.getpid() == self._pid:
            return
        # The parent's mutex may have been held by one of its threads at fork time.
        self._cond = threading.Condition(threading.Lock())
        self._owner, self._holds, self._kernel = None, {}, 0
        self._busy, self._closing = None, False
        self._pid = os.getpid()
        old = self._fd
        if old is None:
            return
        new: int | None = None
        try:
            new = _platform.reopen_fd(old)
        except (OSError, UnsupportedPlatformError) as exc:
            self._fork_error = OSError(str(exc))
        if new is None and self._path is not None:
            try:
                new = self._open(self._create)
            except OSError as exc:
                self._fork_error = exc
        if self._own_fd:
            try:
                os.close(old)
            except OSError:
                pass
        elif new is not None:
            self._own_fd = True  # ours from now on; the caller's descriptor is left alone
        self._fd = new

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:
            self._forked()

    # --- acquire / release ------------------------------------------------------------

    def _closed_error(self) -> ClosedError:
        if self._fork_error is not None:
            return ClosedError(f"this FileLock could not reopen {self._path} after fork() "
                               f"({self._fork_error}); create a new FileLock in the child")
        return ClosedError("the FileLock is closed; create a new one")

    def acquire(self, *, shared: bool = False, timeout: float | None = None) -> None:
        """Take the lock; raise :class:`LockTimeout` if ``timeout`` seconds pass first."""
        self._check_fork()
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        me = threading.get_ident()
        with self._cond:
            if self._fd is None or self._closing:
                raise self._closed_error()
            if self._owner == me:  # re-entrant under our own exclusive lock
                self._holds[me].append(not shared)
                return
            while True:
                others = any(t != me for t in self._holds)
                if self._busy is None and self._owner is None and (shared or not others):
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise self._timeout(shared, timeout)
                self._cond.wait(remaining)
                if self._fd is None or self._closing:
                    raise self._closed_error()
            want = 1 if shared else 2
            if self._kernel >= want:
                self._take(me, shared)
                return
            before = self._kernel
            op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            if before == 0:  # uncontended: one non-blocking call that never waits
                try:
                    fcntl.flock(self._fd, op | fcntl.LOCK_NB)
                except BlockingIOError:
                    if deadline is not None and deadline <= time.monotonic():
                        raise self._timeout(shared, timeout) from None
                else:
                    self._kernel = want
                    self._take(me, shared)
                    return
            self._busy = me
        # The kernel call, outside the mutex: other threads wait on the condition.
        failure: BaseException | None = None
        after = want
        try:
            self._flock(op, deadline, shared, timeout)
        except BaseException as exc:
            failure, after = exc, 0
            if before == 1:
                # A failed conversion has dropped our shared lock already: take it back
                # (waiting if another process got in), the caller still holds it.
                try:
                    self._flock(fcntl.LOCK_SH, None, True, None)
                    after = 1
                except OSError:
                    pass
        with self._cond:
            self._busy = None
            self._kernel = after
            self._cond.notify_all()
            if self._closing:
                self._finish_close()
                if failure is None:
                    raise self._closed_error()
            if failure is not None:
                raise failure
            self._take(me, shared)

    def _take(self, me: int, shared: bool) -> None:
        self._holds.setdefault(me, []).append(not shared)
        if not shared:
            self._owner = me

    def _flock(self, op: int, deadline: float | None, shared: bool,
               timeout: float | None) -> None:
        if self._fd is None:  # (callers hold it busy, so close() cannot get in between)
            raise self._closed_error()
        if not _fileio.flock_until(self._fd, op, deadline, first=_POLL_FIRST, most=_POLL_MAX):
            raise self._timeout(shared, timeout)

    def _timeout(self, shared: bool, timeout: float | None) -> LockTimeout:
        mode = "shared" if shared else "exclusive"
        where = self._path or f"fd {self._fd}"
        return LockTimeout(
            f"could not take the {mode} lock on {where} within {timeout} s: another thread "
            "or process holds it; retry, raise the timeout, or find the holder "
            f"(e.g. `fuser {where}`)")

    def release(self) -> None:
        """Undo the calling thread's most recent acquire().  After close() (which released
        everything) it does nothing."""
        self._check_fork()
        me = threading.get_ident()
        with self._cond:
            if self._fd is None and not self._holds:
                return  # closed: close() released the lock already
            stack = self._holds.get(me)
            if not stack:
                raise RuntimeError("release() of a FileLock this thread does not hold")
            stack.pop()
            if not stack:
                del self._holds[me]
            if self._owner == me and not any(stack):
                self._owner = None
            self._cond.notify_all()
            if self._owner is not None or self._fd is None:
                return
            want = 1 if self._holds else 0
            if want >= self._kernel:
                return
            if want == 0:
                fcntl.flock(self._fd, fcntl.LOCK_UN)  # never waits
                self._kernel = 0
                return
            # exclusive -> shared: a conversion, which may wait if another process gets
            # in between its drop and its take; do it as busy, outside the mutex.
            while self._busy is not None:
                self._cond.wait()
            self._busy = me
        failure: BaseException | None = None
        try:
            self._flock(fcntl.LOCK_SH, None, True, None)
        except BaseException as exc:
            failure = exc
        with self._cond:
            self._busy = None
            self._kernel = 1 if failure is None else 0
            self._cond.notify_all()
            if self._closing:
                self._finish_close()
        if failure is not None:
            raise failure

    @contextmanager
    def exclusive(self, timeout: float | None = None) -> Iterator[FileLock]:
        self.acquire(shared=False, timeout=timeout)
        try:
            yield self
        finally:
            self.release()

    @contextmanager
    def shared(self, timeout: float | None = None) -> Iterator[FileLock]:
        self.acquire(shared=True, timeout=timeout)
        try:
            yield self
        finally:
            self.release()

    def try_exclusive(self) -> bool:
        """Take the exclusive lock if it is free right now; True when taken."""
        try:
            self.acquire(timeout=0)
        except LockTimeout:
            return False
        return True

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def close(self) -> None:
        """Release everything this process holds and close the descriptor we opened.

        Threads waiting for the lock get ClosedError.  If another thread is inside a
        kernel call on the lock at this moment (waiting for another process), that thread
        completes the close when its call returns, and gets ClosedError."""
        self._check_fork()
        with self._cond:
            if self._fd is None:
                return
            self._closing = True
            self._cond.notify_all()
            if self._busy is None:
                self._finish_close()

    def _finish_close(self) -> None:
        """The close itself; the caller holds the mutex and nobody is busy."""
        fd = self._fd
        self._fd = None
        self._closing = False
        self._owner, self._holds = None, {}
        if fd is not None:
            try:
                if self._kernel:
                    fcntl.flock(fd, fcntl.LOCK_UN)  # our own description, never the parent's
            finally:
                self._kernel = 0
                if self._own_fd:
                    os.close(fd)
        self._cond.notify_all()

    def __repr__(self) -> str:
        return f"<FileLock {self._path or self._fd} held={self.held}>"
