"""FileLock: a cross-process shared/exclusive lock on a file (flock), with timeouts.

Design rules:

- The kernel holds the real lock (``flock``), so a process that dies holding it, even by
  ``kill -9``, releases it at once: no stale lock files, no lock-breaking heuristics.
- flock locks belong to an *open file description*, which every thread of a process (and
  a fork child) shares.  So the kernel cannot tell our threads apart, and a process-local
  state machine sits in front of it: it makes the lock re-entrant per thread,
  excludes other threads of this process, and counts holders per process the way MMKV's
  InterProcessLock does.
- A child after ``fork()`` reopens the file (when we know its path), so parent and child
  hold independent locks instead of silently sharing one.
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
    shared        last shared release           flock(LOCK_UN)           free
    exclusive     acquire either, owner thread  none (re-entrant)        exclusive
    exclusive     acquire either, other thread  wait for the owner       --
    exclusive     last exclusive release,       flock(LOCK_SH) convert   shared
                  shared holds remain
    exclusive     last release                  flock(LOCK_UN)           free
    ============  ============================  =======================  ==============

    * flock converts shared to exclusive by dropping and re-taking, so another process may
      get the lock in between: re-read shared state after an upgrade.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from types import TracebackType

from .errors import ClosedError, LockTimeout

__all__ = ["FileLock"]

_POLL_FIRST = 0.0005
_POLL_MAX = 0.02


class FileLock:
    """A shared/exclusive lock on a file, held by the kernel for this process.

    ``FileLock(path)`` opens (and creates) ``path``; ``FileLock(fd)`` locks an open file
    descriptor the caller keeps open.  Use as ``with lock:`` (exclusive), or
    ``with lock.shared():`` / ``with lock.exclusive(timeout=1):``.
    """

    def __init__(self, path_or_fd: str | os.PathLike[str] | int, *, create: bool = True) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None  # thread holding the exclusive lock
        # thread id -> its holds, innermost last (True: exclusive), so release() undoes
        # the most recent acquire() of the calling thread
        self._holds: dict[int, list[bool]] = {}
        self._kernel = 0  # 0 none, 1 shared, 2 exclusive: what flock currently holds
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
        with self._cond:
            return (None, "shared", "exclusive")[self._kernel]

    def held_by_me(self) -> str | None:
        """What the calling thread holds: ``"exclusive"``, ``"shared"`` or ``None``."""
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                return "exclusive"
            return "shared" if me in self._holds else None

    # --- acquire / release ------------------------------------------------------------

    def _check_fork(self) -> None:
        if os.getpid() == self._pid:
            return
        # Forked: the inherited descriptor shares the parent's lock.  Start afresh.
        self._cond = threading.Condition(threading.Lock())
        self._owner, self._holds, self._kernel = None, {}, 0
        if self._own_fd and self._fd is not None:
            os.close(self._fd)
            self._fd = self._open(self._create)
        self._pid = os.getpid()

    def acquire(self, *, shared: bool = False, timeout: float | None = None) -> None:
        """Take the lock; raise :class:`LockTimeout` if ``timeout`` seconds pass first."""
        self._check_fork()
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        me = threading.get_ident()
        with self._cond:
            if self._fd is None:
                raise ClosedError("the FileLock is closed; create a new one")
            if self._owner == me:  # re-entrant under our own exclusive lock
                self._holds[me].append(not shared)
                return
            while True:
                others = any(t != me for t in self._holds)
                if self._owner is None and (shared or not others):
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise self._timeout(shared, timeout)
                self._cond.wait(remaining)
            want = 1 if shared else 2
            if self._kernel < want:
                self._flock(fcntl.LOCK_SH if shared else fcntl.LOCK_EX, deadline, shared,
                            timeout)
                self._kernel = want
            self._holds.setdefault(me, []).append(not shared)
            if not shared:
                self._owner = me

    def _flock(self, op: int, deadline: float | None, shared: bool,
               timeout: float | None) -> None:
        assert self._fd is not None
        if deadline is None:
            fcntl.flock(self._fd, op)
            return
        delay = _POLL_FIRST
        while True:
            try:
                fcntl.flock(self._fd, op | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout(shared, timeout)
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _POLL_MAX)

    def _timeout(self, shared: bool, timeout: float | None) -> LockTimeout:
        mode = "shared" if shared else "exclusive"
        where = self._path or f"fd {self._fd}"
        return LockTimeout(
            f"could not take the {mode} lock on {where} within {timeout} s: another thread "
            "or process holds it; retry, raise the timeout, or find the holder "
            f"(e.g. `fuser {where}`)")

    def release(self) -> None:
        """Undo the calling thread's most recent acquire()."""
        self._check_fork()
        me = threading.get_ident()
        with self._cond:
            stack = self._holds.get(me)
            if not stack:
                raise RuntimeError("release() of a FileLock this thread does not hold")
            stack.pop()
            if not stack:
                del self._holds[me]
            if self._owner == me and not any(stack):
                self._owner = None
            if self._owner is None:
                want = 1 if self._holds else 0
                if want < self._kernel and self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_SH if want else fcntl.LOCK_UN)
                    self._kernel = want
            self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self, timeout: float | None = None) -> Iterator[FileLock]:
        self.acquire(shared=False, timeout=timeout)
        try:
            yield self
        finally:
            self.release()

    @contextlib.contextmanager
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
        """Release everything this process holds and close the descriptor we opened."""
        with self._cond:
            if self._fd is None:
                return
            if self._kernel and os.getpid() == self._pid:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            if self._own_fd:
                os.close(self._fd)
            self._fd = None
            self._owner, self._holds, self._kernel = None, {}, 0
            self._cond.notify_all()

    def __repr__(self) -> str:
        return f"<FileLock {self._path or self._fd} held={self.held}>"
