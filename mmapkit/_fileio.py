"""File I/O primitives every component shares: one home for each (issue 14).

Design rules:

- Each primitive is spelled once, here; components call it instead of writing the loop
  again.  _platform.py stays the seam for what differs between kernels (ctypes, futex,
  mincore); this module holds the plain POSIX steps built on ``os`` and ``fcntl``.
- Nothing here keeps state between calls.  Imports are what ``import mmapkit.lock``
  already loads (os, fcntl, time, stat, errno): using a primitive costs no start-up
  time.
- Errors: a full file system is :class:`DiskFullError` (an OSError with ENOSPC or EDQUOT)
  with a message that says what to do; everything else is the OSError the kernel gave.

The primitives:

- :func:`flock_until`: flock with a deadline.  flock has no timeout, so a deadline polls
  the non-blocking call with a doubling sleep; no deadline blocks in the kernel with the
  GIL released.  Returns False when the deadline passed: each caller raises its own error
  (LockTimeout, queue.Full...), which says what *it* was waiting for.
- :func:`fsync_dir`: makes a rename, create or unlink in a directory survive power loss.
  Error policy: an I/O error (EIO, ENOSPC...) propagates, since the caller asked for
  durability and did not get it; a file system that cannot fsync a directory at all
  (EINVAL, ENOTSUP, EBADF on some FUSE and network file systems) is not an error, because
  there the rename is as durable as that file system makes anything, and refusing would
  make the whole call fail on those systems for nothing.
- :func:`write_all`: write or pwrite until every byte is in.  Short writes loop;
  EINTR is retried by Python itself (PEP 475); a write that takes no byte at all is
  reported as ENOSPC (a file system that accepts nothing has no room).
- :func:`raise_if_disk_full`: the ENOSPC/EDQUOT -> DiskFullError translation.
- :func:`atomic_file`: install a file whole or not at all.  One temp-name scheme,
  ``.<name>.<8 hex>.mmapkit-tmp`` beside the target (hidden, unique per call, and
  recognisable, so a crash leaves something a user can identify and delete); steps:
  create (O_EXCL), write, fsync (when durable), rename (or link, to never replace),
  fsync the directory (when durable).  An error at any step removes the temporary file.
- :func:`require_regular`: refuse what is not a regular file, with the caller's reason.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from .errors import DiskFullError

# ``typing`` is for type checkers only (importing it costs milliseconds); type
# checkers take any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

__all__ = [
    "DISK_FULL_ERRNOS",
    "TEMP_SUFFIX",
    "atomic_file",
    "flock_until",
    "fsync_dir",
    "raise_if_disk_full",
    "require_regular",
    "temp_name",
    "write_all",
]

# errnos that mean "the file system has no room" (EDQUOT: the user's quota)
DISK_FULL_ERRNOS = frozenset((errno.ENOSPC, errno.EDQUOT))
TEMP_SUFFIX = ".mmapkit-tmp"
# a directory fsync these file systems cannot do: nothing more durable is possible there
_NO_DIR_SYNC = frozenset(e for e in (errno.EINVAL, errno.EBADF, errno.EOPNOTSUPP,
                                     getattr(errno, "ENOTSUP", None)) if e is not None)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def flock_until(fd: int, op: int, deadline: float | None, *, first: float = 0.0005,
                most: float = 0.02) -> bool:
    """``flock(fd, op)`` (LOCK_SH or LOCK_EX), waiting at most until ``deadline`` (a
    ``time.monotonic()`` value; None waits in the kernel).  True when taken, False when the
    deadline passed first.  Polls start ``first`` seconds apart and double up to ``most``."""
    if deadline is None:
        fcntl.flock(fd, op)
        return True
    op |= fcntl.LOCK_NB
    delay = first
    while True:
        try:
            fcntl.flock(fd, op)
            return True
        except BlockingIOError:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, most)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync ``directory`` so that the names created, renamed or removed in it persist
    (error policy: the module comment)."""
    fd = os.open(os.fspath(directory) or ".", os.O_RDONLY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_SYNC:
            raise
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | bytearray | memoryview, offset: int | None = None
              ) -> None:
    """Write every byte of ``data``: at ``offset`` with pwrite (the file position does not
    move), or at the file position (O_APPEND: the end) when ``offset`` is None."""
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.ENOSPC, f"a write to descriptor {fd} took no bytes "
                          f"({len(view)} left): the file system has no room")
        view = view[n:]
        if offset is not None:
            offset += n


def raise_if_disk_full(exc: OSError, message: str,
                       filename: str | os.PathLike[str] | None = None) -> None:
    """Raise :class:`DiskFullError` with ``message`` (from ``exc``) if ``exc`` is a full
    file system; otherwise return, and the caller re-raises ``exc``.  A DiskFullError
    already is one and is left to propagate as it is."""
    if exc.errno in DISK_FULL_ERRNOS and not isinstance(exc, DiskFullError):
        if filename is None:
            raise DiskFullError(exc.errno, message) from exc
        raise DiskFullError(exc.errno, message, os.fspath(filename)) from exc


def temp_name(final: str | os.PathLike[str]) -> str:
    """The temporary name under which ``final`` is written before it is installed."""
    head, tail = os.path.split(os.path.abspath(final))
    return os.path.join(head, f".{tail}.{os.urandom(4).hex()}{TEMP_SUFFIX}")


class atomic_file:
    """``with atomic_file(path) as fd:`` write the new file through ``fd`` (open for
    reading and writing); on a normal exit it replaces ``path`` whole.

    ``overwrite=False`` never replaces: an existing ``path`` raises what ``exists(path)``
    makes (FileExistsError by default), checked by link() at the install so that a file
    created meanwhile by someone else is not clobbered either.  ``durable`` fsyncs the
    file before and its directory after the rename.  On any error, or an exception in the
    body, the temporary file is removed and ``path`` is left as it was.
    """

    # (a class, not a @contextmanager generator: a KV's create path would import
    # contextlib for it, a millisecond of start-up)

    def __init__(self, final: str | os.PathLike[str], *, mode: int = 0o644,
                 overwrite: bool = True, durable: bool = True,
                 exists: Callable[[str], BaseException] | None = None) -> None:
        self._final = os.path.abspath(final)
        self._mode, self._overwrite, self._durable = mode, overwrite, durable
        self._exists = exists
        self._tmp, self._fd = "", -1

    def __enter__(self) -> int:
        self._tmp = temp_name(self._final)
        self._fd = os.open(self._tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_CLOEXEC,
                           self._mode)
        return self._fd

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        fd, tmp = self._fd, self._tmp
        if exc_type is not None:  # the body failed: ``final`` stays as it was
            os.close(fd)
            _unlink_quietly(tmp)
            return  # (and its exception goes on)
        try:
            if self._durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)
            raise
        try:
            os.close(fd)  # (NFS reports a full disk as late as here)
            _install(tmp, self._final, self._overwrite, self._exists)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        if self._durable:
            fsync_dir(os.path.dirname(self._final))  # the rename persists


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _install(tmp: str, final: str, overwrite: bool,
             exists: Callable[[str], BaseException] | None) -> None:
    if overwrite:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)  # EEXIST instead of replacing: no window after a check
    except FileExistsError:
        raise _exists(final, exists) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        # a file system without hard links (vfat, some FUSE): check, then rename
        if os.path.lexists(final):
            raise _exists(final, exists) from None
        os.replace(tmp, final)
        return
    os.unlink(tmp)


def _exists(final: str, exists: Callable[[str], BaseException] | None) -> BaseException:
    if exists is not None:
        return exists(final)
    return FileExistsError(errno.EEXIST, f"{final} already exists; remove it or allow "
                           "overwriting", final)


def require_regular(st: os.stat_result, path: str | os.PathLike[str], why: str, *,
                    error: Callable[[str], Exception] = ValueError,
                    directory: str | None = None) -> None:
    """Raise unless ``st`` is a regular file: ``error(f"{path} is not a regular file;
    {why}")``, or with ``directory`` given, IsADirectoryError with that advice for a
    directory (what a Python user expects from open())."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return
    if directory is not None and stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, directory, os.fspath(path))
    raise error(f"{os.fspath(path)} is not a regular file; {why}")
