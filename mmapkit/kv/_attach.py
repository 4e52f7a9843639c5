"""A KV handle's binding to its file: the mode lock, opening or creating the file,
mapping it, the views of its header words, and letting go (steps O1 and F1 of store.py's
protocol table).  Functions of a ``KV`` bound into the class as its methods.

Rules:

- The path is followed, never trusted: a file is attached only if the path still names it
  once it is mapped (a compactor may rename a successor over it at any moment); otherwise
  the next one is opened (``attach_path``).
- Views of a grown mapping are rebound, never released first: another thread may be
  reading the commit word through one without a lock (get() takes none).
- ``reopen`` moves to the file the path names now and keeps the old file's attributes
  until the new one has loaded: on failure the handle stays usable on its old mapping.
"""

from __future__ import annotations

import fcntl
import os

from .._testhooks import PAUSES, pause
from ..errors import ExportedViewsError, LockTimeout, ModeConflictError
from ..lock import FileLock
from ..region import Region
from . import _files, codec
from ._files import fd_path
from .codec import HEADER_SIZE, OFF_COMMIT, OFF_LOCK_READY, OFF_WAITERS, SUPERSEDED

# ``typing`` is for type checkers only (importing it costs milliseconds); type
# checkers take any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .store import KV

__all__ = [
    "ATTACHED",
    "MODE_GRACE",
    "attach_fd",
    "attach_path",
    "bind_views",
    "create_file",
    "detach",
    "init_empty",
    "open_fd",
    "path_is_mine",
    "rebind_views",
    "remap",
    "reopen",
    "retire",
    "take_mode_lock",
    "unbind_views",
]

# What attaching to a file sets: reopen() keeps the old values until the new file loads.
ATTACHED = ("_fd", "_ident", "_region", "_view", "_size", "_commit", "_waitw", "_waiter",
            "_lock_waiter", "_want_waiter", "_index", "_lazy", "_nops", "_seq_base", "_pos",
            "_seen", "_held")
MODE_GRACE = 0.25  # a just-killed holder's mode lock may outlive its reaping a moment


def take_mode_lock(self: KV) -> FileLock | None:
    lockpath = self._path + ".lock"
    if self._readonly and not os.path.exists(self._path):
        raise FileNotFoundError(f"no KV file at {self._path}; open it writable once to "
                                "create it")
    try:
        mode = FileLock(lockpath)
    except PermissionError:
        if self._readonly:
            return None  # a read-only directory: nobody can write here, no lock needed
        raise
    try:
        # A short grace: the kernel may release a just-killed holder's lock a moment
        # after its parent reaped it (seen here about once in a thousand kill -9s).
        mode.acquire(shared=self._shared, timeout=MODE_GRACE)
    except LockTimeout:
        other = "multiprocess (or read-only)"
        try:
            mode.acquire(shared=True, timeout=0)
        except LockTimeout:
            other = "single-process"
        else:
            mode.release()
        mode.close()
        want = "single-process" if not self._shared else (
            "read-only" if self._readonly else "multiprocess")
        raise ModeConflictError(
            f"{self._path} is open in {other} mode by another process; it cannot also be "
            f"opened in {want} mode (that loses writes). Open it with multiprocess=True in "
            "every process that uses it at the same time") from None
    return mode


def attach_path(self: KV, *, create: bool) -> None:
    """Open the file the path names now, recover it and load the index."""
    while True:
        fd = self._open_fd(create)
        try:
            if self._attach_fd(fd):
                return
        except BaseException:
            self._detach()
            raise
        self._detach()  # the path was replaced while we looked; open the new file


def open_fd(self: KV, create: bool) -> int:
    flags = (os.O_RDONLY if self._readonly else os.O_RDWR) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(self._path, flags)
    except FileNotFoundError:
        if not create:
            raise FileNotFoundError(f"no KV file at {self._path}; open it writable once "
                                    "to create it") from None
    self._create_file()
    return os.open(self._path, flags)


def create_file(self: KV) -> None:
    _files.create(self._path, self._cipher, self._min_cap)


def init_empty(self: KV, fd: int) -> None:
    """Make an empty file (``touch``ed, nothing to lose) a new store, under the lock."""
    if self._shared:
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        _files.init_empty(fd, self._cipher, self._min_cap)
    finally:
        if self._shared:
            fcntl.flock(fd, fcntl.LOCK_UN)


def attach_fd(self: KV, fd: int) -> bool:
    """Map ``fd`` and load it.  False when the path no longer names this file."""
    self._fd = fd
    st = os.fstat(fd)
    self._ident = (st.st_dev, st.st_ino)
    if st.st_size < HEADER_SIZE and self._shared:
        # Only a touched empty file is this short (a created store is linked in whole):
        # whoever initialises it holds the lock, so wait for them before looking.
        fcntl.flock(fd, fcntl.LOCK_EX)
        fcntl.flock(fd, fcntl.LOCK_UN)
        st = os.fstat(fd)
    if st.st_size == 0 and not self._readonly:
        self._init_empty(fd)
    elif st.st_size < HEADER_SIZE:
        codec.parse_header(os.pread(fd, HEADER_SIZE, 0), path=self._path)
    self._region = Region.open(fd_path(fd), readonly=self._readonly)
    self._bind_views()
    if PAUSES:
        pause("kv.attach.mapped")
    if self._commit[0] & SUPERSEDED and not self._path_is_mine():
        return False  # replaced again already: follow the path once more
    return self._load()


def bind_views(self: KV) -> None:
    assert self._region is not None
    view = self._region.view
    self._view = view
    self._size = view.nbytes
    self._commit = view[OFF_COMMIT : OFF_COMMIT + 8].cast("Q")
    # [0] waiters of changed(), [1] lock wanted, [2] lock hand-overs, [3] hand-over
    # pending until (codec.OFF_*)
    self._waitw = view[OFF_WAITERS : OFF_LOCK_READY + 4].cast("I")


def rebind_views(self: KV) -> None:
    """Views of the region after it grew.  The old views are never released first:
    another thread may be reading the commit word through them (a get() takes no
    lock), and they keep the old mapping alive until they are dropped here."""
    waiters = self._waiter, self._lock_waiter, self._want_waiter
    self._waiter = self._lock_waiter = self._want_waiter = None  # (the old address)
    self._bind_views()
    for w in waiters:
        if w is not None:
            w.close()


def unbind_views(self: KV) -> None:
    if self._region is None:
        return  # nothing of ours is bound (_reopen() keeps the old views until it swaps)
    for name in ("_commit", "_waitw"):
        mv = getattr(self, name, None)
        if mv is not None:
            delattr(self, name)
            mv.release()
    if self._waiter is not None:
        self._waiter.close()
        self._waiter = None
    if self._lock_waiter is not None:
        self._lock_waiter.close()
        self._lock_waiter = None
    if self._want_waiter is not None:
        self._want_waiter.close()
        self._want_waiter = None


def detach(self: KV) -> None:
    self._held = False  # closing the descriptor drops its flock
    lazy = self._lazy
    if lazy is not None:  # (its view of the mapping would keep the region from closing)
        self._lazy = None
        lazy.release()
    self._unbind_views()
    if self._region is not None:
        self._region.close()
        self._region = None
    if self._fd >= 0:
        os.close(self._fd)
        self._fd = -1


def path_is_mine(self: KV) -> bool:
    try:
        st = os.stat(self._path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == self._ident


def remap(self: KV) -> None:
    """Map the whole file as it is now (it may have grown; it never shrinks)."""
    assert self._region is not None
    size = os.fstat(self._fd).st_size
    if size <= self._size:
        return
    self._region.grow(size)
    self._rebind_views()


def reopen(self: KV) -> None:
    """Move to the file the path names now.  On failure the handle stays as it was
    (on its old mapping, usable) and the error propagates."""
    with self._tlock:
        old = {n: getattr(self, n) for n in ATTACHED}
        # The old views stay bound (other threads' get() reads the commit word without
        # the lock) until the new file's replace them; with _region None, a failed
        # attach releases only what it bound itself.
        self._fd, self._region, self._waiter, self._lock_waiter = -1, None, None, None
        self._want_waiter, self._held, self._lazy = None, False, None
        try:
            self._attach_path(create=False)
        except BaseException:
            for n, v in old.items():
                setattr(self, n, v)
            raise
        retire(old)


def retire(old: dict[str, Any]) -> None:
    """Close a replaced file's mapping, waiters and descriptor (``old``: its attributes).

    Its views are dropped, not released: another thread may be reading the commit word
    through one right now (get() takes no lock); the mapping then goes when it lets go.
    """
    region, fd = old["_region"], old["_fd"]
    waiters = old["_waiter"], old["_lock_waiter"], old.get("_want_waiter")
    old.clear()
    for w in waiters:
        if w is not None:
            w.close()
    try:
        region.close()
    except ExportedViewsError:
        pass
    os.close(fd)
