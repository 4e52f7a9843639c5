"""The Channel's files: making, opening, re-opening after fork, and removing them.

Design rules:

- A named channel is two files: ``<path>`` (header and ring, mapped by every
  participant) and ``<path>.lock`` (the registry and slot lock bytes, and the consumers'
  claim flock), plus ``<path>.bell`` once someone asks for the doorbell.  An anonymous
  channel has unlinked temporary files for the same jobs, reached after fork() through
  /proc/self/fd.
- A channel file appears complete or not at all (built beside the path, then linked),
  and an opener maps exactly the size the header gives, through the descriptor it
  checked: it never writes (or extends) a file it has not checked.
- The path may be unlinked and re-created by another process at any instant: open()
  checks, after it has its descriptors, that the path still names the file it mapped
  (else it starts again: ``Replaced``), and unlink() removes only what is still this
  channel's, the channel file first and its lock file second (open() relies on that
  order).
- A fork child never locks or unlocks through a description inherited from its parent
  (its LOCK_UN would drop the parent's lock): it opens new ones (``reopen_fd``).

Steps (of channel.py's table; no lock is held in any of them):

    ====  =====================================  ==========  ===============================
    step  what                                   holds       another process may see
                                                             (after this step, before next)
    ====  =====================================  ==========  ===============================
    C1    create(): temp file beside path,       -           a .mmapkit-chan-* temp file
          fallocate, write the fixed header                  (K: it stays; nobody opens it)
    C2    link(temp, path), unlink temp          -           the complete file at once: an
                                                             opener never sees a young or
                                                             half-written channel
    O1    open(): open path, fstat, read and     -           nothing of us
          check the header, size == header's
    O2    map exactly that size through O1's     -           nothing (we never write a file
          descriptor (never by name again)                   we have not checked)
    O3    open (create) <path>.lock, and again   -           an empty .lock file may appear
          as the consumers' claim (unless one                (K: harmless, reused by name)
          flock serves both): the same file,
          else O1
    O4    open path again (the producers'        -           -
          claim): the same file as O1? else
          start at O1 again (unlinked and
          re-created meanwhile); ENOENT: raise
    O5    read tail, head, tail until the two    -           -
          tails agree; check the positions
    F1    fork child: new descriptions for the   (parent's)  - (the child never locks or
          lock file and the claims, by name                  unlocks through an inherited
          only if the name is still the same                 description: its LOCK_UN would
          file, else via /proc/self/fd                       drop the parent's lock)
    U1    unlink(): remove path if it is still   -           open() fails at O1, or starts
          this channel's file                                again from O4
    U2    then <path>.lock if still ours, and    -           -
          <path>.bell
    ====  =====================================  ==========  ===============================
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat

from .. import _platform
from .._testhooks import PAUSES as _PAUSES
from .._testhooks import pause as _pause
from ..errors import ForeignFileError, ReadOnlyError
from ..region import Region
from . import _format as fmt
from ._claims import strict

__all__ = ["Opened", "Replaced", "anonymous_files", "check_ring", "close_fds", "create_file",
           "map_checked", "open_files", "positions", "reopen_fd", "same_file", "unlink_if"]

_HEAD_Q = fmt.HEAD_Q
_TAIL_Q = fmt.TAIL_Q
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

# What open_files() hands the Channel: region, header, lock descriptor, lock path, the
# (producer, consumer) claim descriptors, and (st_dev, st_ino) of the channel file.
Opened = tuple[Region, fmt.Header, int, str, tuple[int, int], tuple[int, int]]


class Replaced(Exception):
    """open(): the path was unlinked and re-created between two steps; start again."""


def create_file(path: str, header: bytes, size: int) -> None:
    """Steps C1-C2: a ``size``-byte channel file with ``header`` at ``path``, complete or
    not at all.  FileExistsError if ``path`` exists."""
    directory = os.path.dirname(os.path.abspath(path))
    import tempfile  # here, not at import: it loads random, shutil...

    fd, tmp = tempfile.mkstemp(prefix=".mmapkit-chan-", dir=directory)
    try:
        _platform.ensure_allocated(fd, size)
        os.pwrite(fd, header, 0)
        os.close(fd)
        fd = -1
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(
                f"{path} already exists; use Channel.open() to attach to it, or unlink "
                "it first to start a new channel") from None
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)


def map_checked(fd: int, path: str | None) -> tuple[Region, fmt.Header, os.stat_result]:
    """Steps O1-O2 on the channel file open as ``fd``: check it is a regular file with a
    sane header and the size that header gives, and map exactly that size through ``fd``.
    ``path`` only names it in errors (None: a Queue's unlinked file)."""
    where = path or "the queue's channel file"
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise ForeignFileError(f"{where} is not a regular file, so not an mmapkit channel",
                               path=path)
    header = fmt.decode_header(os.pread(fd, fmt.FIXED_SIZE, 0), path=path)
    if st.st_size != header.file_size:
        raise ForeignFileError(
            f"{where} has {st.st_size} bytes but its header says {header.file_size}; it "
            "was truncated or extended by something else: unlink it and create it again",
            path=path)
    # O2: map exactly the size create() gave it, through this very descriptor (a second
    # open by name could land on another file, and mapping more than the file has would
    # extend it: an opener never writes a file it has not checked).
    mapping = mmap.mmap(fd, header.file_size, access=mmap.ACCESS_WRITE)
    region = Region(mapping, path=path, offset=0, map_offset=0, size=header.file_size,
                    readonly=False, private=False)
    return region, header, st


def check_ring(region: Region, capacity: int) -> None:
    """Step O5: the ring positions, read as one consistent pair, are sane."""
    hdr = region.view[: fmt.HEADER_SIZE].cast("Q")
    try:
        found = positions(hdr)
    finally:
        hdr.release()
    if found is not None:
        fmt.check_positions(found[0], found[1], capacity)


def open_files(path: str) -> Opened:
    """One attempt of Channel.open() (steps O1-O5); Replaced when the path was unlinked
    and re-created under it."""
    try:
        fd = os.open(path, os.O_RDWR | _CLOEXEC)  # O1
    except PermissionError as exc:
        raise ReadOnlyError(exc.errno, f"{path} is not writable by this process; every "
                            "participant of a channel writes to it (ask for write "
                            "permission)", path) from exc
    region: Region | None = None
    fds: list[int] = []
    try:
        region, header, st = map_checked(fd, path)
        if _PAUSES:
            _pause("channel.open:mapped")
        lock_path = path + ".lock"
        # O3: the lock file by name, then O4: the path again.  unlink() removes the path
        # before the lock file, so if the path still names our file after we opened the
        # lock file, that lock file is the one every participant of this channel uses.
        lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | _CLOEXEC, 0o644)
        fds.append(lock_fd)
        one_claim = strict()
        cclaim = -1
        if not one_claim:
            cclaim = os.open(lock_path, os.O_RDONLY | _CLOEXEC)
            fds.append(cclaim)
            if not same_file(os.fstat(cclaim), os.fstat(lock_fd)):
                raise Replaced
        try:
            pclaim = os.open(path, os.O_RDONLY | _CLOEXEC)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, f"{path} was unlinked while it was "
                                    "being opened", path) from None
        fds.append(pclaim)
        if not same_file(os.fstat(pclaim), st):
            raise Replaced
        check_ring(region, header.capacity)  # O5
        return (region, header, lock_fd, lock_path, (pclaim, pclaim if one_claim else cclaim),
                (st.st_dev, st.st_ino))
    except BaseException:
        close_fds(fds)
        if region is not None:
            region.close()
        raise
    finally:
        os.close(fd)  # the mapping holds the file; our locks use their own descriptions


def anonymous_files() -> tuple[int, int]:
    """(lock descriptor, doorbell descriptor) of an anonymous channel: an unlinked
    temporary file for the liveness locks (reopened after fork) and a FIFO made now, so
    that fork children inherit the same one."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix="mmapkit-chan-lock-")
    os.unlink(tmp)
    try:
        directory = tempfile.mkdtemp(prefix="mmapkit-chan-bell-")
        try:
            bell = os.path.join(directory, "bell")
            os.mkfifo(bell, 0o600)
            bell_fd = os.open(bell, os.O_RDWR | os.O_NONBLOCK | _CLOEXEC)
            os.unlink(bell)
        finally:
            os.rmdir(directory)
    except BaseException:
        os.close(fd)
        raise
    return fd, bell_fd


def positions(hdr: memoryview) -> tuple[int, int] | None:
    """(head, tail) of the header ``hdr`` (cast 'Q') as they were at one instant, or None
    if they never held still.

    Head and tail are two words written by different processes: read head, then tail,
    and a consumer may have moved tail past the head we read; read tail, then head, and
    a producer may have moved head more than a capacity past our tail.  Both only grow,
    so a tail that reads the same before and after head was that value when head was
    read: the pair is consistent."""
    for _ in range(1000):
        tail = hdr[_TAIL_Q]
        if _PAUSES:
            _pause("channel.positions")
        head = hdr[_HEAD_Q]
        if hdr[_TAIL_Q] == tail:
            return int(head), int(tail)
    return None


def reopen_fd(fd: int, path: str | None) -> int:
    """Step F1: a fresh open file description of the file ``fd`` has open; closes ``fd``.

    By ``path`` when it still names that very file, else through /proc/self/fd: a path
    unlinked and re-created meanwhile leads to another channel's file."""
    new_fd = -1
    if path is not None:
        with contextlib.suppress(OSError):  # unlinked meanwhile: use the descriptor
            new_fd = os.open(path, os.O_RDWR | _CLOEXEC)
        if new_fd >= 0 and not same_file(os.fstat(new_fd), os.fstat(fd)):
            os.close(new_fd)
            new_fd = -1
    if new_fd < 0:
        new_fd = _platform.reopen_fd(fd)
    os.close(fd)
    return new_fd


def unlink_if(path: str, identity: tuple[int, int] | None) -> bool:
    """Unlink ``path`` if it is the file ``identity`` (any file when None); True if it
    was ours (removed, or removed by someone else already)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    if identity is not None and (st.st_dev, st.st_ino) != identity:
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return True


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return a.st_ino == b.st_ino and a.st_dev == b.st_dev


def close_fds(box: list[int]) -> None:
    """Close the descriptors in ``box`` once (explicit close() or garbage collection)."""
    while box:
        with contextlib.suppress(OSError):
            os.close(box.pop())
