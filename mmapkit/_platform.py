"""The operating-system seam: everything that differs between kernels lives here.

Design rules:

- Only this module calls into libc through ctypes or names OS constants; the rest of
  mmapkit asks it for capabilities (``HAVE_FUTEX``...) and calls plain functions.
- Linux is the first-class target.  macOS gets what exists there (flock, mmap, msync,
  madvise, mincore); futex is Linux only, callers fall back to a FIFO doorbell.
- Windows is refused at import with a clear message: the design needs fork-inherited
  MAP_SHARED memory, flock and POSIX signals.
- No mutable module state: the libc handle and configured foreign functions are built
  once by cached functions, which is a pure function of the running process.
- ctypes is imported by the functions that call into libc, not by this module: importing
  mmapkit (or opening a KV) should not pay for it until a futex, msync, mincore or a
  buffer address is needed (start-up time, issue 16).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import mmap
import os
import struct
import sys

from ._fileio import DISK_FULL_ERRNOS, raise_if_disk_full, write_all
from .errors import UnsupportedPlatformError

# ``typing`` is for type checkers only (importing it costs milliseconds); type
# checkers take any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import ctypes
    from collections.abc import Callable, Generator
    from typing import Any

if sys.platform == "win32":  # pragma: no cover - refused by design
    raise UnsupportedPlatformError(
        "mmapkit needs POSIX (fork-inherited shared mappings, flock, signals); "
        "Windows is not supported. Use WSL2 or a Linux/macOS machine."
    )

__all__ = [
    "ADVICE",
    "FUTEX_WAKE_ALL",
    "HAVE_FUTEX",
    "HAVE_OFD_LOCKS",
    "HAVE_POPULATE",
    "IS_LINUX",
    "IS_TSO",
    "MADV_POPULATE_READ",
    "MADV_POPULATE_WRITE",
    "PAGE_SIZE",
    "align_down",
    "align_up",
    "buffer_address",
    "ensure_allocated",
    "fadvise_dontneed",
    "futex_waiter",
    "futex_waker",
    "mincore",
    "msync",
    "populate_write",
    "range_held",
    "range_lock",
    "range_unlock",
    "reopen_fd",
]

IS_LINUX = sys.platform.startswith("linux")
# platform.machine() is os.uname().machine; the platform module costs milliseconds to import.
_MACHINE = os.uname().machine
PAGE_SIZE: int = mmap.PAGESIZE

# madvise names accepted by Region.advise().  "populate" prefaults the range (Linux 5.14+
# MADV_POPULATE_READ/WRITE); where the kernel lacks it we touch the pages instead.
ADVICE: dict[str, int] = {
    name: getattr(mmap, const)
    for name, const in (
        ("normal", "MADV_NORMAL"),
        ("sequential", "MADV_SEQUENTIAL"),
        ("random", "MADV_RANDOM"),
        ("willneed", "MADV_WILLNEED"),
        ("dontneed", "MADV_DONTNEED"),
        ("hugepage", "MADV_HUGEPAGE"),
    )
    if hasattr(mmap, const)
}
MADV_POPULATE_READ = 22
MADV_POPULATE_WRITE = 23
HAVE_POPULATE = IS_LINUX

_FUTEX_SYSCALL = {"x86_64": 202, "aarch64": 98, "arm64": 98, "riscv64": 98, "ppc64le": 221,
                  "s390x": 238, "i686": 240, "armv7l": 240}
HAVE_FUTEX = IS_LINUX and _MACHINE in _FUTEX_SYSCALL
_FUTEX_WAIT = 0  # no FUTEX_PRIVATE_FLAG: the word is shared between processes
_FUTEX_WAKE = 1
FUTEX_WAKE_ALL = 0x7FFFFFFF  # a wake count meaning every sleeper (INT_MAX)
# CPUs whose plain aligned stores are seen by other cores in program order (TSO): there a
# store of a 64-bit position after the stores of the bytes it covers publishes them.
IS_TSO = _MACHINE.lower() in ("x86_64", "amd64", "i386", "i686")
# Open-file-description byte-range locks (Linux 3.15+): owned by one open() like flock,
# so two handles in one process do not share them and close() of an unrelated descriptor
# does not drop them (the trap of classic POSIX record locks).
HAVE_OFD_LOCKS = IS_LINUX and hasattr(fcntl, "F_OFD_SETLK")
_MS_ASYNC = 1
_MS_SYNC = 4 if IS_LINUX else 16


def align_down(n: int, alignment: int = PAGE_SIZE) -> int:
    return n - (n % alignment)


def align_up(n: int, alignment: int = PAGE_SIZE) -> int:
    return -(-n // alignment) * alignment


@functools.cache
def _structs() -> tuple[Any, Any]:
    """(timespec, Py_buffer) as ctypes structures, defined on first use."""
    import ctypes

    class _Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    class _PyBuffer(ctypes.Structure):
        _fields_ = [
            ("buf", ctypes.c_void_p),
            ("obj", ctypes.c_void_p),
            ("len", ctypes.c_ssize_t),
            ("itemsize", ctypes.c_ssize_t),
            ("readonly", ctypes.c_int),
            ("ndim", ctypes.c_int),
            ("format", ctypes.c_char_p),
            ("shape", ctypes.c_void_p),
            ("strides", ctypes.c_void_p),
            ("suboffsets", ctypes.c_void_p),
            ("internal", ctypes.c_void_p),
        ]

    return _Timespec, _PyBuffer


@functools.cache
def _libc() -> ctypes.CDLL:
    import ctypes

    # dlopen(NULL): the running interpreter's own symbols, libc among them.  Cheaper than
    # ctypes.util.find_library, which starts subprocesses to look for it.
    return ctypes.CDLL(None, use_errno=True)


@functools.cache
def _libc_fn(name: str, argtypes: tuple[Any, ...], restype: Any = None) -> Any:
    """A libc function with its signature set once (cached per process); ``restype``
    None means C int."""
    import ctypes

    if restype is None:
        restype = ctypes.c_int
    fn = getattr(_libc(), name)
    fn.argtypes = list(argtypes)
    fn.restype = restype
    return fn


@functools.cache
def _buffer_api() -> tuple[Callable[..., int], Callable[..., None]]:
    import ctypes

    _PyBuffer = _structs()[1]
    # Our own handle on the interpreter's symbols, not ctypes.pythonapi: its function
    # objects are process-wide, and another library (or a second copy of this one)
    # setting their argtypes differently would break our calls (seen: ArgumentError in
    # the lock-releaser threads).
    api = ctypes.PyDLL(None)
    get = api.PyObject_GetBuffer
    get.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
    get.restype = ctypes.c_int
    release = api.PyBuffer_Release
    release.argtypes = [ctypes.POINTER(_PyBuffer)]
    release.restype = None
    return get, release


def buffer_address(obj: Any) -> int:
    """Address of the first byte of a buffer (mmap, memoryview, bytearray), read-only or not.

    The buffer is released again before returning, so this leaves no export behind that
    would stop an mmap from closing.  The caller keeps ``obj`` alive while it uses the address.
    """
    import ctypes

    get, release = _buffer_api()
    view = _structs()[1]()
    get(obj, ctypes.byref(view), 0)
    try:
        return int(view.buf or 0)
    finally:
        release(ctypes.byref(view))


def _raise_errno(what: str) -> None:
    import ctypes

    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def mincore(address: int, length: int) -> bytes:
    """One byte per page of ``[address, address+length)``: bit 0 set when resident."""
    import ctypes

    start = align_down(address)
    pages = (align_up(address + length) - start) // PAGE_SIZE
    vec = (ctypes.c_ubyte * max(pages, 1))()
    fn = _libc_fn("mincore", (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p))
    if fn(ctypes.c_void_p(start), ctypes.c_size_t(pages * PAGE_SIZE), vec) != 0:
        _raise_errno("mincore")
    return bytes(b & 1 for b in vec[:pages])


def msync(address: int, length: int, *, wait: bool) -> None:
    """msync(MS_SYNC) when ``wait`` else MS_ASYNC; the range is widened to whole pages."""
    import ctypes

    start = align_down(address)
    fn = _libc_fn("msync", (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int))
    size = align_up(address + length) - start
    if fn(ctypes.c_void_p(start), ctypes.c_size_t(size), _MS_SYNC if wait else _MS_ASYNC) != 0:
        _raise_errno("msync")


def populate_write(address: int, length: int) -> bool:
    """Prefault ``[address, address+length)`` of a writable shared mapping for writing
    (madvise MADV_POPULATE_WRITE, Linux 5.14+): the page faults a writer's first stores
    would take, taken now, without changing a byte.  The GIL is released during the call
    (a background thread populates while the writer runs).  False where the kernel lacks
    it or the range cannot be populated (unmapped, past the end of the file: EFAULT, not
    SIGBUS); the caller then simply lets the stores fault."""
    if not HAVE_POPULATE or length <= 0:
        return False
    import ctypes

    start = align_down(address)
    fn = _libc_fn("madvise", (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int))
    return bool(fn(start, align_up(address + length) - start, MADV_POPULATE_WRITE) == 0)


def ensure_allocated(fd: int, size: int) -> None:
    """Make the file at least ``size`` bytes with real blocks behind every byte.

    A mapping of a sparse or truncated-up range raises SIGBUS on first touch when the
    disk is full, which kills the interpreter.  Allocating first turns that into an
    ordinary ENOSPC here, raised as :class:`~mmapkit.errors.DiskFullError`.
    """
    current = os.fstat(fd).st_size
    try:
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
        # No fallocate here (macOS, some file systems): write zeros over the new range.
        if size > current:
            chunk = memoryview(bytes(1 << 20))
            for pos in range(current, size, len(chunk)):
                write_all(fd, chunk[: min(len(chunk), size - pos)], pos)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS and os.fstat(fd).st_size > current:
            os.ftruncate(fd, current)  # give back the partial extension
        raise_if_disk_full(exc, f"no space left to extend the file to {size} bytes; free "
                           "some disk space and retry (nothing already written was lost)")
        raise


def fadvise_dontneed(fd: int) -> None:
    """Ask the kernel to drop the file's clean pages from the page cache."""
    if not hasattr(os, "posix_fadvise"):
        raise UnsupportedPlatformError("posix_fadvise is not available on this system")
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


@functools.cache
def _syscall() -> Any:
    """libc's variadic syscall(); callers wrap every argument in its ctypes type."""
    import ctypes

    return _libc_fn("syscall", (), ctypes.c_long)


_FUTEX_NR = _FUTEX_SYSCALL.get(_MACHINE, -1)


@functools.cache
def _raw_syscall(keep_gil: bool) -> Any:
    """libc's syscall() with no argtypes: callers pass ctypes objects made once, which
    ctypes hands over without conversion (a third of the instructions of a typed call).
    ``keep_gil`` for calls that never block."""
    import ctypes

    lib = ctypes.PyDLL(None) if keep_gil else ctypes.CDLL(None, use_errno=True)
    fn = lib.syscall
    fn.restype = ctypes.c_long
    return fn


def futex_waker(address: int) -> Callable[[int], int]:
    """``wake(count)`` for the word at ``address``, its arguments converted once: the waking
    side of every blocking hand-off calls it, and each instruction saved there is latency
    saved for the sleeper.  FUTEX_WAKE never blocks, so it keeps the GIL."""
    import ctypes

    call = _raw_syscall(True)
    nr, addr, op = ctypes.c_long(_FUTEX_NR), ctypes.c_void_p(address), ctypes.c_int(_FUTEX_WAKE)
    one, every = ctypes.c_int(1), ctypes.c_int(FUTEX_WAKE_ALL)

    def wake(count: int) -> int:
        arg = one if count == 1 else every if count >= FUTEX_WAKE_ALL else ctypes.c_int(count)
        rc: int = call(nr, addr, op, arg)
        # The fast call saves no errno (saving it costs ~60 ns a wake); a failure, which
        # does not happen in practice, is repeated through the call that does, to say why.
        if rc < 0:
            rc = _raw_syscall(False)(nr, addr, op, arg)
            if rc < 0:
                _raise_errno("futex wake")
        return rc

    return wake


def futex_waiter(address: int) -> Callable[[int, float | None], bool]:
    """``wait(expected, timeout)``: sleep while the 32-bit word at ``address`` equals
    ``expected``.  Returns False only when the timeout passed; True when woken, when the
    word already differed, or on a signal (callers re-check the word in a loop anyway).

    The fixed arguments are converted once and the timespec of the last timeout is kept,
    since callers sleep in slices of one length."""
    import ctypes

    _Timespec = _structs()[0]
    call = _raw_syscall(False)
    nr, addr, op = ctypes.c_long(_FUTEX_NR), ctypes.c_void_p(address), ctypes.c_int(_FUTEX_WAIT)
    last: list[Any] = [None, None]  # timeout, pointer to its timespec

    def wait(expected: int, timeout: float | None) -> bool:
        if timeout is None:
            ts = None
        elif timeout == last[0]:
            ts = last[1]
        else:
            t = max(timeout, 0.0)
            ts = ctypes.pointer(_Timespec(int(t), int((t - int(t)) * 1e9)))
            last[0], last[1] = timeout, ts
        if call(nr, addr, op, ctypes.c_uint(expected & 0xFFFFFFFF), ts) == 0:
            return True
        err = ctypes.get_errno()
        if err == errno.ETIMEDOUT:
            return False
        if err in (errno.EAGAIN, errno.EINTR):
            return True
        raise OSError(err, f"futex wait: {os.strerror(err)}")

    return wait


# --- membarrier (Linux 4.16+), used by the Channel's claim leases ---------------------
# The asymmetric barrier: a process that registered (REGISTER_GLOBAL_EXPEDITED) may order
# its store-then-load with no barrier instruction of its own, because a process that calls
# GLOBAL_EXPEDITED makes every CPU running a registered process execute a full barrier
# before the call returns (an IPI; a CPU that is not running one has passed a context
# switch, itself a full barrier).  The rare side pays ~1 us, the common side nothing.
# Older kernels answer ENOSYS, seccomp filters may answer EPERM: both mean "not here".

__all__ += ["membarrier_global", "membarrier_ready", "membarrier_register"]

_MEMBARRIER_SYSCALL = {"x86_64": 324, "aarch64": 283, "arm64": 283, "riscv64": 283,
                       "ppc64le": 365, "s390x": 356, "i686": 375}
_MB_QUERY, _MB_GLOBAL_EXPEDITED, _MB_REGISTER_GLOBAL_EXPEDITED = 0, 2, 4


def _membarrier(cmd: int) -> int:
    """membarrier(cmd, 0): its result, or -1 (errno set) where the call is refused."""
    import ctypes

    nr = _MEMBARRIER_SYSCALL.get(_MACHINE, -1)
    if not IS_LINUX or nr < 0:
        return -1
    rc: int = _syscall()(ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.c_uint(0))
    return rc


@functools.cache
def membarrier_ready() -> bool:
    """True where this process can register for, and issue, global expedited barriers."""
    rc = _membarrier(_MB_QUERY)
    want = _MB_GLOBAL_EXPEDITED | _MB_REGISTER_GLOBAL_EXPEDITED
    return rc >= 0 and rc & want == want


def membarrier_register() -> None:
    """Enrol this process: from now on membarrier_global() of any process orders this
    one's memory accesses (idempotent; a fork child enrols again itself)."""
    if _membarrier(_MB_REGISTER_GLOBAL_EXPEDITED) < 0:
        _raise_errno("membarrier(REGISTER_GLOBAL_EXPEDITED)")


def membarrier_global() -> None:
    """A full barrier on every CPU now running an enrolled process, and on ours."""
    if _membarrier(_MB_GLOBAL_EXPEDITED) < 0:
        _raise_errno("membarrier(GLOBAL_EXPEDITED)")


# --- cachestat (Linux 6.5+), used by mmapkit.inspect ------------------------------------
# Page-cache totals of a file range in one syscall: a cheap cross-check of the per-page
# mincore map, and the only way to see dirty / writeback / recently evicted counts.
# Older kernels answer ENOSYS; seccomp filters may answer EPERM: both mean "not here".

__all__ += ["cachestat"]

_CACHESTAT_SYSCALL = {"x86_64": 451, "aarch64": 451, "arm64": 451, "riscv64": 451}


def cachestat(fd: int, offset: int = 0, length: int = 0) -> tuple[int, int, int, int, int] | None:
    """Page-cache counts of ``[offset, offset+length)`` of the open file ``fd`` (length 0:
    to the end): (cached, dirty, writeback, evicted, recently_evicted), in pages.

    ``None`` where the kernel has no cachestat (before 6.5, non-Linux, or filtered).
    """
    nr = _CACHESTAT_SYSCALL.get(_MACHINE) if IS_LINUX else None
    if nr is None:
        return None
    import ctypes

    class _CachestatRange(ctypes.Structure):
        _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]

    class _Cachestat(ctypes.Structure):
        _fields_ = [("nr_cache", ctypes.c_uint64), ("nr_dirty", ctypes.c_uint64),
                    ("nr_writeback", ctypes.c_uint64), ("nr_evicted", ctypes.c_uint64),
                    ("nr_recently_evicted", ctypes.c_uint64)]

    rng = _CachestatRange(offset, length)
    out = _Cachestat()
    rc = _syscall()(ctypes.c_long(nr), ctypes.c_uint(fd), ctypes.byref(rng), ctypes.byref(out),
                    ctypes.c_uint(0))
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
            return None
        raise OSError(err, f"cachestat: {os.strerror(err)}")
    return (int(out.nr_cache), int(out.nr_dirty), int(out.nr_writeback), int(out.nr_evicted),
            int(out.nr_recently_evicted))

# ==============================================================================

# transfer: kernel copy paths (reflink, copy_file_range, sendfile, splice) and sparse
# extents.  Used by mmapkit.transfer.  Each wrapper raises the plain OSError the kernel
# gave, so the caller can decide which errno means "try the next method".
# =====================================================================================

# FICLONE = _IOW(0x94, 9, int); not in the fcntl module before Python 3.12.
FICLONE = 0x40049409
HAVE_REFLINK = IS_LINUX
HAVE_COPY_FILE_RANGE = hasattr(os, "copy_file_range")
HAVE_SENDFILE = hasattr(os, "sendfile")
HAVE_SPLICE = hasattr(os, "splice")
HAVE_SEEK_DATA = hasattr(os, "SEEK_DATA") and hasattr(os, "SEEK_HOLE")
SPLICE_F_MOVE = getattr(os, "SPLICE_F_MOVE", 1)
SPLICE_F_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2)
SPLICE_F_MORE = getattr(os, "SPLICE_F_MORE", 4)


def reflink(src_fd: int, dst_fd: int) -> None:
    """Make ``dst_fd`` share the extents of ``src_fd`` (FICLONE: btrfs, xfs, bcachefs...).

    ext4 and tmpfs answer EOPNOTSUPP / ENOTTY / EINVAL; other kernels ENOSYS.
    """
    if not HAVE_REFLINK:
        raise OSError(errno.ENOSYS, "reflink (FICLONE) is Linux only")
    import fcntl

    fcntl.ioctl(dst_fd, FICLONE, src_fd)


def copy_file_range(src_fd: int, dst_fd: int, count: int, src_offset: int,
                    dst_offset: int) -> int:
    """In-kernel copy of up to ``count`` bytes between explicit offsets; 0 at end of file."""
    if not HAVE_COPY_FILE_RANGE:
        raise OSError(errno.ENOSYS, "copy_file_range is not available on this system")
    return os.copy_file_range(src_fd, dst_fd, count, src_offset, dst_offset)


def sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
    """Kernel copy from a file at ``offset`` to ``out_fd`` at its current position."""
    if not HAVE_SENDFILE:
        raise OSError(errno.ENOSYS, "sendfile is not available on this system")
    return os.sendfile(out_fd, in_fd, offset, count)


def splice(fd_in: int, fd_out: int, count: int, *, offset_in: int | None = None,
           flags: int = 0) -> int:
    """Move up to ``count`` bytes through a pipe end without copying into user space."""
    if not HAVE_SPLICE:
        raise OSError(errno.ENOSYS, "splice is Linux only")
    return os.splice(fd_in, fd_out, count, offset_src=offset_in, flags=flags)


def pipe_with_size(size: int) -> tuple[int, int]:
    """A close-on-exec pipe whose buffer is raised towards ``size`` (best effort).

    Returns (read_fd, write_fd); the kernel may give less than asked (pipe-max-size).
    """
    r, w = os.pipe()
    if IS_LINUX:
        import fcntl

        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
        except OSError:
            pass  # unprivileged and above /proc/sys/fs/pipe-max-size: keep the default
    return r, w


def pipe_size(fd: int) -> int:
    """Capacity of a pipe in bytes (64 KiB where it cannot be asked)."""
    if IS_LINUX:
        import fcntl

        return int(fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ))
    return 65536


class SplicePipe:
    """A pipe to splice through (Linux): bytes go fd -> pipe -> fd without a copy into
    user space.  The one splice loop: ``transfer.send`` (file -> socket), the stream
    receiver (socket -> file) and the transfer benchmark's drain use it.

    ``moved`` counts every byte that reached an output, over all ``steps`` calls, so a
    caller that catches a kernel error knows whether anything was delivered (nothing
    moved: it may still try another method).  Close it (or use ``with``).
    """

    def __init__(self, size: int) -> None:
        self.r, self.w = pipe_with_size(size)
        self.room = pipe_size(self.w)
        self.moved = 0

    def steps(self, fd_in: int, fd_out: int, count: int, *, offset_in: int | None = None,
              flags_out: int = SPLICE_F_MOVE) -> Generator[None, None, int]:
        """Move up to ``count`` bytes from ``fd_in`` (at ``offset_in`` on, else from its
        position) to ``fd_out``.  Yields when ``fd_out`` would block (a non-blocking
        socket: wait until it is writable, then resume); returns the bytes moved, fewer
        than ``count`` only when ``fd_in`` ended.  A kernel error propagates as is."""
        moved = 0
        while moved < count:
            filled = splice(fd_in, self.w, min(self.room, count - moved),
                            offset_in=None if offset_in is None else offset_in + moved,
                            flags=SPLICE_F_MOVE)
            if filled == 0:
                break
            while filled:
                try:
                    n = splice(self.r, fd_out, filled, flags=flags_out)
                except BlockingIOError:
                    yield
                    continue
                filled -= n
                moved += n
                self.moved += n
        return moved

    def run(self, fd_in: int, fd_out: int, count: int) -> int:
        """:meth:`steps` to an output that blocks (a file, /dev/null): all in one call."""
        steps = self.steps(fd_in, fd_out, count)
        try:
            next(steps)
        except StopIteration as done:
            return int(done.value)
        steps.close()
        raise BlockingIOError(errno.EAGAIN, "the output of a blocking splice would block")

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)

    def __enter__(self) -> SplicePipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The ``(start, end)`` ranges of ``fd`` that hold data, below ``size``.

    Holes (never-written ranges of a sparse file) are left out.  Where the file system
    cannot say (no SEEK_DATA, or EINVAL), the whole file is one extent; a file system that
    does not track holes reports one extent too, which is correct, only not sparse.
    """
    if size <= 0:
        return []
    if not HAVE_SEEK_DATA:
        return [(0, size)]
    out: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, end))
            pos = end
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return [(0, size)]
        raise
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    return out

__all__ += [
    "HAVE_COPY_FILE_RANGE", "HAVE_REFLINK", "HAVE_SEEK_DATA", "HAVE_SENDFILE", "HAVE_SPLICE",
    "SPLICE_F_MORE", "SPLICE_F_MOVE", "SPLICE_F_NONBLOCK", "SplicePipe", "copy_file_range",
    "data_extents",
    "pipe_size", "pipe_with_size", "reflink", "sendfile", "splice",
]

# struct flock as Linux (64-bit off_t) lays it out: type, whence, start, len, pid.
_FLOCK = "@hhqqi4x"


def _flock_struct(kind: int, start: int, length: int) -> bytes:
    return struct.pack(_FLOCK, kind, os.SEEK_SET, start, length, 0)


def range_lock(fd: int, start: int, length: int = 1, *, exclusive: bool = True,
               wait: bool = True) -> bool:
    """Lock bytes ``[start, start+length)`` of ``fd``'s file (they need not exist).

    OFD locks where the kernel has them, classic POSIX record locks elsewhere (which are
    per process: callers must not open the same file twice in one process there).  The
    kernel drops the lock when the last descriptor of the open file goes, even on SIGKILL.
    Returns False when ``wait`` is False and another holder has a conflicting lock.
    """
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    if HAVE_OFD_LOCKS:
        cmd = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
        try:
            fcntl.fcntl(fd, cmd, _flock_struct(kind, start, length))
        except (BlockingIOError, PermissionError):
            return False
        return True
    op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
    try:
        fcntl.lockf(fd, op, length, start, os.SEEK_SET)
    except (BlockingIOError, PermissionError):
        return False
    return True


def range_unlock(fd: int, start: int, length: int = 1) -> None:
    """Release what :func:`range_lock` took."""
    if HAVE_OFD_LOCKS:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock_struct(fcntl.F_UNLCK, start, length))
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, length, start, os.SEEK_SET)


def range_held(fd: int, start: int, length: int = 1) -> bool:
    """True when another open file (another process, or another open() of ours) holds a
    lock on any of the bytes.  Locks taken through ``fd`` itself do not count."""
    if HAVE_OFD_LOCKS:
        out = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock_struct(fcntl.F_WRLCK, start, length))
        return bool(struct.unpack(_FLOCK, out)[0] != fcntl.F_UNLCK)
    if not range_lock(fd, start, length, exclusive=True, wait=False):
        return True
    range_unlock(fd, start, length)
    return False


def reopen_fd(fd: int) -> int:
    """A new open file description of the file behind ``fd`` (even if it was unlinked).

    A fork child needs one: an inherited descriptor shares its parent's OFD locks.
    Returns a new descriptor; the caller closes the old one.
    """
    flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
    for proc in (f"/proc/self/fd/{fd}", f"/dev/fd/{fd}"):
        try:
            return os.open(proc, flags)
        except OSError:
            continue
    raise UnsupportedPlatformError(
        "cannot reopen an unlinked file here (no /proc/self/fd); use a Channel with a path")


# --- processes -------------------------------------------------------------------------

__all__ += ["boot_id", "pid_alive"]


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (a zombie counts as alive; another
    user's process too: we may not signal it, but it is there)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def boot_id() -> bytes:
    """This boot's identity, 16 bytes (Linux's random boot id); 16 zero bytes where the
    system does not say.  A pid or an unsynced byte is only meaningful within one boot:
    the journal's power-loss check and the mirror's owner token compare it."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            raw = bytes.fromhex(f.read().strip().decode("ascii").replace("-", ""))
    except (OSError, ValueError, UnicodeDecodeError):
        return bytes(16)
    return raw[:16] if len(raw) >= 16 else bytes(16)
