"""Zero-copy transfer: ``copy()`` file to file and ``send()`` file to socket.

Design rules:

- Pick the fastest kernel path and say which one ran and why the others did not:
  ``auto`` tries reflink (FICLONE) -> copy_file_range -> sendfile -> readwrite, moving on
  when the kernel answers with an errno that means "not here" (EXDEV, ENOSYS, EOPNOTSUPP,
  EINVAL, ETXTBSY, ENOTTY...).  Each skip is recorded in ``CopyResult.skipped``.  A later
  method resumes at the exact offset the earlier one reached: every copy uses explicit
  offsets, never a shared file position.
- Never touch mapped bytes from user space.  The ``mmap`` method maps the source in windows
  and hands each window to ``pwrite`` (``send`` hands it to ``socket.send``): the *kernel*
  copies out of the mapping, so a page that vanished because another process truncated the
  file gives EFAULT or a short count, not SIGBUS.  The size is also re-checked with fstat
  before every chunk.  Either way the caller gets :class:`BrokenError`.
- Crash safety by rename: data goes into ``.<name>.<random>.mmapkit-tmp`` beside the
  destination, which is renamed (or hard-linked, when overwriting is not allowed, so a file
  created meanwhile is never clobbered) only when complete.  ``durable=True`` adds fsync of
  the file and of the directory.
- Never read a whole file: every method moves fixed-size chunks, so size is unbounded.
- Holes stay holes: data extents come from SEEK_DATA/SEEK_HOLE and the temporary file is
  truncated to the full size at the end.
- ``send`` is written once as a generator of syscalls that yields when the socket would
  block; ``send`` drives it with poll(), ``asend`` with the asyncio loop.
"""

from __future__ import annotations

import errno
import mmap
import os
import select
import stat
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _fileio, _platform
from .errors import BrokenError

if TYPE_CHECKING:  # socket and asyncio are imported where used: not at import time
    import asyncio
    import socket

__all__ = ["CHUNK", "METHODS", "SEND_METHODS", "CopyResult", "asend", "copy", "send"]

METHODS = ("auto", "reflink", "copy_file_range", "sendfile", "mmap", "readwrite")
SEND_METHODS = ("splice", "sendfile", "readwrite", "mmap")
AUTO_CHAIN = ("reflink", "copy_file_range", "sendfile", "readwrite")
CHUNK = 8 << 20  # bytes per kernel call: large enough to amortise the call, small for progress
_RW_BUFFER = 1 << 20  # read/write loop buffer: ANCHORS.md's 1 MiB loop, 3.1 GB/s warm
_MAP_WINDOW = 64 << 20  # the mmap method maps at most this much of the source at a time
_SEND_PIPE = 1 << 20
# No MAP_POPULATE: measured, it did not help a cached source and made a cold one 5x
# slower (it reads the window page by page, without read-ahead).
_MAP_FLAGS = mmap.MAP_SHARED
# O_NONBLOCK: opening a FIFO by mistake must not hang before we can refuse it (regular
# files ignore the flag)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)

# errnos that mean "this method is not available for these files", so try the next one.
_FALLBACK_ERRNOS = frozenset(
    e for e in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", None),
                errno.EINVAL, errno.ETXTBSY, errno.ENOTTY, errno.EBADF, errno.ESPIPE,
                errno.ENOTSOCK)
    if e is not None
)

Progress = Callable[[int, int], object]


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Read into ``view`` at ``offset`` without moving the file position."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)  # pragma: no cover - systems without preadv
    view[:len(data)] = data
    return len(data)


@dataclass(frozen=True)
class CopyResult:
    """What :func:`copy` did.

    ``bytes``: size of the copy; ``method``: the method that finished it; ``seconds``: wall
    time; ``skipped``: ``(method, reason)`` for every method tried first and given up;
    ``path``: the destination written; ``holes``: bytes left as holes (not written).
    """

    bytes: int
    method: str
    seconds: float
    skipped: tuple[tuple[str, str], ...] = ()
    path: str = ""
    holes: int = 0

    @property
    def rate(self) -> float:
        """Bytes per second (0 for an instant copy)."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


class _Unavailable(Exception):
    """A method cannot be used here; ``reason`` says why (for CopyResult.skipped)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _why(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"{name}: {exc.strerror or exc}"


def _shrunk(src_fd: int, expected: int, where: int) -> BrokenError:
    now = os.fstat(src_fd).st_size
    return BrokenError(
        f"the source shrank from {expected} to {now} bytes while being copied (at offset "
        f"{where}); another process changed it. Nothing was written under the destination "
        "name; retry when the file is no longer being truncated"
    )


# --- one chunk of each method: copy [off, off+n) of src to the same offset of dst --------


def _kernel_chunk(name: str, call: Callable[[], int], src: int, off: int, size: int) -> int:
    """Run one kernel copy call; its errors that mean "not here" become _Unavailable, and a
    0-byte result before the end is a shrunk source or a path that cannot copy this file."""
    try:
        done = call()
    except OSError as exc:
        if exc.errno in _FALLBACK_ERRNOS:
            raise _Unavailable(_why(exc)) from exc
        raise
    if done == 0:
        if os.fstat(src).st_size < size:
            raise _shrunk(src, size, off)
        # procfs-like files claim a size but copy nothing through the kernel path
        raise _Unavailable(f"{name} copied 0 bytes before the end of the file")
    return done


def _chunk_copy_file_range(src: int, dst: int, off: int, n: int, size: int) -> int:
    return _kernel_chunk("copy_file_range",
                         lambda: _platform.copy_file_range(src, dst, n, off, off),
                         src, off, size)


def _chunk_sendfile(src: int, dst: int, off: int, n: int, size: int) -> int:
    def call() -> int:
        os.lseek(dst, off, os.SEEK_SET)
        return _platform.sendfile(dst, src, off, n)

    return _kernel_chunk("sendfile", call, src, off, size)


class _ReadWrite:
    """pread into one reused buffer, pwrite it out: one user-space copy each way."""

    def __init__(self) -> None:
        self.buf = bytearray(_RW_BUFFER)
        self.view = memoryview(self.buf)

    def __call__(self, src: int, dst: int, off: int, n: int, size: int) -> int:
        want = min(n, len(self.buf))
        got = _pread_into(src, self.view[:want], off)
        if got == 0:
            raise _shrunk(src, size, off)
        _fileio.write_all(dst, self.view[:got], off)
        return got


class _MmapWindows:
    """The source mapped read-only in windows; the kernel copies out of it via pwrite.

    User space never dereferences the mapping, so a truncated source cannot raise SIGBUS:
    fstat before every chunk catches most shrinks, and EFAULT / a short write from pwrite
    catches a truncation that lands between the fstat and the copy.
    """

    def __init__(self) -> None:
        self.map: mmap.mmap | None = None
        self.view: memoryview | None = None
        self.start = 0
        self.end = 0

    def close(self) -> None:
        if self.view is not None:
            self.view.release()
            self.view = None
        if self.map is not None:
            self.map.close()
            self.map = None

    def _window(self, src: int, off: int, size: int) -> memoryview:
        if self.view is None or not self.start <= off < self.end:
            self.close()
            self.start = off - off % mmap.ALLOCATIONGRANULARITY
            self.end = min(self.start + _MAP_WINDOW, size)
            self.map = mmap.mmap(src, self.end - self.start, prot=mmap.PROT_READ,
                                 flags=_MAP_FLAGS, offset=self.start)
            if hasattr(self.map, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
                self.map.madvise(mmap.MADV_SEQUENTIAL)
            self.view = memoryview(self.map)
        return self.view

    def __call__(self, src: int, dst: int, off: int, n: int, size: int) -> int:
        if os.fstat(src).st_size < min(off + n, size):
            raise _shrunk(src, size, off)
        return self.write_window(src, dst, off, n, size)

    def write_window(self, src: int, dst: int, off: int, n: int, size: int) -> int:
        """The copy itself, without the size check: a shrink that lands after the fstat."""
        view = self._window(src, off, size)
        rel = off - self.start
        n = min(n, self.end - off)
        written = 0
        while written < n:
            try:
                w = os.pwrite(dst, view[rel + written:rel + n], off + written)
            except OSError as exc:
                if exc.errno == errno.EFAULT:  # the pages went away under the kernel's copy
                    raise _shrunk(src, size, off + written) from exc
                raise
            if w == 0:
                raise _shrunk(src, size, off + written)
            written += w
        return n


_ChunkFn = Callable[[int, int, int, int, int], int]


def _copy_data(src: int, dst: int, size: int, extents: list[tuple[int, int]],
               chain: list[str], skipped: list[tuple[str, str]],
               progress: Progress | None) -> str:
    """Copy every extent with the first method of ``chain`` that works; returns its name."""
    rw = _ReadWrite() if "readwrite" in chain else None
    windows = _MmapWindows() if "mmap" in chain else None
    fns: dict[str, _ChunkFn] = {"copy_file_range": _chunk_copy_file_range,
                                "sendfile": _chunk_sendfile}
    if rw is not None:
        fns["readwrite"] = rw
    if windows is not None:
        fns["mmap"] = windows
    active = 0
    try:
        for start, end in extents:
            off = start
            while off < end:
                name = chain[active]
                try:
                    off += fns[name](src, dst, off, min(CHUNK, end - off), size)
                except _Unavailable as why:
                    if active + 1 >= len(chain):
                        raise OSError(errno.EOPNOTSUPP, f"{name} cannot copy these files "
                                      f"({why.reason}); try method='auto'") from None
                    skipped.append((name, why.reason if off == 0 else
                                    f"{why.reason} (after {off} bytes)"))
                    active += 1
                    continue
                if progress is not None:
                    progress(off, size)
    finally:
        if windows is not None:
            windows.close()
    return chain[active]


# --- destination handling ----------------------------------------------------------------


def _resolve_dst(src: str, dst: str) -> str:
    if os.path.isdir(dst):
        return os.path.join(dst, os.path.basename(os.path.normpath(src)))
    return dst


def _exists(final: str) -> FileExistsError:
    return FileExistsError(errno.EEXIST, f"{final} already exists; pass overwrite=True "
                           "(--overwrite) to replace it", final)


def _disk_full_message(exc: OSError, src: str, final: str, size: int, existed: bool) -> str:
    """What a copy that ran out of space says (its temporary file is gone by then)."""
    what = "the quota is exhausted" if exc.errno == errno.EDQUOT else "no space left"
    kept = "was left as it was" if existed else "was not created"
    return (f"{what} on the file system of {os.path.dirname(final) or '.'} while copying "
            f"{src} ({size:,} bytes) to {final}: free some space (or copy to another file "
            f"system) and retry. The partial copy was removed; {final} {kept}")


def copy(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, method: str = "auto",
         progress: Progress | None = None, sparse: bool = True, metadata: bool = False,
         overwrite: bool = False, durable: bool = False) -> CopyResult:
    """Copy the regular file ``src`` to ``dst`` (a file name or an existing directory).

    ``method``: ``auto`` (reflink -> copy_file_range -> sendfile -> readwrite, falling back
    when the kernel refuses), or one of ``reflink``, ``copy_file_range``, ``sendfile``,
    ``mmap``, ``readwrite`` to force it (an unsupported forced method raises OSError).
    ``progress(done, total)`` is called after every chunk.  ``sparse`` keeps holes as
    holes.  ``metadata`` copies permission bits and access/modification times (else a new
    file gets the source's permission bits minus the umask, and a replaced file keeps its
    own).  An existing ``dst`` raises FileExistsError unless ``overwrite``.  ``durable``
    fsyncs the file and its directory before returning, for power-loss safety.

    The destination appears complete or not at all: a crash leaves at most a
    ``.<name>.*.mmapkit-tmp`` file beside it.  A full file system (ENOSPC, or EDQUOT for
    a quota) raises :class:`~mmapkit.errors.DiskFullError` (an OSError with that errno):
    the partial temporary file is removed first, and ``dst`` is left as it was (not
    created, or the old file unchanged).  A symlink at ``dst`` is replaced by the
    copy, not written through.  A source truncated by another process during the copy
    raises :class:`BrokenError`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown copy method {method!r}; choose one of {', '.join(METHODS)}")
    src_s, dst_s = os.fspath(src), os.fspath(dst)
    final = _resolve_dst(src_s, dst_s)
    t0 = time.perf_counter()
    src_fd = os.open(src_s, _READ_FLAGS)
    try:
        st = os.fstat(src_fd)
        _fileio.require_regular(
            st, src_s, "copy() copies regular files (use send() or a read loop for pipes "
            "and devices)", directory="cannot copy a directory; copy() takes one regular file")
        try:
            old = os.stat(final)
        except FileNotFoundError:
            old = None
        if old is not None:
            if os.path.samestat(st, old):
                import shutil

                raise shutil.SameFileError(f"{src_s} and {final} are the same file")
            if stat.S_ISDIR(old.st_mode):
                raise IsADirectoryError(errno.EISDIR, "the destination is a directory "
                                        "inside the target directory", final)
            if not overwrite:
                raise _exists(final)
        size = st.st_size
        head = os.path.dirname(os.path.abspath(final))
        if not os.path.isdir(head):
            raise FileNotFoundError(errno.ENOENT, f"the destination directory {head} does "
                                    "not exist; create it first", head)
        try:
            # the kernel applies the umask to this mode, as cp does for a new file
            with _fileio.atomic_file(final, mode=stat.S_IMODE(st.st_mode) | stat.S_IWUSR,
                                     overwrite=overwrite, durable=durable,
                                     exists=_exists) as dst_fd:
                skipped: list[tuple[str, str]] = []
                used, holes = _copy_into(src_fd, dst_fd, size, method, sparse, skipped,
                                         progress)
                if metadata:
                    os.fchmod(dst_fd, stat.S_IMODE(st.st_mode))
                    os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
                elif old is not None:
                    os.fchmod(dst_fd, stat.S_IMODE(old.st_mode))
                    try:
                        os.fchown(dst_fd, old.st_uid, old.st_gid)
                    except PermissionError:
                        pass  # only root may give a file away; keep ours
                else:
                    os.fchmod(dst_fd, stat.S_IMODE(os.fstat(dst_fd).st_mode) & ~stat.S_IWUSR
                              | (st.st_mode & stat.S_IWUSR))
        except OSError as exc:
            _fileio.raise_if_disk_full(
                exc, _disk_full_message(exc, src_s, final, size, old is not None), final)
            raise
    finally:
        os.close(src_fd)
    return CopyResult(size, used, time.perf_counter() - t0, tuple(skipped), final, holes)


def _copy_into(src_fd: int, dst_fd: int, size: int, method: str, sparse: bool,
               skipped: list[tuple[str, str]], progress: Progress | None) -> tuple[str, int]:
    chain = list(AUTO_CHAIN) if method == "auto" else [method]
    if chain[0] == "reflink":
        try:
            _platform.reflink(src_fd, dst_fd)
        except OSError as exc:
            if method == "reflink":
                raise OSError(exc.errno, f"reflink (FICLONE) is not possible here "
                              f"({_why(exc)}); the file system must support it (btrfs, xfs) "
                              "and both files must be on it. Try method='auto'") from None
            if exc.errno not in _FALLBACK_ERRNOS and exc.errno not in (errno.EPERM,):
                raise
            skipped.append(("reflink", _why(exc)))
            chain.pop(0)
        else:
            if progress is not None:
                progress(size, size)
            return "reflink", 0
    extents = _platform.data_extents(src_fd, size) if sparse else [(0, size)] if size else []
    holes = size - sum(e - s for s, e in extents)
    if size and not extents:
        used = chain[0]  # all hole: nothing to move
    else:
        used = _copy_data(src_fd, dst_fd, size, extents, chain, skipped, progress)
    os.ftruncate(dst_fd, size)  # the trailing hole, if any
    if progress is not None:
        progress(size, size)
    return used, holes


# --- file to socket ----------------------------------------------------------------------


def _open_source(path_or_file: Any) -> tuple[int, bool]:
    """(fd, owned): a path is opened here (and closed by us), a file object or fd is not."""
    if isinstance(path_or_file, int):
        return path_or_file, False
    if isinstance(path_or_file, (str, bytes, os.PathLike)):
        return os.open(path_or_file, _READ_FLAGS), True
    fileno = getattr(path_or_file, "fileno", None)
    if fileno is None:
        raise TypeError("send() takes a path, a file object with fileno(), or a file "
                        f"descriptor, not {type(path_or_file).__name__}")
    return int(fileno()), False


def _send_plan(sock: socket.socket, fd: int, offset: int, count: int | None) -> tuple[int, str]:
    import socket  # the caller made one, so this is a dictionary look-up

    if sock.type != socket.SOCK_STREAM:
        raise ValueError("send() needs a stream socket (SOCK_STREAM); datagram sockets "
                         "would cut the file into unrelated messages")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, not {offset}")
    st = os.fstat(fd)
    _fileio.require_regular(st, f"descriptor {fd}", "send() sends regular files")
    if offset > st.st_size:
        raise ValueError(f"offset {offset} is past the end of the file ({st.st_size} bytes)")
    if count is None:
        count = st.st_size - offset
    elif count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    elif offset + count > st.st_size:
        raise ValueError(f"offset + count ({offset + count}) is past the end of the file "
                         f"({st.st_size} bytes); pass count=None to send to the end")
    # Measured here (bench/transfer.py, docs/benchmarks.md): to a Unix socket, splice through
    # a 1 MiB pipe beat sendfile in every run (about 10 vs 8.5 GB/s) and read+sendall (3.5).
    # Over TCP loopback the figures swung 0.7x..2.5x between sendfile and a pread loop with
    # the machine's load, so TCP keeps sendfile: it spares the sender's CPU (Kafka's way).
    if sock.family == socket.AF_UNIX and _platform.HAVE_SPLICE:
        return count, "splice"
    if _platform.HAVE_SENDFILE:
        return count, "sendfile"
    return count, "mmap"


def _send_shrunk(fd: int, end: int, where: int) -> BrokenError:
    now = os.fstat(fd).st_size
    return BrokenError(f"the file shrank to {now} bytes while being sent (needed {end}, "
                       f"sent up to offset {where}); another process truncated it. The peer "
                       "received a partial stream: close the connection and retry")


# The steps below yield only when the socket would block; the value sent back in is ignored.
_Steps = Generator[None, None, int]


def _steps_sendfile(sock: socket.socket, fd: int, offset: int, count: int) -> _Steps:
    out, sent, end = sock.fileno(), 0, offset + count
    while sent < count:
        try:
            n = _platform.sendfile(out, fd, offset + sent, min(CHUNK, count - sent))
        except BlockingIOError:
            yield
            continue
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) and sent == 0:
                return (yield from _steps_mmap(sock, fd, offset, count))
            raise
        if n == 0:
            raise _send_shrunk(fd, end, offset + sent)
        sent += n
    return sent


def _steps_splice(sock: socket.socket, fd: int, offset: int, count: int) -> _Steps:
    try:
        pipe = _platform.SplicePipe(_SEND_PIPE)
    except OSError:
        return (yield from _steps_sendfile(sock, fd, offset, count))
    with pipe:
        try:
            # a non-blocking socket makes the splice out answer EAGAIN by itself (its
            # O_NONBLOCK): the steps yield then
            sent = yield from pipe.steps(fd, sock.fileno(), count, offset_in=offset,
                                         flags_out=_platform.SPLICE_F_MOVE
                                         | _platform.SPLICE_F_MORE)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS) or pipe.moved:
                raise
            sent = -1  # this file (or kernel) cannot splice: nothing was sent
    if sent < 0:
        return (yield from _steps_sendfile(sock, fd, offset, count))
    if sent < count:
        raise _send_shrunk(fd, offset + count, offset + sent)
    return sent


def _steps_readwrite(sock: socket.socket, fd: int, offset: int, count: int) -> _Steps:
    """pread into one reused buffer, then socket.send it: fastest over TCP loopback."""
    buf = bytearray(min(_RW_BUFFER, count))
    view = memoryview(buf)
    sent, end = 0, offset + count
    while sent < count:
        got = _pread_into(fd, view[:min(len(buf), count - sent)], offset + sent)
        if got == 0:
            raise _send_shrunk(fd, end, offset + sent)
        done = 0
        while done < got:
            try:
                done += sock.send(view[done:got])
            except BlockingIOError:
                yield
        sent += got
    return sent


def _steps_mmap(sock: socket.socket, fd: int, offset: int, count: int) -> _Steps:
    """Map the file in windows and let socket.send copy from it in the kernel (no SIGBUS)."""
    sent, end = 0, offset + count
    while sent < count:
        if os.fstat(fd).st_size < end:
            raise _send_shrunk(fd, end, offset + sent)
        pos = offset + sent
        start = pos - pos % mmap.ALLOCATIONGRANULARITY
        length = min(_MAP_WINDOW, end - start)
        mapped = mmap.mmap(fd, length, flags=_MAP_FLAGS, prot=mmap.PROT_READ, offset=start)
        view = memoryview(mapped)
        try:
            while sent < count and offset + sent < start + length:
                rel = offset + sent - start
                try:
                    n = sock.send(view[rel:min(rel + CHUNK, length)])
                except BlockingIOError:
                    yield
                    continue
                except OSError as exc:
                    if exc.errno == errno.EFAULT:
                        raise _send_shrunk(fd, end, offset + sent) from exc
                    raise
                sent += n
        finally:
            view.release()
            mapped.close()
    return sent


def _steps(sock: socket.socket, path_or_file: Any, offset: int, count: int | None,
           how: str | None) -> _Steps:
    fd, owned = _open_source(path_or_file)
    try:
        total, chosen = _send_plan(sock, fd, offset, count)
        if total == 0:
            return 0
        how = how or chosen
        if how == "splice":
            return (yield from _steps_splice(sock, fd, offset, total))
        if how == "sendfile":
            return (yield from _steps_sendfile(sock, fd, offset, total))
        if how == "mmap":
            return (yield from _steps_mmap(sock, fd, offset, total))
        if how == "readwrite":
            return (yield from _steps_readwrite(sock, fd, offset, total))
        raise ValueError(f"unknown send method {how!r}; choose one of "
                         f"{', '.join(SEND_METHODS)}")
    finally:
        if owned:
            os.close(fd)


def send(sock: socket.socket, path_or_file: Any, offset: int = 0, count: int | None = None,
         *, method: str | None = None) -> int:
    """Send ``count`` bytes (default: to the end) of a file from ``offset`` on ``sock``.

    Uses splice through a pipe for Unix sockets (measured fastest), sendfile for TCP, and
    a mapped window handed to ``socket.send`` where neither exists (``method`` forces one
    of ``splice``, ``sendfile``, ``readwrite`` (a pread loop), ``mmap``).  Partial sends
    are continued; on a non-blocking socket it waits for writability with poll(); a
    socket timeout bounds each wait (TimeoutError).
    Returns the bytes sent.  A file truncated meanwhile raises :class:`BrokenError`.
    """
    timeout = sock.gettimeout()
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    steps = _steps(sock, path_or_file, offset, count, method)
    try:
        while True:
            next(steps)
            ready = poller.poll(None if not timeout else timeout * 1000)
            if not ready:
                raise TimeoutError(f"the socket was not writable for {timeout} s; the "
                                   "peer stopped reading")
    except StopIteration as done:
        return int(done.value)
    finally:
        steps.close()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def asend(loop: asyncio.AbstractEventLoop | None, sock: socket.socket, path_or_file: Any,
                offset: int = 0, count: int | None = None, *, method: str | None = None) -> int:
    """:func:`send` for asyncio: waits for writability on the loop instead of blocking.

    ``loop`` may be None (the running loop).  The socket is switched to non-blocking mode,
    as asyncio requires.
    """
    import asyncio  # only the async path pays for importing asyncio

    loop = loop or asyncio.get_running_loop()
    sock.setblocking(False)
    steps = _steps(sock, path_or_file, offset, count, method)
    fd = sock.fileno()
    try:
        while True:
            next(steps)
            ready: asyncio.Future[None] = loop.create_future()
            # the callback can run again before we resume: only the first call counts
            loop.add_writer(fd, _resolve, ready)
            try:
                await ready
            finally:
                loop.remove_writer(fd)
    except StopIteration as done:
        return int(done.value)
    finally:
        steps.close()
