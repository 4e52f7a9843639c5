"""KV: a crash-safe, multi-process key-value store over one mapped, append-only file.

Design rules:

- The file (format in codec.py and docs/formats.md) is a header and an append-only run of
  checksummed records.  A write appends one record into the mapping and then stores the
  new end in the header's *commit word* (one aligned 8-byte store).  A process crash at any
  instant leaves either the old end (the record is ignored) or the new one (it is whole):
  the page cache holds every store, so nothing that returned is lost to ``kill -9``.
- Bytes below the commit word are never rewritten.  Growth extends the file (allocated
  first, so a full disk is DiskFullError, never SIGBUS).  Compaction writes the live data
  to a new file, fsyncs it, marks the old file *superseded* (bit 63 of its commit word)
  and renames the new file over the path.  A crash before the rename leaves the old file
  whole (the mark is cleared by the next writer that finds the path still names it).
- In memory: key -> value for immutable values; containers stay encoded (``_Packed``) and
  are decoded per read so a caller never mutates the cache; ``_Expiring`` wraps ttl values.
- Modes, enforced with a flock on ``<path>.lock``: single-process holds it exclusive,
  multiprocess and readonly hold it shared; a mix is refused with ModeConflictError.
- Change notification: the low 32 bits of the commit word change on every commit; waiters
  sleep on them with a futex (Waiter) and set the waiters word so writers know to wake.

Multiprocess protocol.  Shared state of one store file F: the header's fixed part (written
before F is linked to the path, never again), the *commit word* W (bit 63: superseded;
the rest: end of committed records), the records below W's end (never rewritten), the
bytes from W's end on, F's size, the waiters word (set by a process before it sleeps in
changed(), cleared by the writer that wakes it) and the lock words (wanted, hand-overs,
waiter ready: they only arrange turns and wake-ups, see _wait_for_lock's table L1-L4; the
flock stays the lock, so a process that ignores them loses nothing).  The rules that make
every row below safe:

- Only the holder of F's writer lock (an exclusive flock on F itself) writes to F: records
  past W's end, W, the size (waiters and lock words apart: wake-up hints only).  W's end
  only moves forward; F only grows, and it grows *before* W points past the old size.
  So a lock-free reader that reads W once may read every byte below W's end, and a
  committed end past its mapping means "remap": growth.
- The path is moved from F only by F's lock holder (compaction: mark W, rename), and a
  new file only by link() (never replacing one).  Superseded F stays whole: readers on
  it keep a consistent, older view until they follow the path.
- Damage is concluded only by the lock holder, on a fresh mapping, after reading again;
  it is reported, F is copied aside (``.damaged``), and the salvage is compacted into a
  new file.  Readers never write; nobody winds W back.

    ===  ==============================  ====  =========================================
    #    step (process P)                lock  what another process may do or see
    ===  ==============================  ====  =========================================
    O1   open(path) -> F; fstat; mmap     -    writers append and grow F: P's mapping
                                               may end before W's end (O2 remaps)
    O2   read W once; while W's end is    -    records land past W's end: P ignores
         past the mapping: remap               them (O2 reads nothing past W's end)
    O3   verify and replay [start, end)   -    a compactor marks F and renames: F is
                                               whole; P's next read follows (F1)
    O4   suspect damage (a record fails,  F    waits for the writer in progress; P re-
         end past the file): lock, remap,      reads; still bad: report, copy aside,
         read again                            compact (others follow the rename)
    R1   get: W == seen? serve from the   -    nothing (one load of W, no syscall)
         index
    R2   W moved: remap if needed, read   -    a torn record below W's end is never
         [pos, end), replay                    seen (x86 orders stores; elsewhere P
                                               looks again, then goes to O4)
    F1   W marked and path -> F2: open    -    F2 is whole (fsynced before rename);
         F2 as O1-O4, then drop F; on          on failure P stays on F (usable) and
         failure keep F, raise                 the error says why
    F2   W marked, path still F: serve F, -    rename pending (compactor holds F's
         look at the path on every read        lock) or compactor died (next writer
                                               clears the mark under the lock)
    W1   write: flock F (taken: L1-L4);    F    P waits while another writes; a
         W marked and path elsewhere:          compactor's mark means move on
         unlock, F1, W1
    W2   W marked, path still F: clear    F    (compactor died before its rename)
         the mark; catch up (R2)
    W3   record fits: write it past W's   F    readers see old W (ignore the bytes) or
         end, then store W (8 bytes)           new W (the whole record)
    W4   does not fit: grow F (allocate,  F    readers see a larger F; W still points
         remap), then W3                       inside the old size until W3
    C1   compact: write F2 = path.        F    F unchanged
         compact~, fsync, flock F2
    C2   set F's mark in W                F    readers: F2 (serve F, look at path)
    C3   rename F2 over the path          F    readers follow to F2 (F1); writers
                                               waiting on F's lock get it after C4
    C4   unlock F, go on in F2            F2   writers on F: W1 sends them to F2
    K    kill -9 at any step              -    the kernel drops the flocks; a mark
                                               left by C2 is cleared at W2; a torn
                                               record past W's end is overwritten
    ===  ==============================  ====  =========================================

Process-local states of a writer in multiprocess mode:

    ===========  =========================  ==========================================
    state        event                      action
    ===========  =========================  ==========================================
    idle         write / lock() / batch()   W1, W2 (a fork child first takes its own
                                            open file descriptions, so its flocks are
                                            not its parent's)
    locked       nested write               depth += 1 (no syscall)
    locked       record does not fit        W4, or compact (C1-C4)
    locked       last exit                  unlock
    ===========  =========================  ==========================================

Test pause points (``mmapkit._testhooks``): kv.attach.mapped (between O1 and O2),
kv.compact.written (C1 done), kv.compact.marked (C2 done), kv.compact.renamed (C3 done).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, NamedTuple
from zlib import crc32

from .. import _platform
from .._testhooks import PAUSES, pause
from ..errors import (
    ClosedError,
    CorruptFileError,
    DecryptionError,
    DiskFullError,
    ExportedViewsError,
    FormatVersionError,
    LockTimeout,
    ModeConflictError,
    ReadOnlyError,
)
from ..lock import FileLock
from ..region import Region
from ..wait import Waiter
from . import codec
from ._crypto import OVERHEAD, Cipher
from .codec import (
    DATA_START,
    END_MASK,
    FLAG_ENCRYPTED,
    HEADER_SIZE,
    KEY_MAX,
    KIND_BATCH,
    KIND_CLEAR,
    KIND_DEL,
    KIND_SET,
    KIND_SET_TTL,
    OFF_COMMIT,
    OFF_COMPACTIONS,
    OFF_CREATED,
    OFF_LOCK_READY,
    OFF_LOCK_SEQ,
    OFF_LOCK_WANT,
    OFF_WAITERS,
    REC_FLAG_ENCRYPTED,
    SUPERSEDED,
    Record,
    Serializer,
)

__all__ = ["KV", "CheckReport", "KVStatistics"]

if TYPE_CHECKING:
    from ._reports import CheckReport, KVStatistics


def __getattr__(name: str) -> Any:
    # The report types live in _reports (a dataclasses import), loaded on first use.
    if name in ("CheckReport", "KVStatistics"):
        from . import _reports

        return getattr(_reports, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

DEFAULT_CAPACITY = 4 * _platform.PAGE_SIZE
_MISSING: Any = object()
_PLAIN = frozenset((int, str, bytes, float, bool, type(None)))
_F64 = struct.Struct("<d")
_U16 = struct.Struct("<H")
_KEY_LEN = tuple(_U16.pack(n) for n in range(KEY_MAX + 1))  # a key's length field, by length
_PADS = tuple(b"\0" * n for n in range(8))
_PACKED_BODY_MAX = 256  # bodies up to this long are written with one cached Struct each
_Keys = set[str]
_REC_PACK = struct.Struct("<HBBII").pack_into
_REC_UNPACK = struct.Struct("<HBBII").unpack_from
_REC = struct.Struct("<HBBII")
_TI, _TL, _TF = struct.Struct("<Bq"), struct.Struct("<BI"), struct.Struct("<Bd")
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
# The tag and length of short bytes and str values, by length: a tuple index is a third of
# a Struct.pack on the write path (longer values are packed as they come).
_BYTES_HEAD = tuple(_TL.pack(7, n) for n in range(_PACKED_BODY_MAX))
_STR_HEAD = tuple(_TL.pack(6, n) for n in range(_PACKED_BODY_MAX))
# The hot paths spell the record format inline (magic 0x4B56, the crc seed multiplier
# 0x9E3779B1, padded size (19 + n) & ~7, kind 1 = set, value tags 1/2 bool, 3 int, 5 float,
# 6 str, 7 bytes): tie each literal to the codec, which owns the format.
# (tests/test_kv_fastpath.py checks the bytes they write against the codec's.)
assert codec.REC_MAGIC == 0x4B56 and KIND_SET == 1 and codec.REC_HEADER == 12
assert all(codec.record_size(n) == (19 + n) & ~7 for n in range(64))
assert codec._seed(8, 1, 0, 5) == ((8 * 0x9E3779B1) ^ (5 << 16) ^ 1) & 0xFFFFFFFF
assert (codec.T_FALSE, codec.T_TRUE, codec.T_INT, codec.T_FLOAT, codec.T_STR,
        codec.T_BYTES) == (1, 2, 3, 5, 6, 7)
assert codec.encode_value(-5) == _TI.pack(3, -5) and codec.encode_value(0.5) == _TF.pack(5, 0.5)
assert codec.encode_value(b"ab") == _BYTES_HEAD[2] + b"ab"
assert codec.encode_value("") == _STR_HEAD[0] and codec.encode_key("k") == _KEY_LEN[1] + b"k"

_WAIT_SLICE = 0.05
# A file that fills within this long of being made (new, or by a compaction) doubles
# instead of compacting, up to _CHURN_MAX: a compaction fsyncs a new file (milliseconds),
# so a store overwritten at full speed compacts about 4 times a second, not once per
# file-full (every ~600 writes of a one-key store).
_CHURN_NS = 250_000_000
_CHURN_MAX = 4 << 20
_U64 = struct.Struct("<Q")

_LOCK_SLICE = 0.01  # a lock waiter looks again at least this often (a killed holder wakes
# nobody; the kernel only drops its flock)
_LOCK_EX_NB = fcntl.LOCK_EX | fcntl.LOCK_NB
_LOCK_UN = fcntl.LOCK_UN
_flock = fcntl.flock
_LOCK_SPINS = 20
# _waitw[1], [2], [3]
assert OFF_LOCK_WANT == OFF_WAITERS + 4 and OFF_LOCK_SEQ == OFF_WAITERS + 8
assert OFF_LOCK_READY == OFF_WAITERS + 12
_QUANTUM = 0.002  # a writer keeps taking the lock this long while others wait, then hands
# it over: long runs by one process, not a hand-over (and a replay) per write
_READY_SPIN = 0.002  # a woken waiter tries this long for the holder to let go
# _seen while our file is marked superseded but the path still names it: never equal to a
# commit word, so every read looks at the path again until the mark settles.
_UNSETTLED = -1
# What attaching to a file sets: _reopen() keeps the old values until the new file loads.
_ATTACHED = ("_fd", "_ident", "_region", "_view", "_size", "_commit", "_waitw", "_waiter",
             "_lock_waiter", "_index", "_nops", "_seq_base", "_pos", "_seen")
_MODE_GRACE = 0.25  # changed() re-checks at least this often (a lost wake costs latency only)


class _Packed:
    """An encoded container (or serializer) value: decoded on every read."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _Expiring:
    __slots__ = ("expiry", "value")

    def __init__(self, value: Any, expiry: float) -> None:
        self.value = value
        self.expiry = expiry


_SPECIAL = (_Packed, _Expiring)  # index values that reads must unwrap


class _Closed(dict[str, Any]):
    """Stands in for the index after close(): every access raises ClosedError."""

    def _closed(self, *a: Any) -> Any:
        raise ClosedError("the KV is closed; open it again with mmapkit.KV(path)")

    __getitem__ = __contains__ = __iter__ = __len__ = _closed
    get = items = keys = values = _closed


class _Analysis(NamedTuple):
    header: codec.Header
    records: tuple[Record, ...]
    pos: int  # where appending continues
    damaged: tuple[tuple[int, int], ...]  # committed byte ranges that did not verify
    problems: tuple[str, ...]
    dirty_tail: bool  # non-zero bytes after pos (a torn, unacknowledged write)


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}" if _platform.IS_LINUX else f"/dev/fd/{fd}"


def _analyse(buf: memoryview, hdr: codec.Header, *, committed_only: bool = False) -> _Analysis:
    """Which records of a mapped file are valid and where appending continues (pure).

    ``committed_only``: stop at the commit word's end (a reader without the writer lock:
    the bytes past it are the lock holder's and may be mid-write).
    """
    size = buf.nbytes
    end = hdr.end
    problems: list[str] = []
    damaged: list[tuple[int, int]] = []
    if not hdr.crc_ok:
        problems.append("the header's fixed part fails its checksum")
    if end >= DATA_START and end % 8 == 0 and end <= size:
        s1 = codec.scan(buf, DATA_START, end)
        damaged += s1.damaged
        if s1.tail:
            damaged.append((s1.next, end))
        if committed_only:
            return _Analysis(hdr, s1.records, end, tuple(damaged), tuple(problems), False)
        s2 = codec.scan(buf, end, size, resync=False)
        records = s1.records + s2.records
        pos = s2.next
    elif end >= DATA_START and end % 8 == 0:
        s1 = codec.scan(buf, DATA_START, size)
        damaged += s1.damaged
        damaged.append((s1.next, end))
        problems.append(f"the file was cut: it has {size} bytes but {end} were committed")
        records, pos = s1.records, s1.next
    else:
        problems.append(f"the header's end word ({end}) is damaged; scanned the whole file")
        s1 = codec.scan(buf, DATA_START, size)
        damaged += s1.damaged
        records, pos = s1.records, s1.next
    dirty = pos < size and any(buf[pos : min(size, pos + 16)])
    if damaged:
        lost = sum(b - a for a, b in damaged)
        problems.append(f"{lost} committed bytes in {len(damaged)} range(s) do not verify: "
                        + ", ".join(f"[{a}, {b})" for a, b in damaged[:8]))
    return _Analysis(hdr, records, pos, tuple(damaged), tuple(problems), dirty)


class KV(MutableMapping[str, Any]):
    """A persistent ``dict`` of str keys backed by one memory-mapped file.

    ``multiprocess=True`` lets several processes read and write the file at once (all of
    them must open it so).  ``key=`` (16/24/32 bytes) encrypts every record with AES-GCM.
    ``capacity`` is the initial (and minimum) file size.  ``readonly=True`` follows the
    writers of a multiprocess file without writing.  ``recover=True`` (default) opens a
    damaged file with everything that still verifies and warns (a copy of the damaged file
    is kept as ``<path>.damaged``); ``recover=False`` raises CorruptFileError instead.
    ``serializer=`` (e.g. ``pickle``) stores values of other types; without it only
    None/bool/int/float/str/bytes and lists/tuples/dicts of them are accepted.
    """

    KEY_MAX = KEY_MAX

    # Slots: a set or get touches several attributes, and an instance dict of this size
    # is past CPython's shared-key limit, where each access costs a lookup.
    __slots__ = (
        "__weakref__", "_batch", "_changes", "_cipher", "_commit", "_depth",
        "_direct", "_fast", "_fd", "_forked", "_has_ttl", "_ident", "_index", "_lock_timeout",
        "_lock_waiter", "_min_cap", "_mode", "_mpfast", "_multiprocess", "_nops", "_packers",
        "_path", "_pos", "_readonly", "_recover", "_region", "_run_start", "_seen",
        "_seq_base", "_ser", "_shared", "_size", "_tlock", "_undo", "_undo_all", "_view",
        "_waiter", "_waitw", "_watch_keys",
    )

    def __init__(self, path: str | os.PathLike[str], *, multiprocess: bool = False,
                 key: bytes | None = None, capacity: int | None = None,
                 readonly: bool = False, recover: bool = True,
                 serializer: Serializer | None = None, lock_timeout: float = 30.0) -> None:
        self._path = os.path.abspath(os.fspath(path))
        self._shared = bool(multiprocess or readonly)
        self._multiprocess = bool(multiprocess)
        self._readonly = bool(readonly)
        self._recover = recover
        self._ser = serializer
        self._lock_timeout = lock_timeout
        if capacity is not None and capacity <= HEADER_SIZE:
            raise ValueError(f"capacity must exceed the {HEADER_SIZE}-byte header")
        self._min_cap = _platform.align_up(capacity or DEFAULT_CAPACITY)
        self._cipher = Cipher(key) if key is not None else None
        self._index: dict[str, Any] = {}
        self._tlock = threading.RLock()
        self._depth = 0
        self._batch: list[tuple[int, bytes]] | None = None
        self._undo: dict[str, Any] = {}
        self._undo_all: dict[str, Any] | None = None
        self._watch_keys: frozenset[str] | None = None
        self._changes: _Keys | None = None
        self._forked = False  # set in a fork child (the hook below): cheaper than getpid()
        if multiprocess:
            ref = weakref.ref(self)

            def after_fork() -> None:
                # The child holds none of its parent's writer lock (nor its batch), even
                # when fork() was called inside kv.lock() or kv.batch().
                kv = ref()
                if kv is not None:
                    kv._forked = True
                    kv._depth = 0
                    kv._batch = None
                    kv._refresh_direct()

            os.register_at_fork(after_in_child=after_fork)
        self._fd = -1
        self._mpfast = False
        self._region: Region | None = None
        self._waiter: Waiter | None = None
        self._lock_waiter: Waiter | None = None
        self._run_start = 0.0
        self._pos = DATA_START
        self._seen = 0
        self._fast = self._cipher is None and not self._readonly
        self._refresh_direct()
        self._packers: dict[int, tuple[Callable[..., None], int]] = {}  # see _packer()
        self._nops = 0  # operations in the file: with len(index), estimates the live share
        self._seq_base = 0  # operations written before the current file began
        self._has_ttl = False  # set once any key gets a ttl (len() then checks expiry)
        self._ident = (0, 0)
        self._mode = self._take_mode_lock()
        try:
            self._attach_path(create=not readonly)
        except BaseException:
            self._detach()
            if self._mode is not None:
                self._mode.close()
            raise

    # --- opening ------------------------------------------------------------------------

    def _take_mode_lock(self) -> FileLock | None:
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
            mode.acquire(shared=self._shared, timeout=_MODE_GRACE)
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

    def _attach_path(self, *, create: bool) -> None:
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

    def _open_fd(self, create: bool) -> int:
        flags = (os.O_RDONLY if self._readonly else os.O_RDWR) | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(self._path, flags)
        except FileNotFoundError:
            if not create:
                raise FileNotFoundError(f"no KV file at {self._path}; open it writable once "
                                        "to create it") from None
        self._create_file()
        return os.open(self._path, flags)

    def _create_file(self) -> None:
        import random  # not at module import: reopening a KV needs no salt
        salt = random.getrandbits(64)
        keycheck = self._cipher.keycheck(salt) if self._cipher else b""
        header = codec.build_header(flags=FLAG_ENCRYPTED if self._cipher else 0, salt=salt,
                                    created_ns=time.time_ns(), keycheck=keycheck,
                                    end=DATA_START)
        tmp = f"{self._path}.new-{os.getpid()}-{salt & 0xFFFFFF:06x}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o644)
        try:
            _write_all(fd, header, 0)
            _platform.ensure_allocated(fd, self._min_cap)
            os.fsync(fd)
            try:
                os.link(tmp, self._path)  # atomic, and never replaces a file made meanwhile
            except FileExistsError:
                pass
            _fsync_dir(self._path)
        finally:
            os.close(fd)
            os.unlink(tmp)

    def _init_empty(self, fd: int) -> None:
        """Make an empty file (``touch``ed, nothing to lose) a new store, under the lock."""
        if self._shared:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_size == 0:
                import random  # not at module import: reopening a KV needs no salt
                salt = random.getrandbits(64)
                _write_all(fd, codec.build_header(
                    flags=FLAG_ENCRYPTED if self._cipher else 0, salt=salt,
                    created_ns=time.time_ns(),
                    keycheck=self._cipher.keycheck(salt) if self._cipher else b"",
                    end=DATA_START), 0)
                _platform.ensure_allocated(fd, self._min_cap)
        finally:
            if self._shared:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _attach_fd(self, fd: int) -> bool:
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
        self._region = Region.open(_fd_path(fd), readonly=self._readonly)
        self._bind_views()
        if PAUSES:
            pause("kv.attach.mapped")
        if self._commit[0] & SUPERSEDED and not self._path_is_mine():
            return False  # replaced again already: follow the path once more
        return self._load()

    def _bind_views(self) -> None:
        assert self._region is not None
        view = self._region.view
        self._view = view
        self._size = view.nbytes
        self._commit = view[OFF_COMMIT : OFF_COMMIT + 8].cast("Q")
        # [0] waiters of changed(), [1] lock wanted, [2] lock hand-overs, [3] hand-over
        # pending until (codec.OFF_*)
        self._waitw = view[OFF_WAITERS : OFF_LOCK_READY + 4].cast("I")

    def _rebind_views(self) -> None:
        """Views of the region after it grew.  The old views are never released first:
        another thread may be reading the commit word through them (a get() takes no
        lock), and they keep the old mapping alive until they are dropped here."""
        waiters = self._waiter, self._lock_waiter
        self._waiter = self._lock_waiter = None  # bound to the old mapping's address
        self._bind_views()
        for w in waiters:
            if w is not None:
                w.close()

    def _unbind_views(self) -> None:
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

    def _detach(self) -> None:
        self._unbind_views()
        if self._region is not None:
            self._region.close()
            self._region = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _path_is_mine(self) -> bool:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._ident

    def _load(self, *, held: bool = False) -> bool:
        """Read the mapped file into a fresh index; False if it was replaced meanwhile.

        ``held``: this process holds the writer lock.  Without it (multiprocess and
        read-only handles) the file is read lock-free up to one reading of the commit word
        and nothing is written; what looks damaged is read again under the writer lock on
        a fresh mapping before anything is concluded (see the protocol table).
        """
        if held or not self._shared:
            return self._load_locked()
        found = self._read(committed_only=True)
        if found is not None:
            analysis, index, bad = found
            if not bad and not analysis.problems:
                self._install(analysis, index, seen=analysis.header.commit)
                return True
        self._take_own_lock()
        try:
            return self._load_locked()
        finally:
            self._release_flock()

    def _read(self, *, committed_only: bool
              ) -> tuple[_Analysis, dict[str, Any], list[tuple[int, int]]] | None:
        """Scan and replay the mapped file: (analysis, index, ranges that do not verify).

        ``committed_only`` (no lock held) reads nothing at or past the commit word's end
        (those bytes belong to the lock holder and may be mid-write); a committed end past
        the mapping is growth: map the file's current size and look again.  None: the
        header's end is still beyond the file (suspect; the caller re-reads under lock).
        """
        hdr = codec.parse_header(self._view, path=self._path)
        for _ in range(3):
            if hdr.end <= self._size or not committed_only:
                break
            self._remap()  # growth: the writer extended the file before committing past it
            hdr = codec.parse_header(self._view, path=self._path)
        if committed_only and hdr.end > self._size:
            return None
        self._check_key(hdr)
        view = self._view
        self._nops = 0
        self._seq_base = hdr.seq
        fast = None if hdr.encrypted else self._fast_load(view, hdr)
        if fast is not None:
            # Clean committed region: only what lies beyond it is left to look at.
            index, self._nops = fast
            if committed_only:
                analysis = _Analysis(hdr, (), hdr.end, (), (), False)
            else:
                extra = codec.scan(view, hdr.end, view.nbytes, resync=False)
                size = view.nbytes
                dirty = extra.next < size and any(view[extra.next : min(size, extra.next + 16)])
                analysis = _Analysis(hdr, extra.records, extra.next, (), (), dirty)
        else:
            analysis = _analyse(view, hdr, committed_only=committed_only)
            index = {}
        bad: list[tuple[int, int]] = list(analysis.damaged)
        replay, fast_set = self._replay, _fast_set
        plain = 0
        for rec in analysis.records:
            if rec.kind == KIND_SET and not rec.flags:
                item = fast_set(rec.body)
                if item is not None:
                    index[item[0]] = item[1]
                    plain += 1
                    continue
            try:
                replay(rec, index, None)
            except (CorruptFileError, DecryptionError):
                bad.append((rec.offset, rec.offset + rec.size))
        self._nops += plain
        return analysis, index, bad

    def _load_locked(self) -> bool:
        """_load() for the writer-lock holder (or a single-process handle).

        Only here is damage concluded: it is reported, the file copied aside, and (when
        this handle may write) the salvaged data compacted into a new file that replaces
        the damaged one.  Nothing published is ever wound back: the commit word only
        moves forward (over whole records a killed writer left past it).
        """
        if self._shared:
            self._remap()  # the file may have grown since it was mapped
            if self._commit[0] & SUPERSEDED and not self._path_is_mine():
                return False  # replaced between our look and the lock
        found = self._read(committed_only=False)
        assert found is not None
        analysis, index, bad = found
        hdr = analysis.header
        problems = list(analysis.problems)
        if len(bad) > len(analysis.damaged):
            problems.append(f"{len(bad) - len(analysis.damaged)} record(s) verify but do not "
                            "decode or authenticate")
        damaged = bool(bad or problems)
        if damaged:
            self._report_damage(problems, bad, len(analysis.records))
        # An end word past the file (cut, or the word itself damaged) points at bytes
        # nobody can have read: appending continues after what verifies.
        end_ok = DATA_START <= hdr.end <= self._size and hdr.end % 8 == 0
        pos = max(analysis.pos, hdr.end) if end_ok else analysis.pos
        self._install(analysis, index, seen=hdr.commit)
        self._pos = pos
        if self._readonly:
            return True
        if analysis.dirty_tail and pos < self._size:
            self._zero_tail(pos)  # a torn, unacknowledged write: bytes only we may write
        if damaged:
            try:
                self._rewrite(self._image(self._cipher), self._cipher)
                return True  # the salvaged data now lives in a new, clean file
            except DiskFullError:
                pass  # keep working in this file; the damage is reported again next time
            if not hdr.crc_ok:
                fixed = codec.build_header(
                    flags=hdr.flags, salt=hdr.salt, created_ns=hdr.created_ns,
                    keycheck=hdr.keycheck, end=0)
                self._view[:64] = fixed[:64]
        commit = self._commit[0]
        if commit & SUPERSEDED:
            # We hold the lock and the path still names this file: its compactor died
            # between marking it and renaming the successor in.  It is still the store.
            commit &= END_MASK
        if commit != pos:
            commit = pos  # forward only (pos >= the committed end), or a damaged end word
        if self._commit[0] != commit:
            self._commit[0] = commit
        self._seen = commit
        return True

    def _install(self, analysis: _Analysis, index: dict[str, Any], *, seen: int) -> None:
        """Make a loaded index current; ``seen`` is the commit word it reflects."""
        self._pos = analysis.pos
        # A file marked superseded with the path still naming it (a rename pending, or its
        # compactor died): look at the path again on every read until that settles.
        self._seen = _UNSETTLED if seen & SUPERSEDED else seen
        # The index now holds every value: give the scanned pages back (RSS), they stay in
        # the page cache and the file.  Safe for shared file mappings.
        scanned = _platform.align_down(min(analysis.pos, self._size))
        if scanned:
            with contextlib.suppress(OSError, ValueError):
                assert self._region is not None
                self._region.advise("dontneed", 0, scanned)
        old = self._index
        self._index = index
        if self._changes is not None:
            self._note_diff(old, index)

    def _fast_load(self, view: memoryview, hdr: codec.Header) -> tuple[dict[str, Any], int] | None:
        """Index and operation count of a clean, unencrypted committed region, in one pass.

        Opening replays every record, so the common case skips the general scanner and
        decoders; anything unusual (damage, odd values) returns None and the careful path
        (``_analyse`` + ``_replay``) starts over.
        """
        end = hdr.end
        if not hdr.crc_ok or end < DATA_START or end % 8 or end > view.nbytes:
            return None
        index: dict[str, Any] = {}
        nops = self._replay_range(view, DATA_START, end, index)
        return None if nops is None else (index, nops)

    def _replay_range(self, view: memoryview, pos: int, end: int,
                      index: dict[str, Any]) -> int | None:
        """Replay the clean, unencrypted records of ``[pos, end)`` into ``index`` in one
        pass; the operations replayed, or None at anything unusual (damage, odd values):
        the caller then takes the careful path over the same range (replaying a range
        again is harmless: every record sets, deletes or clears)."""
        unpack = _REC_UNPACK
        nops = 0
        from_bytes = int.from_bytes
        try:
            while pos < end:
                magic, kind, flags, n, crc = unpack(view, pos)
                nxt = pos + ((19 + n) & ~7)
                if magic != 0x4B56 or flags or nxt > end:
                    return None
                body = view[pos + 12 : pos + 12 + n].tobytes()
                if crc32(body, (pos * 0x9E3779B1) ^ (n << 16) ^ kind) != crc:  # (seed masked)
                    return None
                # _fast_set() inlined (the same three cases: an int, bytes or str value
                # right after the key); anything else, or what does not decode, is
                # replayed by the general path.
                if kind == KIND_SET and n > 2:
                    v = 2 + (body[0] | body[1] << 8)
                    tag = body[v] if v < n else 0
                    if (tag == 3 and n == v + 9) or ((tag == 7 or tag == 6) and n == v + 5
                                                     + from_bytes(body[v + 1 : v + 5], "little")):
                        try:
                            index[body[2:v].decode("utf-8", "surrogatepass")] = (
                                body[v + 5 :] if tag == 7 else
                                from_bytes(body[v + 1 :], "little", signed=True) if tag == 3
                                else body[v + 5 :].decode("utf-8", "surrogatepass"))
                            nops += 1
                            pos = nxt
                            continue
                        except UnicodeDecodeError:
                            pass
                before = self._nops
                self._replay(Record(pos, kind, flags, body), index, None)
                nops += self._nops - before
                self._nops = before  # (counted in ``nops``, which the caller adds)
                pos = nxt
        except (CorruptFileError, DecryptionError, struct.error):
            return None
        return nops

    def _check_key(self, hdr: codec.Header) -> None:
        if not hdr.crc_ok:
            # The flags may be the damaged bytes: let the key check and the records' own
            # flags decide (an encrypted record read without a key counts as damaged).
            if self._cipher is not None and not self._cipher.verify(hdr.keycheck, hdr.salt):
                raise DecryptionError(f"wrong key for {self._path} (or its header is "
                                      "damaged)", path=self._path)
            return
        if hdr.encrypted and self._cipher is None:
            raise DecryptionError(f"{self._path} is encrypted; open it with key=", path=self._path)
        if not hdr.encrypted and self._cipher is not None:
            raise DecryptionError(f"{self._path} is not encrypted but key= was given; open it "
                                  "without key= and call rekey(key) to encrypt it",
                                  path=self._path)
        if self._cipher is not None and not self._cipher.verify(hdr.keycheck, hdr.salt):
            raise DecryptionError(f"wrong key for {self._path}: the key check does not "
                                  "authenticate", path=self._path)

    def _report_damage(self, problems: list[str], bad: list[tuple[int, int]],
                       salvaged: int) -> None:
        lost = sum(b - a for a, b in bad)
        msg = f"{self._path} is damaged: " + "; ".join(problems)
        if not self._recover:
            raise CorruptFileError(msg + ". Open with recover=True to salvage the rest, or run "
                                   "KV.repair(path)", path=self._path,
                                   offset=bad[0][0] if bad else 0, salvaged=salvaged,
                                   lost=len(bad))
        kept = ""
        if not self._readonly:
            import filecmp
            import shutil

            copy = self._path + ".damaged"
            n = 1
            while os.path.exists(copy):
                if filecmp.cmp(copy, self._path, shallow=False):
                    break  # already kept (another process of a multiprocess store was first)
                copy = f"{self._path}.damaged.{n}"
                n += 1
            else:
                shutil.copyfile(self._path, copy)
            kept = f"; the damaged file was copied to {copy}"
        warnings.warn(f"{msg}. Salvaged {salvaged} record(s), lost {lost} bytes{kept}",
                      RuntimeWarning, stacklevel=4)

    def _zero_tail(self, pos: int) -> None:
        data = bytes(self._view[pos:])
        k = data.find(b"\0" * 64)
        stop = pos + (len(data) if k < 0 else k)
        self._view[pos:stop] = bytes(stop - pos)

    # --- replay -------------------------------------------------------------------------

    def _stored(self, vb: bytes) -> Any:
        tag = vb[0]
        if tag in codec.SCALAR_TAGS:
            return codec.decode_value(vb)
        if tag == codec.T_CUSTOM and self._ser is None:
            return _Packed(vb)  # readable once a serializer is given; not damage
        codec.decode_value(vb, self._ser)  # verify now: damage shows at open, not at get
        return _Packed(vb)

    def _replay(self, rec: Record, index: dict[str, Any], changes: _Keys | None) -> None:
        body = rec.body
        if rec.kind == KIND_SET and not rec.flags and changes is None:
            fast = _fast_set(body)
            if fast is not None:
                index[fast[0]] = fast[1]
                self._nops += 1
                return
        if rec.flags & REC_FLAG_ENCRYPTED:
            if self._cipher is None:
                raise DecryptionError("encrypted record in a file opened without key=")
            body = self._cipher.decrypt(body, rec.offset, rec.kind)
        ops = [(k, key, self._stored(vb) if vb else None, exp)
               for k, key, vb, exp in codec.iter_ops(rec.kind, body)]
        self._nops += len(ops)
        for kind, key, stored, expiry in ops:
            if kind == KIND_SET:
                index[key] = stored
            elif kind == KIND_SET_TTL:
                index[key] = _Expiring(stored, expiry)
                self._has_ttl = True
            elif kind == KIND_DEL:
                index.pop(key, None)
            else:
                if changes is not None:
                    changes.update(index)
                index.clear()
            if changes is not None and kind != KIND_CLEAR:
                changes.add(key)

    def _note_diff(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        assert self._changes is not None
        for k in old.keys() | new.keys():
            a, b = old.get(k, _MISSING), new.get(k, _MISSING)
            if a is b:
                continue
            if a is _MISSING or b is _MISSING or self._plain(a) != self._plain(b):
                self._changes.add(k)

    @staticmethod
    def _plain(v: Any) -> Any:
        if type(v) is _Expiring:
            return (KV._plain(v.value), v.expiry)
        if type(v) is _Packed:
            return v.data
        return (type(v), v)

    # --- following other processes (multiprocess / readonly) ----------------------------

    def _poll(self) -> None:
        """Catch up with records other processes committed (no lock, no syscall if none)."""
        if self._commit[0] != self._seen:
            with self._tlock:
                # Inside lock()/batch() this thread holds the writer lock already.
                self._catch_up(held=self._depth > 0)

    def _catch_up(self, *, held: bool) -> None:
        """Follow the commit word: read appended records, move to a replacement file."""
        w = self._commit[0]
        if w == self._seen:
            return
        if w & SUPERSEDED and not self._path_is_mine():
            self._reopen()  # compacted: the path names the new file (on failure: unchanged)
            return
        # (Marked with the path still ours: a rename pending or a dead compactor.  Either
        # way the file is whole, and _read_appended() keeps us looking at the path.)
        if not self._read_appended(w):
            self._reload(held)  # damage is only concluded under the lock, on a reload

    def _read_appended(self, w: int) -> bool:
        """Replay the records appended up to commit word ``w`` (R2).  False when anything
        is unusual (the end went back or past the file, a record does not verify): the
        caller reloads instead, which re-verifies under the lock."""
        end = w & END_MASK
        if end > self._size:
            self._remap()  # growth: the writer extended the file before committing past it
        if end < self._pos or end > self._size:
            return False  # a commit word never goes back, a file never shrinks: damage?
        if end > self._pos and self._changes is None and self._cipher is None:
            nops = self._replay_range(self._view, self._pos, end, self._index)
            if nops is not None:
                self._nops += nops
                self._pos = end
                self._seen = _UNSETTLED if w & SUPERSEDED else w
                return True
        if end > self._pos:
            found = codec.scan(self._view, self._pos, end)
            for _ in range(3):
                # Where stores are not ordered (ARM64) the commit word can arrive before the
                # record bytes: look again before suspecting damage.
                if not (found.tail or found.damaged):
                    break
                time.sleep(0.001)
                found = codec.scan(self._view, self._pos, end)
            if found.tail or found.damaged:
                return False
            index, changes, replay = self._index, self._changes, self._replay
            for rec in found.records:
                try:
                    replay(rec, index, changes)
                except (CorruptFileError, DecryptionError):
                    return False  # (what replayed is replayed again by the reload)
        self._pos = end
        self._seen = _UNSETTLED if w & SUPERSEDED else w
        return True

    def _reload(self, held: bool) -> None:
        if not self._load(held=held):
            self._reopen()

    def _remap(self) -> None:
        """Map the whole file as it is now (it may have grown; it never shrinks)."""
        assert self._region is not None
        size = os.fstat(self._fd).st_size
        if size <= self._size:
            return
        self._region.grow(size)
        self._rebind_views()

    def _reopen(self) -> None:
        """Move to the file the path names now.  On failure the handle stays as it was
        (on its old mapping, usable) and the error propagates."""
        with self._tlock:
            old = {n: getattr(self, n) for n in _ATTACHED}
            # The old views stay bound (other threads' get() reads the commit word without
            # the lock) until the new file's replace them; with _region None, a failed
            # attach releases only what it bound itself.
            self._fd, self._region, self._waiter, self._lock_waiter = -1, None, None, None
            try:
                self._attach_path(create=False)
            except BaseException:
                for n, v in old.items():
                    setattr(self, n, v)
                raise
            _retire(old)

    def _take_own_lock(self) -> None:
        """_acquire_flock(), first making the lock ours if we are a fork child."""
        if self._forked:
            self._own_after_fork()
        self._acquire_flock()

    def _own_after_fork(self) -> None:
        """A fork child shares the parent's open file descriptions, and so its flocks:
        give this process descriptors (and locks) of its own for the same files."""
        self._forked = False
        self._refresh_direct()
        flags = (os.O_RDONLY if self._readonly else os.O_RDWR) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(_fd_path(self._fd), flags)  # a new open file description, same file
        try:
            os.dup2(fd, self._fd, inheritable=False)
        finally:
            os.close(fd)
        if self._mode is not None:
            mode = FileLock(self._path + ".lock")
            try:
                mode.acquire(shared=True, timeout=self._lock_timeout)
            except BaseException:
                mode.close()
                raise
            self._mode = mode  # (the inherited one is the parent's; we never unlock it)

    def _acquire_flock(self) -> None:
        # A bare flock on our own descriptor: threads are already excluded by _tlock, so
        # FileLock's per-thread bookkeeping would only add cost to every write.
        try:
            _flock(self._fd, _LOCK_EX_NB)
        except BlockingIOError:
            self._wait_for_lock()
        else:
            if self._waitw[3]:
                self._maybe_yield()

    def _maybe_yield(self) -> None:
        """We took the lock while a woken waiter is awake and trying (L3): if our run
        has lasted its quantum, let go and queue behind it (a running writer retakes the
        lock within microseconds, so without this the waiter would never get in)."""
        if self._readonly or time.monotonic() - self._run_start < _QUANTUM:
            return
        _flock(self._fd, _LOCK_UN)
        self._wait_for_lock(spin=False)

    def _wait_for_lock(self, *, spin: bool = True) -> None:
        """Take the writer lock, sleeping until its holder hands it over.

        The flock stays the lock (the kernel drops a killed holder's flock at once); the
        header words only arrange who goes next and carry wake-ups:

        ===  ===========================================  ===============================
        L1   try a few times (a write holds the lock for  nobody is woken for a spinner
             microseconds)
        L2   read the hand-over count, set "wanted",      a holder releasing after our
             try; sleep while the count is unchanged,     try sees "wanted" (both are
             at most _LOCK_SLICE                          system calls: not reordered)
        L3   woken or the slice ended: set "ready" and    the holder, past its quantum,
             try for up to _READY_SPIN                    lets go at its next take
        L4   got it: clear "ready", start our run         (quantum counts from here)
        ===  ===========================================  ===============================

        The holder wakes one sleeper per quantum, not one per release: a woken sleeper
        needs a millisecond or more to run here, and a holder that waited for it would
        leave the lock idle meanwhile; it goes on writing until the sleeper is ready.
        """
        fd = self._fd
        words = self._waitw
        for _ in range(_LOCK_SPINS if spin else 0):
            try:
                _flock(fd, _LOCK_EX_NB)
                self._run_start = time.monotonic()
                return
            except BlockingIOError:
                pass
        deadline = time.monotonic() + self._lock_timeout
        delay = 0.0001
        futex = _platform.HAVE_FUTEX and not self._readonly  # (a read-only map: no want)
        while True:
            seq = words[2]
            if futex:
                words[1] = 1
            try:
                _flock(fd, _LOCK_EX_NB)
                break
            except BlockingIOError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeout(
                    f"could not take the write lock of {self._path} within "
                    f"{self._lock_timeout} s: another process holds it (kv.lock() or a "
                    f"long batch); retry, or find it with `fuser {self._path}`")
            if not futex:  # no futex (or read-only): poll, backing off
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.002)
                continue
            if self._lock_waiter is None:
                assert self._region is not None
                self._lock_waiter = Waiter(self._region, OFF_LOCK_SEQ)
            self._lock_waiter.wait(seq, min(remaining, _LOCK_SLICE))
            words[3] = 1  # L3: awake and trying; the holder lets go at its next take
            until = time.monotonic() + _READY_SPIN
            got = False
            while True:
                try:
                    _flock(fd, _LOCK_EX_NB)
                    got = True
                    break
                except BlockingIOError:
                    if time.monotonic() > until:
                        break
            if got:
                break
        if futex:
            words[3] = 0
        self._run_start = time.monotonic()

    def _release_flock(self) -> None:
        _flock(self._fd, _LOCK_UN)
        if self._waitw[1] and not self._readonly:
            # (A read-only follower that took the lock to re-verify writes nothing: the
            # waiters see the lock free at their next look, within _LOCK_SLICE.)
            self._hand_over()

    def _hand_over(self) -> None:
        """Someone sleeps for the lock we just released: once our run has lasted its
        quantum, wake one sleeper (and go on writing until it is ready: _maybe_yield)."""
        if time.monotonic() - self._run_start < _QUANTUM:
            return
        words = self._waitw
        words[1] = 0
        words[2] = (words[2] + 1) & 0xFFFFFFFF
        if _platform.HAVE_FUTEX:
            if self._lock_waiter is None:
                assert self._region is not None
                self._lock_waiter = Waiter(self._region, OFF_LOCK_SEQ)
            self._lock_waiter.wake(1)

    # --- writer side --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._region is None:
            raise ClosedError("the KV is closed; open it again with mmapkit.KV(path)")

    def _enter_write(self) -> None:
        self._check_open()
        if self._readonly:
            raise ReadOnlyError(f"{self._path} was opened with readonly=True; open it without "
                                "it to write")
        self._depth += 1
        if self._depth > 1 or not self._shared:
            return
        locked = False
        try:
            while True:
                self._take_own_lock()
                locked = True
                w = self._commit[0]
                if w & SUPERSEDED:
                    if not self._path_is_mine():
                        # Compacted by another process: follow the path, lock the new file.
                        locked = False
                        self._release_flock()
                        self._reopen()
                        continue
                    # We hold the lock and the path still names this file: its compactor
                    # died between marking it and renaming the successor in.
                    self._commit[0] = w & END_MASK
                self._catch_up(held=True)
                return
        except BaseException:
            self._depth -= 1
            if locked and self._fd >= 0:
                self._release_flock()
            raise

    def _exit_write(self) -> None:
        depth = self._depth - 1
        if depth < 0:
            return  # a fork child leaving a block its parent entered: nothing of ours
        self._depth = depth
        if depth == 0 and self._shared and self._fd >= 0:
            self._release_flock()

    def _append(self, kind: int, body: bytes, ops: int = 1) -> None:
        """Append one record and commit it (caller holds the write side)."""
        cipher = self._cipher
        need = codec.record_size(len(body) + (OVERHEAD if cipher else 0))
        if self._pos + need > self._size:
            self._make_room(need)
        pos = self._pos
        if cipher is not None:
            rec = codec.encode_record(kind, cipher.encrypt(body, pos, kind), pos,
                                      REC_FLAG_ENCRYPTED)
        else:
            rec = codec.encode_record(kind, body, pos)
        end = pos + len(rec)
        self._view[pos:end] = rec
        self._commit[0] = end  # the commit point: one aligned 8-byte store
        self._pos = self._seen = end
        self._nops += ops
        if self._shared and self._waitw[0]:
            self._waitw[0] = 0
            self._wake()

    def _wake(self) -> None:
        if self._waiter is None:
            assert self._region is not None
            self._waiter = Waiter(self._region, OFF_COMMIT, doorbell=self._path + ".bell"
                                  if not _platform.HAVE_FUTEX else None)
        self._waiter.wake()

    def _make_room(self, need: int) -> None:
        # Compaction re-encodes every live entry, so its cost per overwrite is the live
        # data over the room it frees.  It runs once at most a third of the file is live
        # and leaves twice the live data: the live set can be overwritten twice per
        # compaction, and the file stays within three times its live data.
        used = self._pos - DATA_START
        # The share of live operations estimates the live bytes without encoding them.
        live = used * min(1.0, len(self._index) / max(self._nops, 1))
        size = self._size
        if size < _CHURN_MAX and \
                time.time_ns() - _U64.unpack_from(self._view, OFF_CREATED)[0] < _CHURN_NS:
            least = _platform.align_up(self._pos + need)
            self._grow(max(least, 2 * size), least)
            return
        if used and live * 3 <= used:  # (an empty store just grows)
            image = self._image(self._cipher)
            live = image[1] - DATA_START
            if live * 3 <= used:
                self._rewrite(image, self._cipher, extra=need)
                return
        least = _platform.align_up(self._pos + need)
        # Up to where the next compaction is due (three times the live data), by at most
        # double (fresh data: the file stays within twice it) and at least an eighth (an
        # estimate that runs short cannot make the file creep up page by page).
        self._grow(max(least, _platform.align_up(size + size // 8),
                       min(2 * size, _platform.align_up(DATA_START + int(3 * (live + need))))),
                   least)

    def _grow(self, target: int, least: int) -> None:
        """W4: extend the file to ``target`` (on a nearly full disk: to ``least``, what the
        next record needs) and map it.  Only the lock holder grows the file."""
        assert self._region is not None
        try:
            self._region.grow(target)
        except DiskFullError:
            if target <= least:
                raise
            self._region.grow(least)  # the disk is nearly full: use what is left
        self._rebind_views()

    def _live_entries(self) -> list[tuple[int, bytes]]:
        now = time.time()
        entry = self._entry
        return [entry(key, stored) for key, stored in self._index.items()
                if type(stored) is not _Expiring or stored.expiry > now]

    @staticmethod
    def _entry(key: str, stored: Any) -> tuple[int, bytes]:
        """The (kind, body) of the record that sets ``key`` to ``stored`` (index form)."""
        kb = key.encode("utf-8", "surrogatepass")
        kb = _U16.pack(len(kb)) + kb
        kind = KIND_SET
        if type(stored) is _Expiring:
            kind = KIND_SET_TTL
            kb = _F64.pack(stored.expiry) + kb
            stored = stored.value
        t = type(stored)
        if t is int and _I64_MIN <= stored <= _I64_MAX:
            vb = _TI.pack(3, stored)
        elif t is bytes:
            vb = _TL.pack(7, len(stored)) + stored
        elif t is _Packed:
            vb = stored.data
        else:
            vb = codec.encode_value(stored)
        return kind, kb + vb

    def _image(self, cipher: Cipher | None) -> tuple[list[bytes], int, int]:
        """Records of every live key laid out from DATA_START: (buffers, end, count)."""
        if cipher is not None:
            entries = self._live_entries()
            framed, end = _frame_all(entries, cipher)
            return framed, end, len(entries)
        # Unencrypted: _live_entries() and encode_record() fused, and bytes and int values
        # encoded inline, as this runs over every key at each compaction.  A record is
        # framed by one Struct per body length (header, body and padding in one call).
        now = time.time()
        parts: list[bytes] = []
        append = parts.append
        ti, tl, keylen, bhead, shead = _TI.pack, _TL.pack, _KEY_LEN, _BYTES_HEAD, _STR_HEAD
        short = _PACKED_BODY_MAX
        # body length -> (pack(magic, kind, flags, n, crc, body) giving the padded record,
        # the crc seed's length part)
        framers: dict[int, tuple[Callable[..., bytes], int]] = {}
        entry = self._entry
        pos = DATA_START
        expired = 0
        for key, stored in self._index.items():
            t = type(stored)
            if t is _Expiring and stored.expiry <= now:
                expired += 1
                continue
            kind = KIND_SET
            try:
                kb = key.encode()  # strict UTF-8 equals surrogatepass whenever it succeeds
                if t is bytes:
                    nv = len(stored)
                    body = b"".join((keylen[len(kb)], kb,
                                     bhead[nv] if nv < short else tl(7, nv), stored))
                elif t is str:
                    raw = stored.encode()
                    nv = len(raw)
                    body = b"".join((keylen[len(kb)], kb,
                                     shead[nv] if nv < short else tl(6, nv), raw))
                elif t is int:
                    body = keylen[len(kb)] + kb + ti(3, stored)  # struct.error past 64 bits
                else:
                    kind, body = entry(key, stored)
            except (UnicodeEncodeError, struct.error):
                kind, body = entry(key, stored)
            n = len(body)
            try:
                frame, seed = framers[n]
            except KeyError:
                frame, seed = framers[n] = _framer(n), n << 16
            append(frame(0x4B56, kind, 0, n, crc32(body, (pos * 0x9E3779B1) ^ (seed | kind)),
                         body))
            pos += (19 + n) & -8
        return parts, pos, len(self._index) - expired

    def _rewrite(self, image: tuple[list[bytes], int, int], cipher: Cipher | None, *,
                 extra: int = 0, headroom: int = 2) -> None:
        """Write ``entries`` to a new file and rename it over the path (crash-safe)."""
        import random  # not at module import: reopening a KV needs no salt
        salt = random.getrandbits(64)
        hdr_compactions = struct.unpack_from("<I", self._view, OFF_COMPACTIONS)[0] + 1
        parts, pos, count = image
        header = codec.build_header(
            flags=FLAG_ENCRYPTED if cipher else 0, salt=salt, created_ns=time.time_ns(),
            keycheck=cipher.keycheck(salt) if cipher else b"", end=pos,
            seq=self._seq_base + self._nops - count,
            compactions=hdr_compactions)
        live = pos - DATA_START
        capacity = max(self._min_cap,
                       _platform.align_up(DATA_START + headroom * (live + extra)))
        tmp = self._path + ".compact~"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o600)
        marked = renamed = False
        try:
            os.fchmod(fd, os.fstat(self._fd).st_mode & 0o7777)
            try:
                _write_all(fd, header, 0)
                _write_parts(fd, parts, DATA_START)
            except OSError as exc:
                raise _disk_full(exc, tmp) from exc
            try:
                _platform.ensure_allocated(fd, capacity)
            except DiskFullError:  # tight disk: the data and this record, no headroom
                _platform.ensure_allocated(fd, _platform.align_up(pos + extra))
            os.fsync(fd)
            if self._shared:
                fcntl.flock(fd, fcntl.LOCK_EX)  # nobody writes the new file before we are done
            if PAUSES:
                pause("kv.compact.written")
            self._commit[0] = self._commit[0] | SUPERSEDED
            marked = True
            if PAUSES:
                pause("kv.compact.marked")
            os.rename(tmp, self._path)
            renamed = True
            if PAUSES:
                pause("kv.compact.renamed")
            _fsync_dir(self._path)
        except BaseException:
            if marked and not renamed:
                self._commit[0] = self._commit[0] & END_MASK
            if not renamed:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            else:
                os.close(fd)
            raise
        # Wake sleepers on the old file so they move to the new one.
        with contextlib.suppress(OSError):
            self._wake()
        if self._shared:
            self._release_flock()  # waiters on the old file get it, see the mark, move over
        # Swap files with the old views bound until the new ones replace them (other
        # threads' get() reads the commit word without the lock).
        old = {n: getattr(self, n) for n in ("_fd", "_region", "_commit", "_waitw",
                                             "_waiter", "_lock_waiter")}
        self._waiter = self._lock_waiter = None
        self._fd = fd
        st = os.fstat(fd)
        self._ident = (st.st_dev, st.st_ino)
        self._region = Region.open(_fd_path(fd))
        self._bind_views()
        _retire(old)
        self._cipher = cipher
        self._pos = pos
        self._seen = self._commit[0]
        self._seq_base += self._nops - count
        self._nops = count

    def _write(self, kind: int, body: bytes, key: str, stored: Any) -> None:
        with self._tlock:
            if self._batch is not None:
                self._remember(kind, key)
                self._batch.append((kind, body))
                self._apply(kind, key, stored)
                return
            self._enter_write()
            try:
                self._append(kind, body)
                self._apply(kind, key, stored)
            finally:
                self._exit_write()

    def _apply(self, kind: int, key: str, stored: Any) -> None:
        if kind == KIND_DEL:
            self._index.pop(key, None)
        elif kind == KIND_CLEAR:
            self._index.clear()
        else:
            self._index[key] = stored

    def _remember(self, kind: int, key: str) -> None:
        if kind == KIND_CLEAR:
            if self._undo_all is None:
                self._undo_all = dict(self._index)
        elif key not in self._undo and self._undo_all is None:
            self._undo[key] = self._index.get(key, _MISSING)

    # --- the mapping API ----------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        if self._shared and self._commit[0] != self._seen:  # the seqlock check
            self._poll()
        v = self._index[key]
        if type(v) in _SPECIAL:
            return self._special(key, v)
        return v

    def get(self, key: str, default: Any = None) -> Any:
        """``kv[key]``, or ``default`` when the key is missing or expired."""
        if self._shared and self._commit[0] != self._seen:  # the seqlock check
            self._poll()
        v = self._index.get(key, _MISSING)
        if v is _MISSING:
            return default
        if type(v) in _SPECIAL:
            try:
                return self._special(key, v)
            except KeyError:
                return default
        return v

    def _special(self, key: str, v: Any) -> Any:
        if type(v) is _Expiring:
            if v.expiry <= time.time():
                raise KeyError(key)
            v = v.value
            if type(v) is not _Packed:
                return v
        return codec.decode_value(v.data, self._ser)

    def __setitem__(self, key: str, value: Any) -> None:
        # The hot path: a plain value, unencrypted, not in a batch, and the record fits.
        # Same bytes as set() -> _append(), with the calls and checks folded in.  (bytes
        # and str stay two branches: one branch choosing tag and table measured ~6% more
        # instructions per set.)
        t = type(value)
        try:
            kb = str.encode(key)  # strict UTF-8 equals surrogatepass whenever it succeeds
            if t is bytes:
                nv = len(value)
                body = b"".join((_KEY_LEN[len(kb)], kb,
                                 _BYTES_HEAD[nv] if nv < _PACKED_BODY_MAX else _TL.pack(7, nv),
                                 value))
            elif t is int:
                body = _KEY_LEN[len(kb)] + kb + _TI.pack(3, value)
            elif t is str:
                raw = value.encode()
                nv = len(raw)
                body = b"".join((_KEY_LEN[len(kb)], kb,
                                 _STR_HEAD[nv] if nv < _PACKED_BODY_MAX else _TL.pack(6, nv),
                                 raw))
            elif t is float:
                body = _KEY_LEN[len(kb)] + kb + _TF.pack(5, value)
            elif t is bool:
                body = _KEY_LEN[len(kb)] + kb + (b"\x02" if value else b"\x01")
            else:
                return self.set(key, value)
        except (UnicodeEncodeError, struct.error, IndexError, TypeError):
            # Lone surrogates, ints past 64 bits: the general path encodes them.  Keys
            # past KEY_MAX or not str: it raises the error that says so.
            return self.set(key, value)
        n = len(body)
        tlock = self._tlock
        tlock.acquire()  # not `with`: measurably cheaper on this path
        try:
            if self._direct:  # single-process, unencrypted, not in a batch
                pos = self._pos
                end = pos + ((19 + n) & ~7)
                if end <= self._size:  # _put() inlined
                    try:
                        pack, seed = self._packers[n]
                    except KeyError:
                        pack, seed = self._packer(n)
                    # Header and body in one call (KIND_SET; crc32 masks the seed).
                    pack(self._view, pos, 0x4B56, 1, 0, n,
                         crc32(body, (pos * 0x9E3779B1) ^ seed), body)
                    self._commit[0] = end  # the commit point
                    self._pos = end
                    self._nops += 1
                    self._index[key] = value
                    return None
            elif self._mpfast and self._depth:
                # Inside lock() or update_with(): this thread holds the writer lock.
                if self._put(body, n):
                    self._index[key] = value
                    return None
            elif self._mpfast:
                # Multiprocess (W1-W3 of the protocol) with the flock pair inline.  Taken
                # at once and nobody else wrote, or only appended: write.  Anything else
                # (contended, compacted, damaged, full) goes the general way, via set().
                fd = self._fd
                try:
                    _flock(fd, _LOCK_EX_NB)
                except BlockingIOError:
                    self._wait_for_lock()
                else:
                    if self._waitw[3]:
                        self._maybe_yield()
                try:
                    w = self._commit[0]
                    if (w == self._seen or (not w & SUPERSEDED and self._read_appended(w))) \
                            and self._put(body, n):
                        self._index[key] = value
                        return None
                finally:
                    _flock(fd, _LOCK_UN)
                    if self._waitw[1]:
                        self._hand_over()
        finally:
            tlock.release()
        return self.set(key, value)

    def _refresh_direct(self) -> None:
        """Derive the flags __setitem__ tests for its single- and multiprocess hot paths
        (call it whenever _fast, _shared, _batch or _forked change)."""
        self._direct = self._fast and not self._shared and self._batch is None
        self._mpfast = self._fast and self._shared and self._batch is None and not self._forked

    def _packer(self, n: int) -> tuple[Callable[..., None], int]:
        """For a KIND_SET record with an ``n``-byte body: pack_into(view, pos, magic, kind,
        flags, n, crc, body), and the part of the crc seed that does not depend on where
        the record goes (see codec's seed)."""
        seed = (n << 16) ^ KIND_SET
        if n > _PACKED_BODY_MAX:
            return _pack_split, seed
        packer = self._packers[n] = struct.Struct(f"<HBBII{n}s").pack_into, seed
        return packer

    def _put(self, body: bytes, n: int) -> bool:
        """Write and commit a KIND_SET record with an ``n``-byte body if it fits (False:
        it does not; multiprocess mode, writer lock held)."""
        pos = self._pos
        end = pos + ((19 + n) & ~7)
        if end > self._size:
            return False
        try:
            pack, seed = self._packers[n]
        except KeyError:
            pack, seed = self._packer(n)
        pack(self._view, pos, 0x4B56, KIND_SET, 0, n, crc32(body, (pos * 0x9E3779B1) ^ seed),
             body)
        self._commit[0] = end  # the commit point
        self._pos = self._seen = end
        self._nops += 1
        if self._waitw[0]:
            self._waitw[0] = 0
            self._wake()
        return True

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``; with ``ttl`` (seconds) it vanishes after that long.

        When set() returns the write survives a crash of this process; call sync() to make
        it survive an OS crash or power loss too.
        """
        kb = codec.encode_key(key)
        vb = codec.encode_value(value, self._ser)
        stored = value if type(value) in _PLAIN else self._stored(vb)
        if ttl is None:
            self._write(KIND_SET, kb + vb, key, stored)
        else:
            if not ttl > 0:
                raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
            expiry = time.time() + ttl
            self._write(KIND_SET_TTL, _F64.pack(expiry) + kb + vb, key,
                        _Expiring(stored, expiry))
            self._has_ttl = True

    def __delitem__(self, key: str) -> None:
        kb = codec.encode_key(key)
        with self._tlock:
            self._enter_write()
            try:
                v = self._index.get(key, _MISSING)
                if v is _MISSING or (type(v) is _Expiring and v.expiry <= time.time()):
                    raise KeyError(key)
                self._write(KIND_DEL, kb, key, None)
            finally:
                self._exit_write()

    def __contains__(self, key: object) -> bool:
        if self._shared and self._commit[0] != self._seen:  # the seqlock check
            self._poll()
        v = self._index.get(key, _MISSING)  # type: ignore[call-overload]
        if v is _MISSING:
            return False
        return type(v) is not _Expiring or v.expiry > time.time()

    def _live_keys(self) -> list[str]:
        if self._shared:
            self._poll()
        now = time.time()
        return [k for k, v in self._index.items()
                if type(v) is not _Expiring or v.expiry > now]

    def __iter__(self) -> Iterator[str]:
        return iter(self._live_keys())

    def __len__(self) -> int:
        if self._shared:
            self._poll()
        if not self._has_ttl:  # no key ever had a ttl: no need to look at every value
            return len(self._index)
        return len(self._live_keys())

    def clear(self) -> None:
        """Remove every key (one record; atomic)."""
        self._write(KIND_CLEAR, b"", "", None)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """dict.update(), as one all-or-nothing batch."""
        with self.batch():
            super().update(*args, **kwargs)

    # --- groups and locking ---------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[KV]:
        """Group writes: they become visible and durable together at the end, or not at all.

        In multiprocess mode the file lock is held for the whole block, so the batch also
        reads other processes' data consistently.  An exception inside undoes the group.
        """
        with self._tlock:
            if self._batch is not None:
                yield self
                return
            self._enter_write()
            self._batch, self._undo, self._undo_all = [], {}, None
            self._refresh_direct()
            try:
                try:
                    yield self
                    entries = self._batch
                    if entries:
                        if len(entries) == 1:
                            self._append(*entries[0])
                        else:
                            self._append(KIND_BATCH, codec.batch_body(entries), len(entries))
                except BaseException:
                    if self._undo_all is not None:
                        self._index.clear()
                        self._index.update(self._undo_all)
                    for k, old in self._undo.items():
                        if old is _MISSING:
                            self._index.pop(k, None)
                        else:
                            self._index[k] = old
                    raise
            finally:
                self._batch, self._undo, self._undo_all = None, {}, None
                self._refresh_direct()
                self._exit_write()

    @contextlib.contextmanager
    def lock(self) -> Iterator[KV]:
        """Hold the write lock: no other process writes until the block ends.

        Use it for read-modify-write sequences (or use update_with()).
        """
        with self._tlock:
            self._enter_write()
            try:
                yield self
            finally:
                self._exit_write()

    def update_with(self, key: str, fn: Any, default: Any = None) -> Any:
        """Atomically replace ``kv[key]`` by ``fn(old)`` (``old`` is ``default`` if missing)."""
        with self._tlock:
            self._enter_write()
            try:
                value = fn(self.get(key, default))
                self[key] = value
                return value
            finally:
                self._exit_write()

    # --- durability and maintenance -------------------------------------------------------

    def sync(self) -> None:
        """Flush the mapped pages to the storage device (survives power loss once it returns)."""
        with self._tlock:
            self._check_open()
            if self._readonly:
                return
            assert self._region is not None
            self._region.sync(0, min(self._size, _platform.align_up(self._pos)))

    def compact(self) -> None:
        """Rewrite the live data into a new, tight file (atomically replaces the old one)."""
        with self._tlock:
            self._enter_write()
            try:
                self._rewrite(self._image(self._cipher), self._cipher)
            finally:
                self._exit_write()

    def rekey(self, key: bytes | None) -> None:
        """Re-encrypt the store with a new key (``None``: store it unencrypted)."""
        cipher = Cipher(key) if key is not None else None
        with self._tlock:
            self._enter_write()
            try:
                self._rewrite(self._image(cipher), cipher)
                self._cipher = cipher
                self._fast = cipher is None
                self._refresh_direct()
            finally:
                self._exit_write()

    def statistics(self) -> KVStatistics:
        with self._tlock:
            self._check_open()
            if self._shared:
                self._poll()
            overhead = OVERHEAD if self._cipher else 0
            live = sum(codec.record_size(len(b) + overhead) for _, b in self._live_entries())

            from ._reports import KVStatistics

            return KVStatistics(
                path=self._path, keys=len(self), live_bytes=live, committed_bytes=self._pos,
                file_bytes=self._size, sequence=self._seq_base + self._nops,
                compactions=struct.unpack_from("<I", self._view, OFF_COMPACTIONS)[0],
                multiprocess=self._multiprocess, encrypted=self._cipher is not None)

    @property
    def path(self) -> str:
        return self._path

    @property
    def closed(self) -> bool:
        return self._region is None

    # --- change notification ----------------------------------------------------------------

    def watch(self, keys: Iterable[str] | None = None) -> None:
        """Start collecting changes made by other processes (to ``keys``, or to any key)."""
        if not self._shared:
            raise ValueError("watch() follows other processes' writes; open the KV with "
                             "multiprocess=True (or readonly=True)")
        with self._tlock:
            self._poll()
            self._watch_keys = None if keys is None else frozenset(keys)
            self._changes = set()

    def changed(self, timeout: float | None = None) -> _Keys:
        """Keys other processes changed since the last call; waits up to ``timeout`` s.

        Returns an empty set when the timeout passes with no change.  Sleeps on a futex in
        the mapped header (no polling of the store).
        """
        if self._changes is None:
            self.watch()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._check_open()
            self._poll()
            with self._tlock:
                got = self._changes or set()
                if self._watch_keys is not None:
                    got &= self._watch_keys
                self._changes = set()
            if got:
                return got
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return set()
            if self._seen == _UNSETTLED:
                # Our file is marked replaced but the path still names it: no commit will
                # come to wake us, so look at the path again after a short sleep.
                time.sleep(_WAIT_SLICE if remaining is None else min(remaining, _WAIT_SLICE))
                continue
            word = self._commit[0]
            if not self._readonly:
                self._waitw[0] = 1
            if self._commit[0] != word or word != self._seen:
                continue
            if self._waiter is None:
                assert self._region is not None
                self._waiter = Waiter(self._region, OFF_COMMIT, doorbell=self._path + ".bell"
                                      if not _platform.HAVE_FUTEX else None)
            self._waiter.wait(word & 0xFFFFFFFF, _WAIT_SLICE if remaining is None
                              else min(remaining, _WAIT_SLICE))

    # --- copies, export ---------------------------------------------------------------------

    def backup(self, dst: str | os.PathLike[str]) -> None:
        """Write a consistent, compacted copy of the store to ``dst`` (while in use)."""
        with self._tlock:
            self._check_open()
            if self._shared:
                self._poll()
            entries = self._live_entries()
            cipher = self._cipher
            _write_store(os.fspath(dst), entries, cipher, self._min_cap)

    @classmethod
    def restore(cls, src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                key: bytes | None = None) -> None:
        """Replace the store at ``dst`` by the backup ``src`` (which must verify).

        ``dst`` must not be open anywhere (refused with ModeConflictError).
        """
        report = cls.check(src, key=key)
        if not report.ok:
            raise CorruptFileError(f"backup {src} is damaged: {'; '.join(report.problems)}",
                                   path=os.fspath(src))
        dst = os.path.abspath(os.fspath(dst))
        mode = FileLock(dst + ".lock")
        try:
            if not mode.try_exclusive():
                raise ModeConflictError(f"{dst} is open in another process; close it there "
                                        "before restoring over it")
            import shutil

            tmp = dst + ".restore~"
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            if os.path.exists(dst):
                _mark_superseded(dst)
            os.replace(tmp, dst)
            _fsync_dir(dst)
        finally:
            mode.close()

    def export_json(self, fp: IO[str] | str | os.PathLike[str]) -> int:
        """Write every live key as JSON (bytes/tuples/odd floats tagged); returns the count."""
        with self._tlock:
            items = {k: codec.to_json_value(self[k]) for k in self._live_keys()}
        doc = {"format": "mmapkit-kv", "version": 1, "items": items}
        import json

        if isinstance(fp, (str, os.PathLike)):
            with open(fp, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1, ensure_ascii=False)
        else:
            json.dump(doc, fp, indent=1, ensure_ascii=False)
        return len(items)

    def import_json(self, fp: IO[str] | str | os.PathLike[str]) -> int:
        """Load an export_json() document (one atomic batch); returns the count."""
        import json

        if isinstance(fp, (str, os.PathLike)):
            with open(fp, encoding="utf-8") as f:
                doc = json.load(f)
        else:
            doc = json.load(fp)
        if not isinstance(doc, dict) or doc.get("format") != "mmapkit-kv":
            raise ValueError("not an mmapkit KV JSON export (no \"format\": \"mmapkit-kv\")")
        if doc.get("version") != 1:
            raise FormatVersionError(f"KV JSON export version {doc.get('version')} is newer "
                                     "than this mmapkit reads (1)", found=doc.get("version", 0),
                                     supported=1)
        items = doc.get("items", {})
        with self.batch():
            for k, v in items.items():
                self.set(k, codec.from_json_value(v))
        return len(items)

    # --- integrity (static) ---------------------------------------------------------------

    @classmethod
    def check(cls, path: str | os.PathLike[str], *, key: bytes | None = None) -> CheckReport:
        """Verify every record of the file at ``path``; changes nothing, takes no lock.

        Without ``key`` encrypted records are checked by their CRC only.
        """
        path = os.path.abspath(os.fspath(path))
        cipher = Cipher(key) if key is not None else None
        with open(path, "rb") as f:
            data = f.read()
        view = memoryview(data)
        hdr = codec.parse_header(view, path=path)
        problems: list[str] = []
        if cipher is not None and hdr.encrypted and not cipher.verify(hdr.keycheck, hdr.salt):
            raise DecryptionError(f"wrong key for {path}", path=path)
        analysis = _analyse(view, hdr)
        problems += analysis.problems
        bad = list(analysis.damaged)
        keys: dict[str, int] = {}
        for rec in analysis.records:
            try:
                body = rec.body
                if rec.flags & REC_FLAG_ENCRYPTED:
                    if cipher is None:
                        continue
                    body = cipher.decrypt(body, rec.offset, rec.kind)
                for kind, k, vb, _ in codec.iter_ops(rec.kind, body):
                    if vb and vb[0] != codec.T_CUSTOM:
                        codec.decode_value(vb)
                    if kind == KIND_DEL:
                        keys.pop(k, None)
                    elif kind == KIND_CLEAR:
                        keys.clear()
                    else:
                        keys[k] = 1
            except (CorruptFileError, DecryptionError) as exc:
                bad.append((rec.offset, rec.offset + rec.size))
                problems.append(f"record at {rec.offset}: {exc}")
        tail = len(data) - analysis.pos if analysis.dirty_tail else 0
        ok = not bad and not problems
        from ._reports import CheckReport

        return CheckReport(
            path=path, ok=ok, version=hdr.version, encrypted=hdr.encrypted,
            header_ok=hdr.crc_ok, superseded=hdr.superseded, records=len(analysis.records),
            keys=len(keys), committed_bytes=hdr.end, file_bytes=len(data),
            damaged=tuple(bad), lost_bytes=sum(b - a for a, b in bad),
            uncommitted_tail_bytes=tail, problems=tuple(problems))

    @classmethod
    def repair(cls, path: str | os.PathLike[str], *, key: bytes | None = None,
               serializer: Serializer | None = None) -> CheckReport:
        """Salvage what verifies into a fresh file at ``path``; the damaged original is kept
        as ``<path>.damaged``.  Returns the check report of the repaired file."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with cls(path, key=key, recover=True, serializer=serializer) as kv:
                kv.compact()
        return cls.check(path, key=key)

    # --- life cycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Release the mapping and locks.  Idempotent.  Nothing is lost by not calling it."""
        with self._tlock:
            mode, self._mode = self._mode, None
            self._shared = False  # first: other threads' get() stops reading the commit word
            self._index = _Closed()
            try:
                self._detach()
            finally:
                if mode is not None:
                    mode.close()
                self._index = _Closed()
                self._shared = self._fast = False
                self._refresh_direct()

    def __enter__(self) -> KV:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "multiprocess" if self._multiprocess else "readonly" if self._readonly else \
            "single-process"
        state = "closed" if self._region is None else f"{len(self._index)} keys"
        return f"<KV {self._path} {mode} {state}>"


def _retire(old: dict[str, Any]) -> None:
    """Close a replaced file's mapping, waiters and descriptor (``old``: its attributes).

    Its views are dropped, not released: another thread may be reading the commit word
    through one right now (get() takes no lock); the mapping then goes when it lets go.
    """
    region, fd = old["_region"], old["_fd"]
    waiters = old["_waiter"], old["_lock_waiter"]
    old.clear()
    for w in waiters:
        if w is not None:
            w.close()
    with contextlib.suppress(ExportedViewsError):
        region.close()
    os.close(fd)


def _fast_set(body: bytes) -> tuple[str, Any] | None:
    """(key, value) of a plain int/bytes/str set record, or None for the general path.

    Opening a store replays every record: this skips the generic op and value decoders
    for the common cases (same results; anything unusual goes the long way).
    """
    n = len(body)
    if n < 3:
        return None
    nk = body[0] | body[1] << 8
    v = 2 + nk
    if v >= n:
        return None
    tag = body[v]
    try:
        key = body[2:v].decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
    if tag == 3 and n == v + 9:
        return key, int.from_bytes(body[v + 1 :], "little", signed=True)
    if (tag == 7 or tag == 6) and n >= v + 5:
        ln = int.from_bytes(body[v + 1 : v + 5], "little")
        if n != v + 5 + ln:
            return None
        raw = body[v + 5 :]
        if tag == 7:
            return key, raw
        try:
            return key, raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return None
    return None


def _frame_all(entries: list[tuple[int, bytes]], cipher: Cipher | None) -> tuple[list[bytes], int]:
    """The records of ``entries`` laid out from DATA_START, and where they end."""
    parts: list[bytes] = []
    pos = DATA_START
    append = parts.append
    if cipher is None:
        frame = codec.encode_record
        for kind, body in entries:
            rec = frame(kind, body, pos)
            append(rec)
            pos += len(rec)
    else:
        for kind, body in entries:
            rec = codec.encode_record(kind, cipher.encrypt(body, pos, kind), pos,
                                      REC_FLAG_ENCRYPTED)
            append(rec)
            pos += len(rec)
    return parts, pos


def _framer(n: int) -> Callable[..., bytes]:
    """pack(magic, kind, flags, n, crc, body) -> the padded record, for ``n``-byte bodies."""
    pad = _PADS[-(12 + n) & 7]
    if n > 1024:  # long bodies: no Struct for each length (the copies cost more anyway)
        def frame(magic: int, kind: int, flags: int, length: int, crc: int,
                  body: bytes) -> bytes:
            return b"".join((_REC.pack(magic, kind, flags, length, crc), body, pad))

        return frame
    return struct.Struct(f"<HBBII{n}s{len(pad)}x").pack


def _pack_split(view: memoryview, pos: int, magic: int, kind: int, flags: int, n: int,
                crc: int, body: bytes) -> None:
    """A record header and a long body (one Struct per length would cost too much memory)."""
    _REC_PACK(view, pos, magic, kind, flags, n, crc)
    view[pos + 12 : pos + 12 + n] = body


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _write_parts(fd: int, parts: list[bytes], offset: int) -> None:
    """Write the concatenation of ``parts`` at ``offset``.

    Joined a few thousand at a time: one copy of the whole would cost as much again in
    fresh memory, and pwritev of small buffers costs the kernel more than the join.
    """
    step = 4096
    for i in range(0, len(parts), step):
        data = b"".join(parts[i : i + step])
        _write_all(fd, data, offset)
        offset += len(data)


def _disk_full(exc: OSError, what: str) -> OSError:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(exc.errno, f"no space left to write {what}; free some disk space "
                             "and retry (nothing already written was lost)")
    return exc


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mark_superseded(path: str) -> None:
    """Tell processes mapping the file at ``path`` that it is being replaced."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        raw = os.pread(fd, 8, OFF_COMMIT)
        if len(raw) == 8:
            (w,) = struct.unpack("<Q", raw)
            os.pwrite(fd, struct.pack("<Q", w | SUPERSEDED), OFF_COMMIT)
    finally:
        os.close(fd)


def _write_store(dst: str, entries: list[tuple[int, bytes]], cipher: Cipher | None,
                 min_cap: int) -> None:
    import random  # not at module import: reopening a KV needs no salt
    salt = random.getrandbits(64)
    parts, pos = _frame_all(entries, cipher)
    header = codec.build_header(flags=FLAG_ENCRYPTED if cipher else 0, salt=salt,
                                created_ns=time.time_ns(),
                                keycheck=cipher.keycheck(salt) if cipher else b"", end=pos)
    tmp = dst + ".backup~"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            _write_all(fd, header + b"".join(parts), 0)
        except OSError as exc:
            raise _disk_full(exc, dst) from exc
        _platform.ensure_allocated(fd, max(min_cap, _platform.align_up(pos)))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, dst)
    _fsync_dir(dst)


if sys.platform == "win32":  # pragma: no cover
    raise ImportError("mmapkit.kv needs POSIX")
