"""Journal: a Kafka-class persistent log in one directory, shared by unrelated processes.

Design rules:

- The directory holds ``journal.meta`` (one mapped page: settings, the *active base* A,
  the *start offset* S, the notify and waiters words, the boot stamp, the recovery point),
  segments ``<20-digit base>.log`` with their sparse ``.index`` / ``.timeindex``, and the
  consumers' committed offsets in ``consumers.kv`` (a multiprocess KV).  Formats: _format.py
  and docs/formats.md.
- Each segment publishes its own end with one aligned 8-byte *commit word* W in its header:
  (records in the segment << 32) | end position.  One store makes a batch visible with its
  offsets: a record is acknowledged once W covers it.
- Writers serialise on an exclusive flock on ``journal.meta`` (the kernel drops it when a
  writer dies, so a killed writer never wedges the others).  Readers take no lock and
  never write a byte of journal data (they may set the waiters hint in meta; and a handle
  that finds a sealed segment's index untrusted rebuilds it as a writer would: under the
  writer lock, into a new file renamed over the old).
- Offsets are dense and strictly increasing: the writer assigns ``base + records(W)`` to
  the batch's first record under the lock, then publishes.  Nothing winds W, A or S back
  (the one exception is recovery after a power loss, when no process has seen the lost
  bytes: the boot stamp in the meta page changed).
- Files only grow and are never rewritten in place while they may be mapped: a batch is
  stored past W through the writer's mapping of bytes posix_fallocate allocated first
  (A5g: ENOSPC is DiskFullError before anything is published, never SIGBUS);
  index files are allocated when their segment is created (before A names it); a rebuilt
  index replaces the old file by rename; retention renames whole sealed segments to
  ``.deleted`` and unlinks them ``delete_delay_ms`` later, so a reader holding one reads on.
- An append that woke a sleeping follower yields the CPU once (A7).  When P idles between
  appends, the kernel wakes the follower on P's CPU (measured: 90-96% of wake-ups on a
  2-vCPU VM; waking the other, idle vCPU costs 47-111 us there), where it waits for P to
  sleep or its slice to end; the yield lets it run at once (same-CPU hand-off p50 3-7 us
  lower).  Appends that woke nobody make no syscall; one that did pays one sched_yield.

Multiprocess protocol.  Shared state: meta (A, S, notify word N, waiters word, boot stamp,
recovery point, bells word B and the doorbell slots), each segment's W, the files in the
directory.  L = the writer lock.

    ====  ================================  ====  ========================================
    #     step (process P)                  lock  what another process may do or see
    ====  ================================  ====  ========================================
    C1    create: flock the directory;       dir  a second creator waits, then finds the
          no meta yet: write segment 0,          meta and opens it (C2)
          write meta to a temp name, rename
    C2    open: map meta, check magic and   -     writers append and roll: P sees them
          version; boot stamp differs:            through A and W (nothing cached)
          take L, recover (P1), stamp
    A1    append: encode the batch (no      -     anything: nothing shared touched yet
          lock; offsets not assigned yet)
    A2    take L; A names another segment   L     other writers wait on L; readers read
          than P's: attach to it (A3)             as before
    A3    attach: open the segment, read W, L     readers see W as before; the slots P
          clear index slots past W (left          clears are ignored by them (past W)
          by a writer killed before A6)
    A3b   W moved since P's last append     L     as A3: P reads only published bytes
          (another writer appended): when an       (the batches between the W it saw and
          index entry is due by what P knows,      W now); a W that is not a successor
          catch up first from the W P saw          of P's (never, within a boot) -> A3.
          (index tails, newest timestamp:          Until then P appends without reading
          the others' last time entry, past        them: the index slots P would write
          that W, gives it up to its batch;        and the timestamps in them are the
          P reads the batches from the later       only state that depends on them
          of the two), then decide again;
          else as A3
    A4    roll needed (size, age, 2^32      L     see R1-R4
          records): R1-R4
    A5g   the batch would end past what P   L     the file is longer than W's position:
          has allocated and mapped (first         zeros past W, not data (readers stop at
          append to a segment, or every           W; check() ignores them); ENOSPC here
          step, 64 KiB doubling to 4 MiB,         is DiskFullError with nothing stored;
          at most segment_bytes): fallocate       a kill leaves the allocation, which the
          [W's position, new end), map the        next writer reuses; the file never
          file up to it (writable, shared)        shrinks.  No fallocate here: pwrite
    A5    set the first offset = base +     L     readers read up to W only: the new
          records(W); store the batch at          bytes are invisible; a kill here leaves
          W's position through P's mapping;       garbage past W that the next writer
          index entries if due (into              overwrites (A3 clears its index slots)
          preallocated slots)
    A6    store W (one 8-byte store)        L     the batch is whole and visible: it is
                                                  acknowledged from here on
    A7    N += 1; release L (or hold it:    -     followers woken (or they see N moved
          H1-H3); waiters word set: clear         at their next timed look); one woken
          it, futex wake; it woke someone:        on P's CPU runs at P's yield, not at
          yield the CPU once                      P's next sleep or slice end
    A7b   bells word B read under L: B>0:  -     each registered reader's doorbell FIFO
          write a byte to each registered         turns readable (after W was stored); a
          reader's doorbell (after L)             FIFO nobody reads (reader killed) is
                                                  skipped from then on
    A8    sync policy: fdatasync segment,   -     nothing (bytes already visible)
          raise the recovery point
    R1    roll: unlink orphans (segments    L     orphans are invisible to readers (they
          above A: a roll killed after R2)        ignore bases above A)
    R2    write the new segment's indexes   L     files appear under their final names,
          and header (temp name, rename)          complete; still above A: invisible
    R3    store A = new base; N += 1        L     readers at the end of the old segment
                                                  read A, then W (final), and move to
                                                  base + records(W); a kill before R3
                                                  leaves an orphan (R1 removes it)
    R4    retention (D1-D3)                 L     --
    D1    pick sealed segments, oldest      L     readers go on reading every segment
          first, by age of newest record          (nothing changed yet)
          and by total bytes
    D2    store S = the first base kept     L     a reader asking for less than S gets
                                                  OutOfRangeError (or its reset policy)
    D3    rename each picked file to        L     a reader holding it reads on; a reader
          .deleted; unlink .deleted files         opening by name falls back to .deleted,
          older than delete_delay_ms              then to OutOfRangeError; a kill between
                                                  D2 and D3 leaves files below S (the
                                                  next retention renames them)
    F1    follow: read N, then A, then W    -     a publish between the reads moves N:
          of P's segment; nothing new: set        P's futex wait returns at once
          waiters word, read N again, futex
          wait on N (timed slice)
    B1    fileno(): mkfifo + open the      L     an append whose L came before B1 rang
          reader's doorbell; under L free         nobody: the reader's first look (after
          slots of dead pids / gone FIFOs,        B1) sees its W; every later append
          store the slot, then B = slots in       rings (A7b); a kill between the two
          use (counted afresh); let L go at       stores leaves B short of a dead slot
          once (a reader never holds it, H1)
    B2    reader with a doorbell finds      -     an append after the emptying rings:
          nothing: empty the FIFO, then           the FIFO stays readable for the next
          look again                              select (never a lost wake-up)
    B3    reader close: under L clear its   L     a writer holding its FIFO open gets
          slot, B = slots in use (L let go        EPIPE (or ENXIO/ENOENT at open): skips
          at once); close, unlink the FIFO
    P1    recovery after power loss (boot   L     no process of this boot has seen the
          stamp differs): verify batches          cut bytes (they all open through C2,
          from the recovery point (pread a        which waits for L); the cut range is
          chunk at a time, no mapping), cut       reported (RecoveryReport)
          W at the first bad one, unlink
          later segments, A = last good one
    K     kill -9 at any step               -     L dropped by the kernel; a batch past
                                                  W is garbage (A3); an orphan segment
                                                  (R1); files below S (D3)
    ====  ================================  ====  ========================================

The writer lock is held between appends (``lock_hold`` seconds, 0 = off): a run of
appends takes the flock once (two flock calls were a third of an append).  The taking,
holding and handing over are the KV's (``kv._writelock.WriterLock``, L1-L4 there), over
the meta page's words wanted / hand-overs / ready (OFF_LOCK_*).  To another process a held
lock is a writer that has not finished yet; A6 is still where an append is acknowledged,
so holding changes no guarantee: the holder's kill drops the flock like any writer's.

    ====  ================================  ====  ========================================
    #     step (process P, P's thread lock)  lock  what another process may do or see
    ====  ================================  ====  ========================================
    L1-4  take L: try a few times; then     -     the holder sees "wanted" at its next
          set "wanted", wake the holder's         release (H3) or its releaser wakes (H4)
          releaser, sleep on the hand-over
          count (timed slices: a killed
          holder wakes nobody); woken: set
          "ready", try; got it: clear ready
    H1    an append (or any step under L)   L     its appends wait (L1-L4); readers read
          ends, nobody waits (wanted and          on lock-free: W was stored at A6, the
          ready clear): keep the flock            batch is acknowledged
          ("held"); the releaser thread
          watches the hold (started before
          P's first take of L, not under it)
    H2    P appends while held: no flock    L     nobody else can have appended: W is
          call (A2 without the system call)       what P last stored (A3b finds W==seen)
    H3    an append ends while someone      L->-  the waiter takes L (L3) and appends;
          waits and P's run has lasted its        P's next append waits its turn (L1-L4)
          quantum (2 ms): unlock, bump the
          hand-over count, futex wake one
    H4    releaser thread (under P's        L->-  an idle holder lets go within about
          thread lock, no step in              lock_hold, at once when a waiter's L2
          progress): P appended nothing for       wakes the thread (futex on "wanted");
          lock_hold, or someone waits:            a process that never sets "wanted"
          unlock                                  (plain flock) waits until then
    H5    fork: the child's copy is not     -     the parent's hold goes on; a parent
          held; its descriptor gets a new         killed while holding drops its flock
          open file description at once           even while the child lives
          (flock belongs to the description)
    H6    close(): unlock if held; the      L->-  as H4
          releaser stops
    K     kill -9 while holding             -     the kernel drops the flock; waiters'
                                                  timed slices (10 ms) find it free
    ====  ================================  ====  ========================================

Reopen after kill -9 costs O(unpublished bytes): attach (A3) reads W and scans at most the
batches after the last index entry, never the journal.

The lean append: while P's flock is held without a break since its last append, nobody
else can append, roll or change a setting, so an append of a plain value whose batch fits
the mapped room, in a segment not due to roll by age, does A5 (store, and the index
entries when due, as the general append: W is what P stored, nothing to catch up), A6 (W)
and A7 (N, waiters, bells, the lock's wanted/ready words) with no other decision: the
same steps, decided when the general append that kept the flock ended
(``Journal._make_hot``, under P's thread lock).  Letting the flock go (H3, H4, H6) or a
fork (H5) clears that state; W moved by another writer (seen != W, A3b) never sets it.

Test pause points (``mmapkit._testhooks``): journal.append.grown (A5g done),
journal.append.written (A5 done),
journal.append.published (L released or held, before the A7 wake-ups), journal.bell.slot (B1's
slot stored, B not yet), journal.roll.created (R2 done), journal.retain.started (D2 done).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Union

from .. import _platform
from .._fileio import atomic_file, fsync_dir, raise_if_disk_full, temp_name, write_all
from .._testhooks import PAUSES, pause
from ..errors import (
    ClosedError,
    CorruptFileError,
    ForeignFileError,
    FormatVersionError,
    JournalRecoveryWarning,
    MessageTooLargeError,
)
from ..kv._writelock import WriterLock
from ..kv.codec import LOCK_READY as _LOCK_READY
from ..region import Region
from ..wait import WAKE_ALL, Waiter
from . import _format as F
from .index import SparseIndex, index_paths
from .segment import ActiveSegment, Segment, list_segments

if TYPE_CHECKING:
    from ..kv import KV
    from .consumer import Consumer
    from .reader import Reader
    from .remote import JournalServer

__all__ = ["META_NAME", "CheckReport", "Journal", "JournalStatistics", "RecoveryReport"]

META_NAME = "journal.meta"
OFFSETS_NAME = "consumers.kv"
DEFAULT_SEGMENT_BYTES = 1 << 30
DEFAULT_SEGMENT_MS = 7 * 24 * 3600 * 1000
DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000
DEFAULT_DELETE_DELAY_MS = 60_000
_MAX_INDEX_SLOTS = 1 << 20
_WAIT_SLICE = 0.1
_Q = struct.Struct("<Q")
_q = struct.Struct("<q")

HeadersArg = Union[Mapping[str, bytes], Sequence[tuple[str, bytes]], None]  # noqa: UP007
SyncArg = Union[str, float, int]  # noqa: UP007


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


_time_ns = time.time_ns
_monotonic = time.monotonic
_ONLY_BYTES = {bytes}
_CATCH_UP_MAX = 1 << 20  # bytes other writers appended that _catch_up reads at most
# The live writer locks, for the one at-fork hook below (a hook per lock could never be
# unregistered): a fork child gives each a descriptor of its own (_WriterLock._after_fork).
_LOCKS: weakref.WeakSet[_WriterLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for lock in list(_LOCKS):
        lock._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
# word indexes into the meta page (the u64 and u32 views)
_I_SEGMENT_BYTES = F.OFF_SEGMENT_BYTES // 8
_I_ACTIVE = F.OFF_ACTIVE // 8
_I_SEGMENT_MS = F.OFF_SEGMENT_MS // 8  # stored as i64 but never negative (checked at open)
_MAX_RECORDS = F.MAX_RECORDS_PER_SEGMENT
_SEGMENT_HEADER = F.SEGMENT_HEADER
_CRC_FROM = F.CRC_FROM
_prefix = F.PREFIX.pack
_prefix_into = F.PREFIX.pack_into
_one_pack = F.ONE_TAIL.pack
_ONE_SIZE = F.PREFIX.size + F.ONE_TAIL.size  # a one-record batch without key: 60 + value
_ONE_STEP = 1 << 32  # one record more in W
_I_BELLS2 = F.OFF_BELLS // 8  # u64: the bells count and the lock's wanted word
_I_READY = F.OFF_LOCK_READY // 4
_BATCH_VERSION = F.BATCH_VERSION
_crc32 = F.crc32  # (zlib's values; ISA-L's speed where the isal extra is installed)
_I_INTERVAL = F.OFF_INDEX_INTERVAL // 4
_I_NOTIFY = F.OFF_NOTIFY // 4
_I_WAITERS = F.OFF_WAITERS // 4
_I_BELLS = F.OFF_BELLS // 4
_I_BELL0 = F.OFF_BELL_SLOTS // 8


def _one_struct(value_len: int) -> struct.Struct:
    """The whole one-record batch of a plain value of ``value_len`` bytes: the prefix's
    three fields, the packed 44 bytes after it, the value."""
    return struct.Struct(f"<IIQ{F.ONE_TAIL.size}s{value_len}s")


def _norm_headers(headers: HeadersArg) -> tuple[tuple[str, bytes], ...] | None:
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    for name, value in items:
        if not isinstance(name, str):
            raise TypeError(f"header names are str, got {type(name).__name__}")
        out.append((name, bytes(value)))
    return tuple(out)


def _as_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"a journal {what} must be bytes-like, got {type(value).__name__}; "
                    "encode it first (e.g. json.dumps(x).encode())")


@dataclass(frozen=True)
class JournalStatistics:
    """A snapshot of a journal (as this process sees it now)."""

    start_offset: int
    end_offset: int
    records: int
    segments: int
    bytes: int
    active_base: int
    segment_bytes: int
    segment_ms: int
    retention_ms: int | None
    retention_bytes: int | None
    appended: int  # records appended through this handle
    recovered: bool  # this handle ran power-loss recovery


@dataclass(frozen=True)
class RecoveryReport:
    """What recovery after a power loss kept and cut."""

    kept_end_offset: int
    cut_records: int
    cut_bytes: int
    removed_segments: tuple[int, ...]
    reason: str


@dataclass
class CheckReport:
    """The result of :meth:`Journal.check` (which changes nothing)."""

    path: str
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    damaged: list[tuple[int, int]] = field(default_factory=list)  # [first, end) offsets
    stale_indexes: list[str] = field(default_factory=list)
    segments: int = 0
    records: int = 0
    bytes: int = 0
    start_offset: int = 0
    end_offset: int = 0

    def problem(self, text: str) -> None:
        self.ok = False
        self.problems.append(text)


class _Meta:
    """The mapped meta page (words read and written in place)."""

    __slots__ = ("region", "u32", "u64")

    def __init__(self, path: str) -> None:
        try:
            self.region = Region.open(path)
        except FileNotFoundError:
            raise
        view = self.region.view
        if len(view) < F.META_SIZE:
            self.region.close()
            raise CorruptFileError(f"{path} is shorter than a journal meta page", path=path,
                                   offset=0)
        magic, version, _flags, _size = struct.unpack_from("<8sHHI", view, 0)
        if magic != F.META_MAGIC:
            self.region.close()
            raise ForeignFileError(f"{path} is not a journal meta file (magic {magic!r})",
                                   path=path)
        if version > F.VERSION:
            self.region.close()
            raise FormatVersionError(
                f"{path} was written by a newer mmapkit (journal format {version}; this one "
                f"reads up to {F.VERSION}); upgrade mmapkit", path=path, found=version,
                supported=F.VERSION)
        self.u64 = view[: F.META_SIZE].cast("Q")
        self.u32 = view[: F.META_SIZE].cast("I")

    def get(self, off: int) -> int:
        return int(self.u64[off // 8])

    def get_signed(self, off: int) -> int:
        v = int(self.u64[off // 8])
        return v - (1 << 64) if v >= 1 << 63 else v

    def set(self, off: int, value: int) -> None:
        self.u64[off // 8] = value & 0xFFFFFFFFFFFFFFFF

    def bump(self) -> None:
        i = F.OFF_NOTIFY // 4
        self.u32[i] = (int(self.u32[i]) + 1) & 0xFFFFFFFF

    def close(self) -> None:
        self.u64.release()
        self.u32.release()
        self.region.close()


class Journal:
    """An ordered, persistent, append-only log in directory ``path`` (one Kafka partition),
    shared by any number of unrelated processes.

    Settings given when the journal is created are stored in it; passing one when opening
    an existing journal changes it for every process (as Kafka's topic configs).
    ``sync``: ``"never"`` (a returned append survives a process crash), ``"always"``
    (fdatasync before append returns: survives power loss) or a number of seconds (sync
    when the last sync is older than that).  ``lock_hold``: seconds this handle keeps the
    writer lock after an append (0: off), so a run of appends pays no lock system call; a
    writer in another process that wants the lock gets it handed over at once.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False,
                 segment_bytes: int | None = None, segment_ms: int | None = None,
                 retention_ms: int | None = None, retention_bytes: int | None = None,
                 index_interval: int | None = None, sync: SyncArg = "never",
                 delete_delay_ms: int | None = None, lock_hold: float = 0.001) -> None:
        self._dir = os.path.abspath(os.fspath(path))
        self._closed = True
        self._sync_every: float | None
        if sync == "never":
            self._sync_every = None
        elif sync == "always":
            self._sync_every = 0.0
        elif isinstance(sync, (int, float)) and not isinstance(sync, bool) and sync > 0:
            self._sync_every = float(sync)
        else:
            raise ValueError(f"sync must be 'never', 'always' or seconds > 0, got {sync!r}")
        if segment_bytes is not None and not (
                F.SEGMENT_HEADER + F.BATCH_HEADER < segment_bytes <= F.MAX_SEGMENT_BYTES):
            raise ValueError(f"segment_bytes must be in (104, {F.MAX_SEGMENT_BYTES}], got "
                             f"{segment_bytes}")
        if index_interval is not None and index_interval <= 0:
            raise ValueError(f"index_interval must be positive, got {index_interval}")
        if not (isinstance(lock_hold, (int, float)) and lock_hold >= 0):
            raise ValueError(f"lock_hold must be a number of seconds >= 0, not {lock_hold!r}")
        for name, v in (("segment_ms", segment_ms), ("retention_ms", retention_ms),
                        ("retention_bytes", retention_bytes),
                        ("delete_delay_ms", delete_delay_ms)):
            if v is not None and v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        meta_path = os.path.join(self._dir, META_NAME)
        if not os.path.exists(meta_path):
            if not create:
                raise FileNotFoundError(
                    f"no journal at {self._dir}; pass create=True to make one")
            self._create(segment_bytes, segment_ms, retention_ms, retention_bytes,
                         index_interval, delete_delay_ms)
        self._meta = _Meta(meta_path)
        self._lock = _WriterLock(meta_path, self._meta.region, lock_hold)
        self._closed = False
        self._active: ActiveSegment | None = None
        self._tail: Segment | None = None  # read view of the active segment (end_offset)
        self._waiter: Waiter | None = None
        self._wake: Callable[[int], int] | None = None  # the waiter's waker, once made
        self._kv: KV | None = None
        self._kv_lock = threading.Lock()
        self._appended = 0
        self._last_sync = time.monotonic()
        self._recovery: RecoveryReport | None = None
        self._synced_shape: tuple[int, int] | None = None  # (A, S) this handle msynced
        self._bell_fds: dict[int, int] = {}  # doorbell slot -> FIFO write end (-1: dead)
        # the lean append's bounds (_make_hot; valid while self._lock._hot is set)
        self._hot_end = self._hot_index_at = self._hot_deadline = self._hot_interval = 0
        self._head, self._head_crc, self._head_ts, self._head_n = b"", 0, -1, -1
        # pack_into of the whole lean batch, by batch length (the lengths seen lately)
        self._one_intos: dict[int, Callable[..., None]] = {}
        self._one_into = self._one_into_for(_ONE_SIZE)
        self._u32 = self._meta.u32
        self._u64 = self._meta.u64
        updates = {F.OFF_SEGMENT_BYTES: segment_bytes, F.OFF_SEGMENT_MS: segment_ms,
                   F.OFF_RETENTION_MS: retention_ms, F.OFF_RETENTION_BYTES: retention_bytes,
                   F.OFF_INDEX_INTERVAL: index_interval, F.OFF_DELETE_DELAY: delete_delay_ms}
        try:
            boot = _platform.boot_id()
            stale_boot = bytes(self._meta.region.view[F.OFF_BOOT : F.OFF_BOOT + 16]) != boot
            changes = {k: v for k, v in updates.items() if v is not None and (
                self._meta.get(k) != v or k == F.OFF_INDEX_INTERVAL)}
            if stale_boot or changes:
                with self._lock:
                    for k, v in changes.items():
                        if k == F.OFF_INDEX_INTERVAL:
                            struct.pack_into("<I", self._meta.region.view, k, v)
                        else:
                            self._meta.set(k, v)
                    view = self._meta.region.view
                    if bytes(view[F.OFF_BOOT : F.OFF_BOOT + 16]) != boot:
                        if boot != b"\0" * 16 and any(view[F.OFF_BOOT : F.OFF_BOOT + 16]):
                            self._recovery = self._recover_power_loss()
                        view[F.OFF_BOOT : F.OFF_BOOT + 16] = boot
        except BaseException:
            self.close()
            raise

    # --- creation -----------------------------------------------------------------------

    def _create(self, segment_bytes: int | None, segment_ms: int | None,
                retention_ms: int | None, retention_bytes: int | None,
                index_interval: int | None, delete_delay_ms: int | None) -> None:
        os.makedirs(self._dir, exist_ok=True)
        dfd = os.open(self._dir, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(dfd, fcntl.LOCK_EX)  # C1: one creator at a time
            meta_path = os.path.join(self._dir, META_NAME)
            if os.path.exists(meta_path):
                return
            if any(n.endswith(".log") for n in os.listdir(self._dir)):
                raise ForeignFileError(
                    f"{self._dir} holds segment files but no {META_NAME}; it is not a "
                    "journal mmapkit can open (restore the meta file or use another "
                    "directory)", path=self._dir)
            sb = segment_bytes if segment_bytes is not None else DEFAULT_SEGMENT_BYTES
            ii = index_interval if index_interval is not None else 4096
            now = _now_ms()
            try:
                ActiveSegment.create(self._dir, 0, now, _index_slots(sb, ii))
                data = F.encode_meta(
                    created_ms=now, segment_bytes=sb,
                    segment_ms=segment_ms if segment_ms is not None else DEFAULT_SEGMENT_MS,
                    retention_ms=retention_ms if retention_ms is not None
                    else DEFAULT_RETENTION_MS,
                    retention_bytes=retention_bytes if retention_bytes is not None
                    else F.NONE_I64,
                    index_interval=ii,
                    delete_delay_ms=delete_delay_ms if delete_delay_ms is not None
                    else DEFAULT_DELETE_DELAY_MS)
                buf = bytearray(data)
                buf[F.OFF_BOOT : F.OFF_BOOT + 16] = _platform.boot_id()
                with atomic_file(meta_path) as fd:  # (fsynced, and its directory)
                    write_all(fd, buf, 0)
            except OSError as exc:
                raise_if_disk_full(exc, f"no space left to create a journal in {self._dir}")
                raise
        finally:
            os.close(dfd)

    # --- settings -----------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._dir

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> _Meta:
        if self._closed:
            raise ClosedError("the journal is closed; open it again")
        return self._meta

    def _settings(self) -> tuple[int, int, int, int, int, int]:
        m = self._meta
        (interval,) = struct.unpack_from("<I", m.region.view, F.OFF_INDEX_INTERVAL)
        return (m.get(F.OFF_SEGMENT_BYTES), m.get_signed(F.OFF_SEGMENT_MS),
                m.get_signed(F.OFF_RETENTION_MS), m.get_signed(F.OFF_RETENTION_BYTES),
                int(interval), m.get_signed(F.OFF_DELETE_DELAY))

    # --- writing ------------------------------------------------------------------------

    def append(self, value: bytes | bytearray | memoryview, *, key: bytes | None = None,
               headers: HeadersArg = None, timestamp_ms: int | None = None) -> int:
        """Append one record; returns its offset.  Once this returns, the record survives
        a crash of any process (and power loss with ``sync="always"``)."""
        now = _time_ns() // 1_000_000
        lock = self._lock
        seg = lock._hot
        # The lean path (A5-A7 with everything decided before, _make_hot): a plain value;
        # this handle's flock held without a break since its last append (letting it go
        # clears lock._hot), so nobody else appended, rolled or changed a setting and W
        # is what we stored (seg.seen); the batch fits the allocated, mapped room; the
        # segment is not due to roll by age (an index entry due is written here, as the
        # general way does).  Anything else goes the general way (which sets the state
        # again).
        if seg is not None and type(value) is bytes and key is None and headers is None \
                and timestamp_ms is None:
            tlock = lock._tlock
            tlock.acquire()
            # (under P's thread lock: another thread of ours may have appended, rolled or
            # let the lock go since the look above; W, the room and the index position
            # are read only now)
            word = seg.seen
            pos = word & 0xFFFFFFFF
            n = len(value) + _ONE_SIZE
            end = pos + n
            if lock._hot is not seg or lock._depth or end > self._hot_end or \
                    now >= self._hot_deadline:
                tlock.release()  # the general way
            else:
                try:
                    first = seg.base + (word >> 32)
                    # the 44 bytes after the prefix change with the millisecond and
                    # the value's length only: packed (and their CRC) once for a run,
                    # with the Struct that writes the whole batch in one pack_into
                    if now != self._head_ts or n != self._head_n:
                        head = _one_pack(1, _BATCH_VERSION, 0, 0, now, now, now, -1,
                                         n - _ONE_SIZE, 0)
                        self._head, self._head_crc = head, _crc32(head)
                        if n != self._head_n:
                            into = self._one_intos.get(n)
                            if into is None:
                                into = self._one_into_for(n)
                            self._one_into = into
                        self._head_ts, self._head_n = now, n
                    # A5: prefix, head and value straight into the mapping (never None
                    # while lock._hot is seg)
                    self._one_into(seg.mm, pos, _crc32(value, self._head_crc), n, first,
                                   self._head, value)
                    if pos >= self._hot_index_at:  # A5: the index entries due, as the
                        self._index(seg, word >> 32, pos)  # general way (W == seen: no
                        self._hot_index_at = pos + self._hot_interval  # catch-up, A3b)
                    seg.seen = word = word + _ONE_STEP + n
                    seg._w[0] = word  # type: ignore[index]  # A6: acknowledged
                    if now > seg.max_ts:
                        seg.max_ts = now
                    u32 = self._u32
                    u32[_I_NOTIFY] = (u32[_I_NOTIFY] + 1) & 0xFFFFFFFF
                    # A7 under L: waiters word (after N), bells and the lock's wanted
                    # word (one u64), the lock's ready word: all zero, nothing to do.
                    # Only "wanted" (others sleep for the lock): nothing either until
                    # our turn's time (H3; the KV's hot paths test it inline too)
                    rare = u32[_I_WAITERS] or self._u64[_I_BELLS2] or u32[_I_READY]
                    if rare:
                        if u32[_I_WAITERS] or u32[_I_BELLS] or u32[_I_READY] or \
                                _monotonic() >= lock._turn_at:
                            rare = self._lean_rare(lock)
                        else:
                            rare = 0
                finally:
                    lock._pos += 1  # (the lock's release: the flock stays, H2)
                    tlock.release()
                self._appended += 1
                if rare:  # (A7 after L, inline: a sleeping reader waits for every step)
                    if rare & 1 and (self._wake or self._make_wake())(WAKE_ALL):
                        os.sched_yield()  # A7: a follower woken on this CPU runs now
                    if rare & 2:
                        self._ring_bells()
                if self._sync_every is not None:
                    self._sync_due()
                return first
        if type(value) is not bytes:
            value = _as_bytes(value, "value")
        if key is not None and type(key) is not bytes:
            key = _as_bytes(key, "key")
        ts = now if timestamp_ms is None else int(timestamp_ms)
        if headers:
            tail, crc, _, _, _ = F.encode_batch_tail(((ts, key, value,
                                                       _norm_headers(headers)),))
        else:
            tail, crc = F.encode_one_tail(ts, key, value)
        return self._append_tail(tail, crc, 1, ts, now)

    def append_many(self, records: Iterable[Any]) -> int:
        """Append several records as one batch (all or nothing); returns the first offset.

        Each item is a value (bytes) or a mapping/tuple ``(value, key, headers,
        timestamp_ms)`` with the later fields optional, or a dict with those keys."""
        now = _time_ns() // 1_000_000
        if type(records) is list and records and set(map(type, records)) == _ONLY_BYTES:
            tail, crc = F.encode_values_tail(now, records)  # plain values: one pass
            return self._append_tail(tail, crc, len(records), now, now)
        items: list[tuple[int, bytes | None, bytes, Any]] = []
        add = items.append
        for rec in records:
            if type(rec) is bytes:
                add((now, None, rec, None))
                continue
            if isinstance(rec, (bytearray, memoryview)):
                add((now, None, bytes(rec), None))
                continue
            if isinstance(rec, Mapping):
                value, key = rec.get("value"), rec.get("key")
                headers, ts = rec.get("headers"), rec.get("timestamp_ms")
            else:
                t = tuple(rec) + (None,) * 3
                value, key, headers, ts = t[0], t[1], t[2], t[3]
            add((now if ts is None else int(ts),
                 None if key is None else _as_bytes(key, "key"),
                 _as_bytes(value, "value"), _norm_headers(headers)))
        if not items:
            raise ValueError("append_many() needs at least one record")
        tail, crc, count, _, max_ts = F.encode_batch_tail(items)
        return self._append_tail(tail, crc, count, max_ts, now)

    def _append_tail(self, tail: bytes, crc: int, count: int, max_ts: int, now: int) -> int:
        """A2-A8 for one encoded batch (``tail``: the batch from byte 16, see
        _format.encode_batch_tail); returns its first offset."""
        if self._closed:
            raise ClosedError("the journal is closed; open it again")
        self._lock._hot = None  # (set again when this append ends with the flock kept)
        done = False
        meta = self._meta
        u64 = meta.u64
        n = len(tail) + _CRC_FROM
        seg_bytes = u64[_I_SEGMENT_BYTES]
        if n > seg_bytes - F.SEGMENT_HEADER:
            raise MessageTooLargeError(
                f"a batch of {n} bytes cannot fit a segment of {seg_bytes} bytes; "
                "raise segment_bytes or append fewer records at a time")
        lock = self._lock
        # the writer lock's acquire, inlined: this thread's turn; the flock is still ours
        # from the last append (H2), else take it (L1-L4)
        lock._tlock.acquire()
        if lock._depth or not lock._held:
            lock._tlock.release()
            lock.acquire()
        else:
            lock._depth = 1
        try:
            seg = self._active
            if seg is None or seg.base != u64[_I_ACTIVE]:
                seg = self._attach()  # A2, A3
            w = seg._w  # (the slot behind seg.w: no property call on the hot path)
            assert w is not None
            word = w[0]
            # another writer appended since we last did (W moved): what it added to the
            # indexes and timestamps is learned only when this writer next indexes (A3b)
            learned = word == seg.seen
            rel, pos = word >> 32, word & 0xFFFFFFFF
            if rel and (pos + n > seg_bytes or rel + count > _MAX_RECORDS or
                        now - seg.created_ms >= u64[_I_SEGMENT_MS]):
                seg = self._roll(seg, rel)  # A4
                w = seg.w
                word = w[0]
                learned = word == seg.seen
                rel, pos = word >> 32, word & 0xFFFFFFFF
            first = seg.base + rel
            self._store(seg, pos, n, crc, first, tail, seg_bytes)  # A5
            if pos - (seg.last_indexed or _SEGMENT_HEADER) >= meta.u32[_I_INTERVAL]:
                if not learned:  # A3b: the others' index entries first
                    self._catch_up(seg, word)
                    learned = True
                if pos - (seg.last_indexed or _SEGMENT_HEADER) >= meta.u32[_I_INTERVAL]:
                    self._index(seg, rel, pos)
            if PAUSES:
                pause("journal.append.written")
            word = ((rel + count) << 32) | (pos + n)
            w[0] = word  # A6: acknowledged
            if learned:
                seg.seen = word
            if max_ts > seg.max_ts:
                seg.max_ts = max_ts
            u32 = meta.u32
            u32[_I_NOTIFY] = (u32[_I_NOTIFY] + 1) & 0xFFFFFFFF
            if u32[_I_WAITERS]:  # A7 (the wake itself after the lock is released)
                u32[_I_WAITERS] = 0
                wake = True
            else:
                wake = False
            bells = u32[_I_BELLS]  # A7: read under L, so a bell registered (B1) before
            done = True            # this publish is rung, one registered after sees W
        finally:
            if lock._depth == 1:  # the lock's release, inlined as its acquire above:
                lock._depth = 0   # keep the flock (H2) unless holding is off or someone
                lock._pos += 1    # waits for it (H3)
                words = lock._waitw
                if (words[1] or words[3] or not lock._hold) and (
                        not lock._hold or words[3] == _LOCK_READY
                        or _monotonic() >= lock._turn_at):
                    lock._end_hold()  # no hold, a woken waiter is READY, or H3 is due
                if done and not PAUSES and seg is not None:
                    self._make_hot(seg)  # (under P's thread lock: no release meanwhile)
                lock._tlock.release()
            else:
                lock.release()
        self._appended += count
        if PAUSES:
            pause("journal.append.published")
        if wake and (self._wake or self._make_wake())(WAKE_ALL):
            os.sched_yield()  # A7: a follower woken on this CPU runs now
        if bells:
            self._ring_bells()
        if self._sync_every is not None:
            self._sync_due()
        return first

    def _one_into_for(self, n: int) -> Callable[..., None]:
        """pack_into for the lean append's batch of ``n`` bytes (kept for the 64 lengths
        seen last: values of many lengths build a Struct per new length)."""
        if len(self._one_intos) >= 64:
            self._one_intos.clear()
        into = self._one_intos[n] = _one_struct(n - _ONE_SIZE).pack_into
        return into

    def _lean_rare(self, lock: _WriterLock) -> int:
        """The lean append's A7 and H3 steps when a word asked for something (under L and
        P's thread lock): clear the waiters word, read the bells; someone waits for the
        writer lock: H3.  Returns 1 | 2: a futex wake, doorbells to ring (after L)."""
        u32 = self._u32
        todo = 0
        if u32[_I_WAITERS]:
            u32[_I_WAITERS] = 0
            todo = 1
        if u32[_I_BELLS]:
            todo |= 2
        words = lock._waitw
        if (words[1] or words[3]) and (words[3] == _LOCK_READY or
                                       _monotonic() >= lock._turn_at):
            lock._end_hold()  # H3/H3b (clears lock._hot when it lets go)
        return todo

    def _sync_due(self) -> None:
        """A8: sync when the policy says so."""
        every = self._sync_every
        if every is not None and (every == 0.0 or time.monotonic() - self._last_sync
                                  >= every):
            self.sync()

    def _make_hot(self, seg: ActiveSegment) -> None:
        """After a general append that kept the flock (H2): what the lean path of
        ``append`` needs to know, fixed while the flock stays held (no other writer can
        append, roll or change a setting until then; letting the flock go, or a fork,
        clears ``lock._hot``)."""
        lock = self._lock
        if not lock._held or seg.mm is None or seg is not self._active or seg._w is None \
                or seg.seen != seg._w[0]:
            lock._hot = None  # (seen != W: others appended, not yet learned, A3b)
            return
        u64 = self._meta.u64
        self._hot_interval = self._meta.u32[_I_INTERVAL]
        self._hot_index_at = (seg.last_indexed or _SEGMENT_HEADER) + self._hot_interval
        self._hot_end = min(seg.alloc, u64[_I_SEGMENT_BYTES])
        self._hot_deadline = seg.created_ms + u64[_I_SEGMENT_MS]
        lock._hot = seg

    def _store(self, seg: ActiveSegment, pos: int, n: int, crc: int, first: int,
               tail: bytes, seg_bytes: int) -> None:
        """A5: the batch into the segment at ``pos`` (past W, invisible until A6):
        through the writer's mapping of allocated bytes, or with pwrite where the file
        system cannot allocate ahead.  A full disk is DiskFullError, nothing stored."""
        try:
            grow = pos + n > seg.alloc
            # (no prefault thread for a writer that syncs: see segment.py)
            if seg.reserve(pos, pos + n, seg_bytes, self._sync_every is None):
                if grow and PAUSES:
                    pause("journal.append.grown")
                mm = seg.mm
                assert mm is not None
                _prefix_into(mm, pos, crc, n, first)
                mm[pos + 16 : pos + n] = tail
                return
            data = _prefix(crc, n, first) + tail
            done = os.pwrite(seg.fd, data, pos)
        except OSError as exc:
            raise_if_disk_full(exc, self._full_message())
            raise
        if done != n:
            self._write(seg, memoryview(data)[done:], pos + done)

    def _full_message(self) -> str:
        return (f"no space left on the journal's file system ({self._dir}); nothing "
                "acknowledged was lost: free space (or lower retention) and append again")

    def _get_waiter(self) -> Waiter:
        if self._waiter is None:
            self._waiter = Waiter(self._meta.region, F.OFF_NOTIFY,
                                  doorbell=None if _platform.HAVE_FUTEX
                                  else os.path.join(self._dir, "journal.bell"))
        return self._waiter

    def _make_wake(self) -> Callable[[int], int]:
        self._wake = wake = self._get_waiter().waker
        return wake

    def _ring_bells(self) -> None:
        """A7: one byte into each registered reader's doorbell FIFO (``Reader.fileno()``).
        A full FIFO is ringing already; a FIFO nobody reads any more (its reader was
        killed) is remembered as dead (-1) until its slot is freed or reused."""
        fds = self._bell_fds
        live = [v for v in self._meta.u64[_I_BELL0 : _I_BELL0 + F.BELL_SLOTS].tolist() if v]
        for v in live:
            fd = fds.get(v)
            if fd is None:
                try:
                    fd = os.open(os.path.join(self._dir, F.bell_name(v)),
                                 os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError:  # ENXIO: nobody has it open; ENOENT: reaped
                    fd = -1
                fds[v] = fd
            if fd < 0:
                continue
            try:
                os.write(fd, b"\1")
            except BlockingIOError:
                pass
            except OSError:  # EPIPE: its reader is gone
                os.close(fd)
                fds[v] = -1
        if len(fds) > len(live):
            for v in set(fds) - set(live):
                fd = fds.pop(v)
                if fd >= 0:
                    os.close(fd)

    def _register_bell(self, slot: int) -> None:
        """B1 (under L): put a reader's doorbell in a free slot of the meta page, first
        freeing the slots of readers whose process is gone (and unlinking their FIFOs)."""
        meta = self._check_open()
        u64 = meta.u64
        self._lock.acquire()
        try:
            free = -1
            for i in range(F.BELL_SLOTS):
                v = int(u64[_I_BELL0 + i])
                if v and (not _platform.pid_alive(v >> 32) or not os.path.exists(
                        os.path.join(self._dir, F.bell_name(v)))):
                    u64[_I_BELL0 + i] = 0
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self._dir, F.bell_name(v)))
                    v = 0
                if not v and free < 0:
                    free = i
            if free < 0:
                raise OSError(
                    errno.EMFILE, f"{self._dir}: all {F.BELL_SLOTS} reader doorbells are in "
                    "use by live readers; close readers you no longer select on, or use "
                    "Reader.wait() / poll(timeout=...) instead of fileno()")
            u64[_I_BELL0 + free] = slot  # the slot first, then the count the writers read
            if PAUSES:
                pause("journal.bell.slot")
            _recount_bells(meta)
        finally:
            self._lock.release(keep=False)  # a reader's process never holds L (B1)

    def _unregister_bell(self, slot: int) -> None:
        """B3 (under L): free a reader's doorbell slot (if it is still its own)."""
        if self._closed:
            return  # the next registration frees it (its FIFO is gone)
        meta = self._meta
        u64 = meta.u64
        self._lock.acquire()
        try:
            for i in range(F.BELL_SLOTS):
                if int(u64[_I_BELL0 + i]) == slot:
                    u64[_I_BELL0 + i] = 0
            _recount_bells(meta)
        finally:
            self._lock.release(keep=False)  # (B3, as B1)

    def _write(self, seg: ActiveSegment, data: bytes | bytearray | memoryview, pos: int) -> None:
        try:
            write_all(seg.fd, data, pos)
        except OSError as exc:
            raise_if_disk_full(exc, self._full_message())
            raise

    def _index(self, seg: ActiveSegment, rel: int, pos: int) -> None:
        idx, tidx = seg.idx, seg.tidx
        if idx is not None and idx.trusted and seg.idx_n < idx.slots:
            idx.set_entry(seg.idx_n, rel, pos)
            seg.idx_n += 1
        if tidx is not None and tidx.trusted and seg.tidx_n < tidx.slots and \
                seg.max_ts > -(1 << 63):
            tidx.set_entry(seg.tidx_n, seg.max_ts, rel + 1)
            seg.tidx_n += 1
        seg.last_indexed = pos

    def _attach(self) -> ActiveSegment:
        """A2/A3 (under L): the writer's side of the segment A names."""
        self._lock._hot = None
        active = self._meta.get(F.OFF_ACTIVE)
        seg = self._active
        if seg is not None and seg.base == active:
            return seg
        if seg is not None:
            seg.close()
            self._active = None
        path = os.path.join(self._dir, F.segment_name(active))
        seg = ActiveSegment(path, active)
        try:
            self._prepare(seg)
        except BaseException:
            seg.close()
            raise
        self._active = seg
        return seg

    def _prepare(self, seg: ActiveSegment) -> None:
        """A3: check W against the file, find the index tails, clear slots past W, and
        learn the newest timestamp and the last indexed position (scanning at most the
        batches after the last index entry)."""
        rel, pos = seg.commit()
        size = os.fstat(seg.fd).st_size
        if not F.SEGMENT_HEADER <= pos <= size or (pos == F.SEGMENT_HEADER) != (rel == 0):
            raise CorruptFileError(
                f"{seg.path}: its commit word ({rel} records, {pos} bytes) does not fit the "
                f"file ({size} bytes); the segment was damaged or cut; run "
                "Journal.check() and restore it", path=seg.path, offset=seg.base + rel)
        seg.open_indexes()
        assert seg.idx is not None and seg.tidx is not None
        if not seg.idx.trusted or not seg.tidx.trusted or not self._index_tail_ok(seg, rel, pos):
            self._rebuild_indexes(seg, rel, pos)
        self._resync(seg, rel, pos)

    def _resync(self, seg: ActiveSegment, rel: int, pos: int) -> None:
        """Learn the index tails, the newest timestamp and the last indexed position as
        published now (another writer may have appended since this one did), and clear
        index slots past W (left by a writer killed between A5 and A6)."""
        assert seg.idx is not None and seg.tidx is not None
        seg.idx_n = seg.idx.count(rel, pos)
        seg.tidx_n = seg.tidx.count(rel, pos)
        seg.idx.clear_from(seg.idx_n)
        seg.tidx.clear_from(seg.tidx_n)
        start, start_rel = F.SEGMENT_HEADER, 0
        seg.last_indexed = 0
        if seg.idx_n:
            start_rel, start = seg.idx.entry(seg.idx_n - 1)
            seg.last_indexed = start
        seg.max_ts = -(1 << 63)
        if seg.tidx_n:
            seg.max_ts = seg.tidx.entry(seg.tidx_n - 1)[0]
        if start < pos:
            with _ReadMap(seg.fd, pos) as view:
                p = start
                while p < pos:
                    try:
                        info = F.read_batch_header(view, p, pos, verify=False)
                    except F.BatchError as exc:
                        raise CorruptFileError(
                            f"{seg.path}: {exc}; run Journal.check()", path=seg.path,
                            offset=seg.base + start_rel) from None
                    seg.max_ts = max(seg.max_ts, info.max_timestamp)
                    p += info.length
        seg.seen = (rel << 32) | pos

    def _catch_up(self, seg: ActiveSegment, word: int) -> None:
        """Under L, W moved since this writer last saw it (another writer appended): learn
        what the others added -- index tails and the newest timestamp -- from the batches
        after the W we saw, not from the last index entry (_resync does that when our W
        is not a prefix of this one, or the catch-up would read much)."""
        seen = seg.seen
        rel, pos = word >> 32, word & 0xFFFFFFFF
        idx, tidx = seg.idx, seg.tidx
        start = seen & 0xFFFFFFFF
        if seen < 0 or start > pos or (seen >> 32) > rel or idx is None or tidx is None or \
                not idx.trusted or not tidx.trusted or pos - start > _CATCH_UP_MAX:
            self._resync(seg, rel, pos)
            return
        # (the entries are a prefix of the slots, increasing: a binary search, not a walk
        # over every entry the others wrote)
        n = max(seg.idx_n, idx.count(rel, pos))
        if n != seg.idx_n:
            seg.idx_n = n
            seg.last_indexed = idx.entry(n - 1)[1]
        idx.clear_from(n)  # a slot left by a writer killed between A5 and A6
        n = max(seg.tidx_n, tidx.count(rel, pos))
        seg.tidx_n = n
        tidx.clear_from(n)
        if seg.idx_n and n:
            # The others' last entry is past the W we saw: it says the newest timestamp
            # before its batch (a writer catches up before it indexes, A3b), so only the
            # batches from it on are read -- one index interval, not every batch the
            # others appended during their turns (2 ms turns of 4 writers: thousands,
            # milliseconds under L at each hand-over)
            erel, epos = idx.entry(seg.idx_n - 1)
            ts, trel = tidx.entry(n - 1)
            if epos > start and trel == erel + 1:
                start = epos
                if ts > seg.max_ts:
                    seg.max_ts = ts
        data = os.pread(seg.fd, pos - start, start)
        p, end = 0, len(data)
        try:
            while p < end:
                info = F.read_batch_header(data, p, end, verify=False)
                if info.max_timestamp > seg.max_ts:
                    seg.max_ts = info.max_timestamp
                p += info.length
        except F.BatchError:
            self._resync(seg, rel, pos)  # says what is wrong
            return
        seg.seen = word

    def _index_tail_ok(self, seg: ActiveSegment, rel: int, pos: int) -> bool:
        assert seg.idx is not None
        n = seg.idx.count(rel, pos)
        if not n:
            return True
        erel, epos = seg.idx.entry(n - 1)
        with _ReadMap(seg.fd, pos) as view:
            try:
                info = F.read_batch_header(view, epos, pos, verify=False)
            except F.BatchError:
                return False
        return bool(info.first_offset == seg.base + erel)

    def _rebuild_indexes(self, seg: ActiveSegment, rel: int, pos: int) -> None:
        _rebuild_indexes(self._meta, seg.path, seg.base, pos)
        for ix in (seg.idx, seg.tidx):
            if ix is not None:
                ix.close()
        seg.open_indexes()

    def _repair_indexes(self, base: int) -> None:
        """Rebuild a sealed segment's indexes that a lookup found untrustworthy (under L;
        the reader that noticed maps the new files on its next lookup)."""
        with self._lock:
            if base >= self._meta.get(F.OFF_ACTIVE):
                return  # the writer of the active segment repairs its own (A3)
            seg = Segment.open(self._dir, base)
            if seg is None:
                return
            try:
                rel, pos = seg.commit()
                if not seg.cover(pos):
                    pos = len(seg.view)
                idx, tidx = seg.indexes()
                if idx.trusted and tidx.trusted and all(
                        seg.locate(base + idx.entry(i)[0], rel, pos)[2]
                        for i in range(idx.count(rel, pos))):
                    return  # every entry matches: someone rebuilt it already
            finally:
                seg.close()
            _rebuild_indexes(self._meta, os.path.join(self._dir, F.segment_name(base)),
                             base, pos)
    def _roll(self, seg: ActiveSegment, rel: int) -> ActiveSegment:
        """R1-R4 (under L)."""
        meta = self._meta
        new_base = seg.base + rel
        for b in list_segments(self._dir):  # R1: orphans of a roll killed before R3
            if b > seg.base:
                _unlink_segment(self._dir, b)
        seg_bytes, _, _, _, interval, _ = self._settings()
        try:
            ActiveSegment.create(self._dir, new_base, _now_ms(),
                                 _index_slots(seg_bytes, interval))  # R2
        except OSError as exc:
            _unlink_segment(self._dir, new_base)
            raise_if_disk_full(exc, f"no space left to start a new segment in {self._dir}; "
                               "nothing acknowledged was lost")
            raise
        if self._sync_every is not None:
            fsync_dir(self._dir)
        if PAUSES:
            pause("journal.roll.created")
        meta.set(F.OFF_ACTIVE, new_base)  # R3
        meta.bump()
        seg = self._attach()
        with contextlib.suppress(OSError):
            self._retain_locked()  # R4 (best effort: the roll itself is done)
        return seg

    def sync(self) -> None:
        """Make every record published so far survive power loss.  Only what changed since
        the recovery point is flushed: nothing when no record was published since the last
        sync (by any process); the active segment alone while no roll happened; after a
        roll, each segment from the recovery point on and the directory.  The meta page is
        flushed when A or S moved since this handle last flushed it (the recovery word
        alone need not be durable: an older one only makes recovery verify more)."""
        meta = self._check_open()
        active = meta.get(F.OFF_ACTIVE)
        seg = self._segment_for_tail(active)
        rel, pos = seg.commit()
        rp_base, rp_word = meta.get(F.OFF_RECOVERY), meta.get(F.OFF_RECOVERY + 8)
        if (active, pos) > (rp_base, rp_word & 0xFFFFFFFF):
            if rp_base == active:
                os.fdatasync(seg.fileno())  # the one segment written since the last sync
            else:
                for b in list_segments(self._dir):
                    if rp_base <= b <= active:
                        with contextlib.suppress(FileNotFoundError):
                            fd = os.open(os.path.join(self._dir, F.segment_name(b)),
                                         os.O_RDONLY | os.O_CLOEXEC)
                            try:
                                os.fdatasync(fd)
                            finally:
                                os.close(fd)
                fsync_dir(self._dir)  # the new segments' names
            with self._lock:
                old_base, old_word = meta.get(F.OFF_RECOVERY), meta.get(F.OFF_RECOVERY + 8)
                if (active, pos) > (old_base, old_word & 0xFFFFFFFF):
                    meta.set(F.OFF_RECOVERY + 8, F.pack_commit(rel, pos))
                    meta.set(F.OFF_RECOVERY, active)
        shape = (active, meta.get(F.OFF_START))
        if shape != self._synced_shape:
            meta.region.sync(0, F.META_SIZE)
            self._synced_shape = shape
        self._last_sync = time.monotonic()

    # --- retention ----------------------------------------------------------------------

    def retain(self) -> list[int]:
        """Apply retention now: delete whole sealed segments, oldest first, whose newest
        record is older than retention_ms, and while the journal exceeds retention_bytes.
        Returns the base offsets deleted.  The segment being written is never deleted."""
        self._check_open()
        with self._lock:
            return self._retain_locked()

    def _retain_locked(self) -> list[int]:
        meta = self._meta
        _, _, retention_ms, retention_bytes, _, delay = self._settings()
        active = meta.get(F.OFF_ACTIVE)
        start = meta.get(F.OFF_START)
        bases = [b for b in list_segments(self._dir) if b <= active]
        doomed = [b for b in bases if b < start]  # left by a retention killed in D3
        live = [b for b in bases if b >= start]
        sizes = {b: _size(self._dir, b) for b in live}
        total = sum(sizes.values())
        now = _now_ms()
        picked: list[int] = []
        for b in live[:-1]:
            too_big = retention_bytes >= 0 and total > retention_bytes
            too_old = False
            if not too_big and retention_ms >= 0:
                newest = self._newest_timestamp(b)
                too_old = newest is not None and now - newest > retention_ms
            if not (too_big or too_old):
                break
            picked.append(b)
            total -= sizes[b]
        if picked:
            new_start = live[len(picked)]
            meta.set(F.OFF_START, new_start)  # D2
            meta.bump()
            if PAUSES:
                pause("journal.retain.started")
        for b in doomed + picked:  # D3
            stem = os.path.join(self._dir, F.segment_name(b))
            for p in (stem, *index_paths(stem)):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(p, p + ".deleted")
        cutoff = time.time() - delay / 1000.0
        for name in os.listdir(self._dir):
            if name.endswith(".deleted"):
                p = os.path.join(self._dir, name)
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(p).st_ctime <= cutoff:
                        os.unlink(p)
        return picked

    def _newest_timestamp(self, base: int) -> int | None:
        seg = Segment.open(self._dir, base)
        if seg is None:
            return None
        try:
            rel, pos = seg.commit()
            if not seg.cover(pos):
                return None
            p, _, _ = seg.locate_time(1 << 62, rel, pos)
            newest = None
            _, tidx = seg.indexes()
            n = tidx.count(rel, pos)
            if n:
                newest = tidx.entry(n - 1)[0]
            try:
                for _, info in seg.batches(p, pos):
                    if newest is None or info.max_timestamp > newest:
                        newest = info.max_timestamp
            except F.BatchError:
                pass
            return newest
        finally:
            seg.close()

    # --- positions ----------------------------------------------------------------------

    def _segment_for_tail(self, active: int) -> Segment:
        seg = self._tail
        if seg is not None and seg.base == active:
            return seg
        if seg is not None:
            seg.close()
            self._tail = None
        fresh = Segment.open(self._dir, active)
        if fresh is None:
            raise CorruptFileError(f"{self._dir}: the active segment {active} is missing",
                                   path=self._dir, offset=active)
        self._tail = fresh
        return fresh

    @property
    def start_offset(self) -> int:
        """The oldest offset still kept (retention moves it forward)."""
        return self._check_open().get(F.OFF_START)

    @property
    def end_offset(self) -> int:
        """The offset the next record will get (one past the newest published record)."""
        meta = self._check_open()
        while True:
            active = meta.get(F.OFF_ACTIVE)
            seg = self._segment_for_tail(active)
            rel, _ = seg.commit()
            if meta.get(F.OFF_ACTIVE) == active:
                return active + rel

    def offset_for_time(self, timestamp_ms: int) -> int | None:
        """The first offset whose record has a timestamp >= ``timestamp_ms`` (None when
        every record is older), found through the time indexes."""
        meta = self._check_open()
        start, active = meta.get(F.OFF_START), meta.get(F.OFF_ACTIVE)
        for b in list_segments(self._dir):
            if not start <= b <= active and not (b < start < b + 1):
                continue
            newest = self._newest_timestamp(b)
            if newest is None or newest < timestamp_ms:
                continue
            seg = Segment.open(self._dir, b)
            if seg is None:
                continue
            try:
                rel, pos = seg.commit()
                seg.cover(pos)
                p, _, _ = seg.locate_time(timestamp_ms, rel, pos)
                try:
                    for bp, info in seg.batches(p, pos):
                        if info.max_timestamp < timestamp_ms:
                            continue
                        for r in F.decode_batch(seg.view, bp, info):
                            if r.timestamp_ms >= timestamp_ms and r.offset >= start:
                                return r.offset
                except F.BatchError:
                    continue
            finally:
                seg.close()
        return None

    # --- reading ------------------------------------------------------------------------

    def reader(self, from_offset: str | int = "earliest", *, follow: bool = False,
               timeout: float | None = None) -> Reader:
        """Iterate records from ``from_offset`` ("earliest", "latest" or an offset).
        ``follow=True`` tails: iteration waits for new records (up to ``timeout`` seconds
        of silence, None = forever)."""
        from .reader import Reader
        self._check_open()
        return Reader(self, from_offset, follow=follow, timeout=timeout)

    def consumer(self, name: str, *, reset: str = "earliest") -> Consumer:
        """A named consumer whose committed position survives restarts."""
        from .consumer import Consumer
        self._check_open()
        return Consumer(self, name, reset=reset)

    def serve(self, address: str | tuple[str, int], *, io_timeout: float = 10.0,
              idle_timeout: float | None = 600.0) -> JournalServer:
        """Serve this journal to ``RemoteReader`` clients (TCP ``"host:port"`` or a Unix
        socket path) from background threads; close the returned server to stop."""
        from .remote import serve
        self._check_open()
        return serve(self, address, io_timeout=io_timeout, idle_timeout=idle_timeout)

    def _offsets(self) -> KV:
        with self._kv_lock:
            if self._kv is None:
                from ..kv import KV
                self._kv = KV(os.path.join(self._dir, OFFSETS_NAME), multiprocess=True)
            return self._kv

    def consumer_offsets(self) -> dict[str, int]:
        """Every named consumer's committed position (the next offset it reads)."""
        self._check_open()
        if self._kv is None and not os.path.exists(os.path.join(self._dir, OFFSETS_NAME)):
            return {}
        kv = self._offsets()
        return {k[len("consumer/"):]: int(v) for k, v in list(kv.items())
                if k.startswith("consumer/")}

    # --- reports ------------------------------------------------------------------------

    def statistics(self) -> JournalStatistics:
        meta = self._check_open()
        seg_bytes, seg_ms, ret_ms, ret_bytes, _, _ = self._settings()
        start, end = self.start_offset, self.end_offset
        bases = [b for b in list_segments(self._dir)
                 if start <= b <= meta.get(F.OFF_ACTIVE) or b == start]
        return JournalStatistics(
            start_offset=start, end_offset=end, records=end - start, segments=len(bases),
            bytes=sum(_size(self._dir, b) for b in bases),
            active_base=meta.get(F.OFF_ACTIVE), segment_bytes=seg_bytes, segment_ms=seg_ms,
            retention_ms=None if ret_ms < 0 else ret_ms,
            retention_bytes=None if ret_bytes < 0 else ret_bytes,
            appended=self._appended, recovered=self._recovery is not None)

    @property
    def recovery(self) -> RecoveryReport | None:
        """What power-loss recovery cut when this handle opened (None: nothing ran)."""
        return self._recovery

    @classmethod
    def check(cls, path: str | os.PathLike[str]) -> CheckReport:
        """Verify every batch, the offsets across segments and the indexes; report what
        is wrong.  Changes nothing (files are opened read-only)."""
        from .check import check_journal
        return check_journal(os.path.abspath(os.fspath(path)))

    # --- power loss ---------------------------------------------------------------------

    def _recover_power_loss(self) -> RecoveryReport | None:
        """P1 (under L): the machine rebooted since the last writer stamped the meta page,
        so bytes after the last sync may be missing or scrambled: verify from the recovery
        point and cut at the first bad batch."""
        meta = self._meta
        rp_base, rp_word = meta.get(F.OFF_RECOVERY), meta.get(F.OFF_RECOVERY + 8)
        active = meta.get(F.OFF_ACTIVE)
        bases = [b for b in list_segments(self._dir) if b >= rp_base]
        cut_records = cut_bytes = 0
        removed: list[int] = []
        reason = ""
        keep_base = rp_base
        expected_base = rp_base
        for i, b in enumerate(bases):
            if b > active or b != expected_base or reason:
                if b <= active and not reason:
                    reason = f"segment {b} does not follow segment {keep_base}"
                if b <= active:
                    cut_bytes += _size(self._dir, b)
                    removed.append(b)
                _unlink_segment(self._dir, b)
                continue
            path = os.path.join(self._dir, F.segment_name(b))
            try:
                seg = ActiveSegment(path, b)
            except (CorruptFileError, ForeignFileError, FormatVersionError, OSError) as exc:
                reason = f"segment {b}: {exc}"
                if i == 0:
                    raise
                removed.append(b)
                _unlink_segment(self._dir, b)
                continue
            try:
                rel, pos = seg.commit()
                size = os.fstat(seg.fd).st_size
                start_pos, start_rel = F.SEGMENT_HEADER, 0
                if b == rp_base:
                    r0, p0 = F.unpack_commit(rp_word)
                    if F.SEGMENT_HEADER <= p0 <= min(pos, size):
                        start_rel, start_pos = r0, p0
                limit = min(pos, size)
                good_pos, nxt, problem = _check_file(seg.fd, start_pos, limit, b + start_rel)
                good_rel = nxt - b
                if problem is not None:
                    reason = f"segment {b}: {problem}"
                elif good_pos < pos:
                    reason = f"segment {b}: its data ends at {limit}, before W at {pos}"
                if (good_rel, good_pos) != (rel, pos):
                    cut_records += rel - good_rel
                    cut_bytes += pos - good_pos
                    seg.publish(good_rel, good_pos)
                    os.fdatasync(seg.fd)
                keep_base = b
                expected_base = b + good_rel
            finally:
                seg.close()
        if keep_base != active:
            meta.set(F.OFF_ACTIVE, keep_base)
        if not reason and not cut_records:
            return None
        report = RecoveryReport(kept_end_offset=expected_base, cut_records=cut_records,
                                cut_bytes=cut_bytes, removed_segments=tuple(removed),
                                reason=reason or "records past the end of the data")
        warnings.warn(JournalRecoveryWarning(
            f"{self._dir}: recovered after a power loss: kept offsets up to "
            f"{expected_base}, cut {cut_records} unsynced record(s) ({cut_bytes} bytes): "
            f"{report.reason}"), stacklevel=3)
        return report

    # --- life cycle ---------------------------------------------------------------------

    def close(self) -> None:
        if self._closed and not hasattr(self, "_meta"):
            return
        self._closed = True
        if hasattr(self, "_lock"):
            self._lock._hot = None
        for seg in (self._active, self._tail):
            if seg is not None:
                seg.close()
        self._active = self._tail = None
        for fd in getattr(self, "_bell_fds", {}).values():
            if fd >= 0:
                os.close(fd)
        self._bell_fds = {}
        if getattr(self, "_waiter", None) is not None:
            assert self._waiter is not None
            self._waiter.close()
            self._waiter = self._wake = None
        if getattr(self, "_kv", None) is not None:
            assert self._kv is not None
            self._kv.close()
            self._kv = None
        if hasattr(self, "_lock"):
            self._lock.close()
        if hasattr(self, "_meta"):
            self._meta.close()
            del self._meta

    def __enter__(self) -> Journal:
        self._check_open()
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<mmapkit.Journal {self._dir!r}{' closed' if self._closed else ''}>"


class _WriterLock(WriterLock):
    """L: an exclusive flock on journal.meta, re-entrant per thread, excluding this
    process's other threads (an RLock in front), and *held* between appends (steps H1-H4
    of the module table) with the KV's protocol: ``kv._writelock.WriterLock``, whose
    words here are the meta page's lock words (OFF_LOCK_WANT / SEQ / READY).  A fork
    child gets a descriptor of its own at once (``_after_fork``): flock belongs to the
    open file description, which the child would otherwise share with its parent.  (So
    the mixin's own fork path, ``_take_own_lock``/``_own_after_fork``, is the KV's and is
    never taken here: this lock enters through ``_acquire_flock`` only.)"""

    __slots__ = ("__weakref__", "_depth", "_fd", "_finalizer", "_handed", "_held",
                 "_hold", "_hold_evt", "_hot", "_lock_timeout", "_lock_waiter", "_path",
                 "_pos", "_readonly", "_region", "_tlock", "_turn_at", "_waitw",
                 "_want_waiter")
    _WANT_AT = F.OFF_LOCK_WANT
    _SEQ_AT = F.OFF_LOCK_SEQ
    _KIND = "journal"

    def __init__(self, path: str, region: Region, hold: float) -> None:
        self._path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._tlock = threading.RLock()
        self._depth = 0
        self._held = False  # this handle's process holds the flock (maybe between appends)
        self._hold = hold
        self._hold_evt = None
        self._pos = 0  # bumped by every release: the releaser's "idle for a hold" test
        # the journal's lean append state: the segment it appends to while this lock is
        # held without a break (cleared whenever the flock is let go, and in a fork child)
        self._hot: ActiveSegment | None = None
        self._region = region
        # u32 words from OFF_BELLS: [1] wanted, [2] hand-overs, [3] waiter ready ([0],
        # the bells count, is not the lock's)
        self._waitw = region.view[F.OFF_BELLS : F.OFF_LOCK_READY + 4].cast("I")
        self._lock_waiter = None
        self._want_waiter = None
        self._lock_timeout = float("inf")  # appends wait as long as it takes (as before)
        self._handed = False
        self._turn_at = 0.0
        self._readonly = False
        # A handle dropped unclosed (its releaser thread may have let go of it already)
        # must not keep a held flock for the rest of the process: closing the descriptor
        # drops it.
        self._finalizer = weakref.finalize(self, os.close, self._fd)
        _LOCKS.add(self)

    def acquire(self) -> None:
        self._tlock.acquire()
        if self._depth == 0 and not self._held:
            if self._fd < 0:
                self._tlock.release()
                raise ClosedError("the journal is closed; open it again")
            try:
                if self._hold:
                    # the futex set-up before L is taken, as the KV's at open (and the
                    # releaser thread's start: _acquire_flock)
                    self._prepare_waits()
                self._acquire_flock()  # L1-L4, then H1 (the hold begins)
            except BaseException:
                self._tlock.release()
                raise
        self._depth += 1

    def _release_flock(self, *args: Any, **kwargs: Any) -> None:
        self._hot = None  # (another process may append, roll or set from now on)
        super()._release_flock(*args, **kwargs)

    def release(self, *, keep: bool = True) -> None:
        """``keep=False``: let the flock go now even if nobody asks (a reader's doorbell
        registration, B1/B3: not a writer whose next append would reuse the hold)."""
        self._depth -= 1
        if self._depth == 0:
            self._pos += 1
            if keep:
                self._end_hold()  # H2/H3: keep it, or hand it over to a waiter
            elif self._held:
                self._release_flock()
        self._tlock.release()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _after_fork(self) -> None:
        """In a fork child: nothing of the parent's lock is ours (held flag, depth, the
        releaser thread, a thread lock a vanished thread may hold), and the descriptor
        gets an open file description of its own: a parent killed while holding must
        not leave its flock alive in this child."""
        self._tlock = threading.RLock()
        self._depth = 0
        self._held = False
        self._hot = None
        self._hold_evt = None
        if self._fd >= 0:
            try:
                fd = os.open(self._path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                return  # (the journal is gone: an append here fails at its own open)
            try:
                os.dup2(fd, self._fd, inheritable=False)
            finally:
                os.close(fd)

    def close(self) -> None:
        with self._tlock:
            if self._fd < 0:
                return
            self._let_go()  # H6: unlock and wake a waiter at once (not at its slice's end)
            self._region = None  # the releaser thread stops at its next look
            evt = self._hold_evt
            for waiter in (self._lock_waiter, self._want_waiter):
                if waiter is not None:
                    waiter.close()
            self._lock_waiter = self._want_waiter = None
            self._waitw.release()
            self._finalizer()  # os.close(self._fd), once
            self._fd = -1
            _LOCKS.discard(self)
        if evt is not None:
            evt.set()


_CHECK_CHUNK = 1 << 20  # the power-loss walk reads the unsynced bytes this much at a time


def _check_file(fd: int, pos: int, limit: int, first: int
                ) -> tuple[int, int, F.BatchError | None]:
    """_format.check_batches over bytes ``pos``..``limit`` of a segment file, read with
    pread a chunk at a time into one buffer (P1's walk).  A mapping of the file cost more
    than the checks of one-record batches: a page fault per 64 KiB to map it and an
    unmap after (~0.3 ms per MiB measured), where a read into a buffer that stays in the
    cache costs a copy.  A batch cut by a chunk's end starts the next chunk; one larger
    than the buffer gets a buffer of its size (its length was checked against
    ``limit``).  The BatchError of a bad batch is re-made over a mapping, so that it
    names positions in the file."""
    buf = bytearray(min(_CHECK_CHUNK, max(0, limit - pos)))
    p, nxt = pos, first
    while p < limit:
        n = os.preadv(fd, [memoryview(buf)[: limit - p]], p)
        if n <= 0:
            break  # (the file ends before limit: the walk ends here, as a mapping's would)
        q, nxt, problem = F.check_batches(memoryview(buf), 0, n, limit - p, nxt)
        if problem is not None:
            with _ReadMap(fd, limit) as view:
                return F.check_batches(view, p + q, limit, limit, nxt)
        if q == 0:
            if n < len(buf):
                break  # (a short read: what is there is a part of a batch)
            (length,) = struct.unpack_from("<I", buf, 4)  # (<= limit - p: checked)
            buf = bytearray(length)
        p += q
    return p, nxt, None


class _ReadMap:
    """A temporary read-only mapping of the first ``size`` bytes of a descriptor."""

    def __init__(self, fd: int, size: int) -> None:
        import mmap
        self._map = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else None
        self._view = memoryview(self._map) if self._map is not None else memoryview(b"")

    def __enter__(self) -> memoryview:
        return self._view

    def __exit__(self, *exc: object) -> None:
        self._view.release()
        if self._map is not None:
            self._map.close()


def _rebuild_indexes(meta: _Meta, path: str, base: int, pos: int) -> None:
    """Write fresh index files for the segment at ``path`` from its log (up to ``pos``) and
    rename them into place (under L: a mapped old index is replaced, never rewritten)."""
    interval = struct.unpack_from("<I", meta.region.view, F.OFF_INDEX_INTERVAL)[0]
    seg_bytes = meta.get(F.OFF_SEGMENT_BYTES)
    slots = max(_index_slots(seg_bytes, interval), pos // max(interval, 1) + 2)
    slots = min(slots, _MAX_INDEX_SLOTS)
    ipath, tpath = index_paths(path)
    entries: list[tuple[int, int, int]] = []
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _ReadMap(fd, pos) as view:
            p, last, max_ts = F.SEGMENT_HEADER, F.SEGMENT_HEADER, -(1 << 63)
            while p < pos:
                try:
                    info = F.read_batch_header(view, p, pos)
                except F.BatchError:
                    break  # damage: index what verifies before it
                if p - last >= interval and len(entries) < slots:
                    entries.append((info.first_offset - base, p, max_ts))
                    last = p
                max_ts = max(max_ts, info.max_timestamp)
                p += info.length
    finally:
        os.close(fd)
    for kind, path in (("offset", ipath), ("time", tpath)):
        tmp = temp_name(path)
        SparseIndex.create(tmp, kind, base, slots)
        ix = SparseIndex(tmp, kind, base, writable=True)
        try:
            for i, (r, p, ts) in enumerate(entries):
                if kind == "offset":
                    ix.set_entry(i, r, p)
                elif ts > -(1 << 63):
                    ix.set_entry(i, ts, r + 1)
        finally:
            ix.close()
        os.replace(tmp, path)


def _recount_bells(meta: _Meta) -> None:
    """B = the slots in use, counted afresh (under L): a process killed between a slot
    and the count leaves no lasting error -- counting up and down would, and a count
    too low would leave a live reader's doorbell silent."""
    i0 = _I_BELL0
    meta.u32[_I_BELLS] = sum(1 for v in meta.u64[i0 : i0 + F.BELL_SLOTS].tolist() if v)


def _index_slots(segment_bytes: int, interval: int) -> int:
    return min(segment_bytes // max(interval, 1) + 2, _MAX_INDEX_SLOTS)


def _size(directory: str, base: int) -> int:
    """Bytes of a segment up to its W (the file may be allocated further ahead: zeros
    that are not data, see ActiveSegment.reserve); the file's size if W is unreadable."""
    try:
        fd = os.open(os.path.join(directory, F.segment_name(base)), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        size = os.fstat(fd).st_size
        raw = os.pread(fd, 8, F.OFF_COMMIT)
    finally:
        os.close(fd)
    if len(raw) != 8:
        return size
    return min(size, int(_Q.unpack(raw)[0]) & 0xFFFFFFFF)


def _unlink_segment(directory: str, base: int) -> None:
    stem = os.path.join(directory, F.segment_name(base))
    for p in (stem, *index_paths(stem)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


