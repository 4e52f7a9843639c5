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
- In memory: key -> value for immutable values; containers stay encoded (``Packed``) and
  are decoded per read so a caller never mutates the cache; ``Expiring`` wraps ttl values.
  A compacted file's image parts are verified at open but decoded into the index only when
  one of their keys is first used (_lazy.py: the invariant, and which operations load).
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
    C4   unlock F, move F's hand-over     F2   writers asleep on F wake, see the mark
         count, wake every sleeper on F;       and take F's lock only to look (L5);
         go on in F2                           W1 sends them to F2
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
    locked       last exit                  H1 (keep) or H3 (unlock)
    held         write / lock() / batch()   H2
    held         idle, or asked while idle  H4 (unlock)
    ===========  =========================  ==========================================

Holding the writer lock between writes (``lock_hold`` seconds, 0 = off).  A run of writes
takes the flock once: two system calls per write were most of a multiprocess set.  Nothing
above changes for other processes: a held lock is a writer that has not finished yet.

    ===  ==========================================  =====  =============================
    #    step (process P, under its thread lock)     lock   what another process may do
    ===  ==========================================  =====  =============================
    H1   a write (or lock()/batch()) ends: nobody    F      its writes wait (L1-L4); its
         waits (wanted and ready words clear):              reads go on lock-free
         keep F's flock ("held"); the releaser
         thread watches
    H2   P writes while held: no flock call; W is    F      nobody else can have written:
         what P last wrote (no catch-up)                    W == seen
    H3   a write ends while someone waits (wanted    F      the first sleeper wakes,
         or ready word set) and P's run has lasted          claims the next turn and
         its quantum (or a slice since P last woke          replays P's writes while P
         one, none ready): hand-over count + 1, wake        writes on (L3); "wanted"
         one sleeper, keep F's flock                        stays set for the others
    H3b  a write ends while a woken waiter is READY  F->-   it takes F (L3); P's next
         (P woke it, or P's quantum has passed):             write waits its turn (L1-L4)
         unlock, no wake-up
    H4   releaser thread, P's thread lock taken, no  F->-   an idle holder lets go within
         write in progress: P wrote nothing for             lock_hold, or at once when a
         lock_hold, or a woken waiter is READY, or          waiter's L2 wakes the thread
         someone waits and H3's time has come (the          (futex on the wanted word)
         run may have ended: its process is
         finishing): unlock and wake (no wake-up
         while a woken waiter has claimed the turn
         or is READY: it takes F)
    H5   fork: the child is not "held" (the flock   -      the parent's hold goes on;
         is the parent's, via the shared OFD)              the child takes its own (W1)
    H6   close(), the handle dropped, or the          F->-   a sleeping waiter is woken
         interpreter exiting while held: unlock and         at once (dropping the flock
         wake a waiter (as H4), then close the              alone woke nobody: waiters
         descriptor                                         slept out their 10 ms slices)
    ===  ==========================================  =====  =============================

A lock taken to re-verify suspected damage (O4) is released explicitly, never held: the
releaser acts only under the thread lock, which opening also holds.

Test pause points (``mmapkit._testhooks``): kv.attach.mapped (between O1 and O2),
kv.compact.written (C1 done), kv.compact.marked (C2 done), kv.compact.renamed (C3 done),
kv.handover.counted (H3/H4/H6: the hand-over count moved, the wake-up not yet made).
"""

from __future__ import annotations

import fcntl
import os
import struct
import sys
import threading
import time
import warnings
import weakref
from collections.abc import MutableMapping
from time import monotonic as _monotonic

from .. import _fileio, _platform
from .._testhooks import PAUSES, pause
from ..errors import (
    ClosedError,
    CorruptFileError,
    DiskFullError,
    FormatVersionError,
    ModeConflictError,
    ReadOnlyError,
)
from ..lock import FileLock
from ..region import Region
from ..wait import Waiter
from . import _attach, _files, _follow, _index, _load, codec
from . import _lazy as _lazily
from ._crypto import OVERHEAD, Cipher
from ._files import fd_path
from ._index import PLAIN, SPECIAL, Expiring, Packed
from ._index import held_set as _held_set
from ._writelock import WriterLock
from .codec import (
    DATA_START,
    END_MASK,
    HEADER_SIZE,
    KEY_MAX,
    KIND_BATCH,
    KIND_CLEAR,
    KIND_DEL,
    KIND_SET,
    KIND_SET_TTL,
    LOCK_READY,
    OFF_COMMIT,
    OFF_COMPACTIONS,
    OFF_CREATED,
    REC_FLAG_ENCRYPTED,
    SUPERSEDED,
    Record,
    Serializer,
)

__all__ = ["KV", "CheckReport", "KVStatistics"]

# ``typing`` is for type checkers only (importing it costs milliseconds); type
# checkers take any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from contextlib import contextmanager
    from types import TracebackType
    from typing import IO, Any

    from ._reports import CheckReport, KVStatistics
else:
    from .._light_typing import contextmanager


def __getattr__(name: str) -> Any:
    # The report types live in _reports (a dataclasses import), loaded on first use.
    if name in ("CheckReport", "KVStatistics"):
        from . import _reports

        return getattr(_reports, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

DEFAULT_CAPACITY = 4 * _platform.PAGE_SIZE
_MISSING: Any = object()
_F64 = struct.Struct("<d")
_Keys = set[str]

_WAIT_SLICE = 0.05
# A file that fills within this long of being made (new, or by a compaction) doubles
# instead of compacting, up to _CHURN_MAX: a compaction fsyncs a new file (milliseconds),
# so a store overwritten at full speed compacts about 4 times a second, not once per
# file-full (every ~600 writes of a one-key store).
_CHURN_NS = 250_000_000
_CHURN_MAX = 4 << 20
_U64 = struct.Struct("<Q")



class _Closed(dict[str, "Any"]):
    """Stands in for the index after close(): every access raises ClosedError."""

    def _closed(self, *a: Any) -> Any:
        raise ClosedError("the KV is closed; open it again with mmapkit.KV(path)")

    __getitem__ = __contains__ = __iter__ = __len__ = _closed
    get = items = keys = values = _closed


class KV(MutableMapping[str, "Any"], WriterLock):
    """A persistent ``dict`` of str keys backed by one memory-mapped file.

    ``multiprocess=True`` lets several processes read and write the file at once (all of
    them must open it so).  ``key=`` (16/24/32 bytes) encrypts every record with AES-GCM.
    ``capacity`` is the initial (and minimum) file size.  ``readonly=True`` follows the
    writers of a multiprocess file without writing.  ``recover=True`` (default) opens a
    damaged file with everything that still verifies and warns (a copy of the damaged file
    is kept as ``<path>.damaged``); ``recover=False`` raises CorruptFileError instead.
    ``serializer=`` (e.g. ``pickle``) stores values of other types; without it only
    None/bool/int/float/str/bytes and lists/tuples/dicts of them are accepted.
    Multiprocess mode: ``lock_timeout`` bounds every wait for the writer lock
    (LockTimeout); ``lock_hold`` is how long a writer keeps that lock after its last write
    when nobody asks for it (0: give it back after every write).
    """

    KEY_MAX = KEY_MAX

    # Slots: a set or get touches several attributes, and an instance dict of this size
    # is past CPython's shared-key limit, where each access costs a lookup.
    __slots__ = (
        "__weakref__", "_batch", "_changes", "_cipher", "_commit", "_depth", "_fd",
        "_forked", "_handed", "_has_ttl", "_held", "_hold", "_hold_evt", "_ident",
        "_index", "_inline_mp", "_inline_sp", "_lazy", "_lock_timeout", "_lock_waiter",
        "_min_cap",
        "_mode", "_multiprocess", "_nops", "_packers", "_path", "_plain_writes", "_pos",
        "_readonly", "_recover", "_region", "_seen", "_seq_base", "_ser",
        "_shared", "_size", "_tlock", "_turn_at", "_undo", "_undo_all", "_view", "_waiter",
        "_waitw", "_want_waiter", "_watch_keys",
    )
    # Bound by _attach.bind_views (the whole mapping, its size, the commit word, the
    # waiters and lock words).
    _view: memoryview
    _size: int
    _commit: memoryview
    _waitw: memoryview

    def __init__(self, path: str | os.PathLike[str], *, multiprocess: bool = False,
                 key: bytes | None = None, capacity: int | None = None,
                 readonly: bool = False, recover: bool = True,
                 serializer: Serializer | None = None, lock_timeout: float = 30.0,
                 lock_hold: float = 0.001) -> None:
        self._path = os.path.abspath(os.fspath(path))
        self._shared = bool(multiprocess or readonly)
        self._multiprocess = bool(multiprocess)
        self._readonly = bool(readonly)
        self._recover = recover
        self._ser = serializer
        self._lock_timeout = lock_timeout
        if not lock_hold >= 0:
            raise ValueError(f"lock_hold must be a number of seconds >= 0, not {lock_hold!r}")
        self._hold = lock_hold
        self._held = False  # this handle holds the writer lock between writes (H1)
        self._hold_evt: threading.Event | None = None  # wakes the releaser thread (H4)
        self._want_waiter: Waiter | None = None
        if capacity is not None and capacity <= HEADER_SIZE:
            raise ValueError(f"capacity must exceed the {HEADER_SIZE}-byte header")
        self._min_cap = _platform.align_up(capacity or DEFAULT_CAPACITY)
        self._cipher = Cipher(key) if key is not None else None
        self._index: dict[str, Any] = {}
        self._lazy: _load.Lazy | None = None  # image parts not decoded yet (_lazy.py)
        self._tlock = threading.RLock()
        self._depth = 0
        self._batch: list[tuple[int, bytes]] | None = None
        self._undo: dict[str, Any] = {}
        self._undo_all: dict[str, Any] | None = None
        self._watch_keys: frozenset[str] | None = None
        self._changes: _Keys | None = None
        self._forked = False  # set in a fork child (the hook below): cheaper than getpid()
        if multiprocess:
            _MULTIPROCESS[id(self)] = self  # (see _after_fork_in_child)
        self._fd = -1
        self._inline_mp = False
        self._region: Region | None = None
        self._waiter: Waiter | None = None
        self._lock_waiter: Waiter | None = None
        self._handed = False  # this holder woke a waiter since its run began (H3)
        self._turn_at = 0.0  # when H3 wakes the waiters (again): _writelock._end_hold
        self._pos = DATA_START
        self._seen = 0
        self._plain_writes = self._cipher is None and not self._readonly
        self._refresh_inline()
        self._packers: dict[int, tuple[Callable[..., None], int]] = {}  # see _packer()
        self._nops = 0  # operations in the file: with len(index), estimates the live share
        self._seq_base = 0  # operations written before the current file began
        self._has_ttl = False  # set once any key gets a ttl (len() then checks expiry)
        self._ident = (0, 0)
        self._mode = self._take_mode_lock()
        try:
            with self._tlock:  # (a lock taken to verify damage is not a hold: see H4)
                self._attach_path(create=not readonly)
                if multiprocess and not readonly:
                    self._prepare_waits()
        except BaseException:
            self._detach()
            if self._mode is not None:
                self._mode.close()
            raise

    # --- opening ------------------------------------------------------------------------

    def _after_fork(self) -> None:
        """In a fork child: this copy holds none of its parent's writer lock (nor its
        batch), even when fork() was called inside kv.lock() or kv.batch()."""
        self._forked = True
        self._depth = 0
        self._batch = None
        self._held = False  # (the parent's, through the shared descriptor)
        self._hold_evt = None  # the releaser thread did not survive the fork
        self._want_waiter = None
        if self._tlock.acquire(blocking=False):
            self._tlock.release()
        else:  # held by a thread that did not survive the fork
            self._tlock = threading.RLock()
        self._refresh_inline()

    # Attaching to a file (O1, F1: open, map, views, detach) and reading it into the index
    # (O2-O4 and R2: the first load, damage concluded under the lock, every catch-up after)
    # live in _attach.py and _follow.py, bound here as methods.
    _take_mode_lock = _attach.take_mode_lock
    _attach_path = _attach.attach_path
    _open_fd = _attach.open_fd
    _create_file = _attach.create_file
    _init_empty = _attach.init_empty
    _attach_fd = _attach.attach_fd
    _bind_views = _attach.bind_views
    _rebind_views = _attach.rebind_views
    _unbind_views = _attach.unbind_views
    _detach = _attach.detach
    _path_is_mine = _attach.path_is_mine
    _remap = _attach.remap
    _reopen = _attach.reopen
    _load = _follow.load
    _read = _follow.read
    _load_locked = _follow.load_locked
    _install = _follow.install
    _check_key = _follow.check_key
    _report_damage = _follow.report_damage
    _zero_tail = _follow.zero_tail
    _poll = _follow.poll
    _catch_up = _follow.catch_up
    _read_appended = _follow.read_appended
    _reload = _follow.reload
    # Image parts left encoded at open, loaded on first use (_lazy.py: the invariant).
    _load_key = _lazily.load_key
    _load_all = _lazily.load_all
    _settle = _lazily.settle

    def _retired(self) -> bool:
        """The file was compacted away (or its compactor died marking it: the next
        writer clears the mark, W1)."""
        return bool(self._commit[0] & SUPERSEDED)

    def _follow_committed(self) -> None:
        """Replay what other processes committed, lock-free (R2, what every reader does);
        a waiter for the writer lock calls it (L3).  A compacted file is left to the
        catch-up under the lock."""
        w = self._commit[0]
        if w != self._seen and not w & SUPERSEDED:
            self._read_appended(w)

    # --- replay -------------------------------------------------------------------------

    def _stored(self, vb: bytes) -> Any:
        return _load.stored(vb, self._ser)

    def _replay(self, rec: Record, index: dict[str, Any], changes: _Keys | None) -> None:
        ops, ttl = _load.replay(rec, index, changes, self._cipher, self._ser, self._lazy)
        self._nops += ops
        if ttl:
            self._has_ttl = True

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
        if type(v) is Expiring:
            return (KV._plain(v.value), v.expiry)
        if type(v) is Packed:
            return v.data
        return (type(v), v)

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
                self._take_own_lock(follow=True)
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
        if depth == 0 and self._shared and self._fd >= 0 and self._held:
            self._end_hold()

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
        keys = len(self._index) + (self._lazy.pending if self._lazy is not None else 0)
        live = used * min(1.0, keys / max(self._nops, 1))
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

    def _image(self, cipher: Cipher | None) -> _files.Image:
        """Records of every live key laid out from DATA_START (_files.image)."""
        self._load_all()
        return _files.image(self._index, cipher)

    def _rewrite(self, image: _files.Image, cipher: Cipher | None, *,
                 extra: int = 0, headroom: int = 2) -> None:
        """Write ``entries`` to a new file and rename it over the path (crash-safe)."""
        parts, pos, count, version = image
        head = _files.header(
            cipher, _files.new_salt(), end=pos, seq=self._seq_base + self._nops - count,
            compactions=struct.unpack_from("<I", self._view, OFF_COMPACTIONS)[0] + 1,
            version=version)
        live = pos - DATA_START
        tmp = self._path + ".compact~"
        try:
            os.unlink(tmp)  # a dead compactor's (only the lock holder writes this name)
        except FileNotFoundError:
            pass
        fd = _files.write_compacted(
            tmp, head, parts, mode=os.fstat(self._fd).st_mode,
            capacity=max(self._min_cap, _platform.align_up(DATA_START + headroom * (live + extra))),
            least=_platform.align_up(pos + extra))
        marked = renamed = False
        try:
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
            _fileio.fsync_dir(os.path.dirname(self._path))
        except BaseException:
            if marked and not renamed:
                self._commit[0] = self._commit[0] & END_MASK
            if not renamed:
                os.close(fd)
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
            else:
                os.close(fd)
            raise
        # Wake sleepers on the old file so they move to the new one.
        try:
            self._wake()
        except OSError:
            pass
        if self._shared:
            self._retire_lock()  # C4: waiters on the old file see the mark, move over
        # Swap files with the old views bound until the new ones replace them (other
        # threads' get() reads the commit word without the lock).
        old = {n: getattr(self, n) for n in ("_fd", "_region", "_commit", "_waitw",
                                             "_waiter", "_lock_waiter", "_want_waiter")}
        self._waiter = self._lock_waiter = self._want_waiter = None
        self._fd = fd
        st = os.fstat(fd)
        self._ident = (st.st_dev, st.st_ino)
        self._region = Region.open(fd_path(fd))
        self._bind_views()
        self._held = self._shared  # (C1 locked the new file)
        _attach.retire(old)
        self._cipher = cipher
        self._pos = pos
        self._seen = self._commit[0]
        self._seq_base += self._nops - count
        self._nops = count

    def _write(self, kind: int, body: bytes, key: str, stored: Any) -> None:
        with self._tlock:
            if self._batch is not None:
                if self._lazy is not None:
                    self._unlazy(kind, key)
                self._remember(kind, key)
                self._batch.append((kind, body))
                self._apply(kind, key, stored)
                return
            self._enter_write()
            try:
                if self._lazy is not None:
                    self._unlazy(kind, key)  # (after _enter_write: it may move files)
                self._append(kind, body)
                self._apply(kind, key, stored)
            finally:
                self._exit_write()

    def _unlazy(self, kind: int, key: str) -> None:
        """Before writing ``key``: load its image part (a clear: every part)."""
        if kind == KIND_CLEAR:
            self._load_all()
        else:
            self._load_key(key)

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
        # (While image parts are unloaded the index is a _lazy.LazyIndex, whose
        # __missing__ and get() load the key's part on a miss: no test of our own here,
        # nor in get() and ``in``.)
        v = self._index[key]
        if type(v) in SPECIAL:
            return self._special(key, v)
        return v

    def get(self, key: str, default: Any = None) -> Any:
        """``kv[key]``, or ``default`` when the key is missing or expired."""
        if self._shared and self._commit[0] != self._seen:  # the seqlock check
            self._poll()
        v = self._index.get(key, _MISSING)  # (a LazyIndex loads the key's part on a miss)
        if v is _MISSING:
            return default
        if type(v) in SPECIAL:
            try:
                return self._special(key, v)
            except KeyError:
                return default
        return v

    def _special(self, key: str, v: Any) -> Any:
        if type(v) is Expiring:
            if v.expiry <= time.time():
                raise KeyError(key)
            v = v.value
            if type(v) is not Packed:
                return v
        return codec.decode_value(v.data, self._ser)

    # The inline set spells the record format by hand: it lives beside the codec.
    __setitem__ = _index.setitem
    _put = _index.put

    def _refresh_inline(self) -> None:
        """Derive the flags __setitem__ tests for its single- and multiprocess hot paths
        (call it whenever _plain_writes, _shared, _batch or _forked change)."""
        # (While image parts are unloaded, _lazy.py, the inline paths write without
        # loading the key's part: the index, a LazyIndex, marks the part to merge key by
        # key when it loads, so the hot path needs no test of its own.)
        plain = self._plain_writes and self._batch is None
        self._inline_sp = plain and not self._shared
        self._inline_mp = plain and self._shared and not self._forked

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``; with ``ttl`` (seconds) it vanishes after that long.

        When set() returns the write survives a crash of this process; call sync() to make
        it survive an OS crash or power loss too.
        """
        kb = codec.encode_key(key)
        vb = codec.encode_value(value, self._ser)
        stored = value if type(value) in PLAIN else self._stored(vb)
        if ttl is None:
            self._write(KIND_SET, kb + vb, key, stored)
        else:
            if not ttl > 0:
                raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
            expiry = time.time() + ttl
            self._write(KIND_SET_TTL, _F64.pack(expiry) + kb + vb, key,
                        Expiring(stored, expiry))
            self._has_ttl = True

    def __delitem__(self, key: str) -> None:
        kb = codec.encode_key(key)
        with self._tlock:
            self._enter_write()
            try:
                if self._lazy is not None:
                    self._load_key(key)
                v = self._index.get(key, _MISSING)
                if v is _MISSING or (type(v) is Expiring and v.expiry <= time.time()):
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
        return type(v) is not Expiring or v.expiry > time.time()

    def _live_keys(self) -> list[str]:
        if self._shared:
            self._poll()
        if self._lazy is not None:
            self._load_all()
        now = time.time()
        return [k for k, v in self._index.items()
                if type(v) is not Expiring or v.expiry > now]

    def __iter__(self) -> Iterator[str]:
        return iter(self._live_keys())

    def __len__(self) -> int:
        if self._shared:
            self._poll()
        if self._lazy is not None:
            self._load_all()
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

    @contextmanager
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
            self._refresh_inline()
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
                self._refresh_inline()
                self._exit_write()

    @contextmanager
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
            if self._inline_mp and not self._depth:
                # Multiprocess, the lock taken or held and nobody else wrote, or others only
                # appended (W1-W3, H1-H3): _enter_write/_exit_write with their checks folded
                # in, as __setitem__ does (a contended counter is this call in a loop).
                # Anything else (compacted, damaged) goes the general way below.
                if not self._held:
                    self._acquire_flock(follow=True)
                w = self._commit[0]
                if w == self._seen or (not w & SUPERSEDED and self._read_appended(w)):
                    self._depth = 1
                    try:
                        # get() and __setitem__ folded in: the index is current (just
                        # checked), this thread holds _tlock and the writer lock.
                        v = self._index.get(key, _MISSING)
                        if v is _MISSING:
                            v = default
                        elif type(v) in SPECIAL:
                            v = self.get(key, default)
                        value = fn(v)
                        if not _held_set(self, key, value):
                            self[key] = value
                        return value
                    finally:
                        self._depth = 0
                        words = self._waitw
                        if self._held and (words[1] or words[3] or not self._hold) and (
                                not self._hold or words[3] == LOCK_READY
                                or _monotonic() >= self._turn_at):
                            self._end_hold()  # (its own tests, spelled inline: no call)
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
                self._plain_writes = cipher is None
                self._refresh_inline()
            finally:
                self._exit_write()

    def statistics(self) -> KVStatistics:
        with self._tlock:
            self._check_open()
            if self._shared:
                self._poll()
            self._load_all()
            overhead = OVERHEAD if self._cipher else 0
            live = sum(codec.record_size(len(b) + overhead)
                       for _, b in _index.live_entries(self._index))

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
            self._load_all()  # (every change must be seen: no key may hide in a part)
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
            if self._seen == _follow.UNSETTLED:
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
            _files.write_store(os.fspath(dst), self._image(self._cipher),
                               self._cipher, self._min_cap)

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
            _files.install_copy(os.fspath(src), dst)
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
        from ._check import check

        return check(os.fspath(path), key)

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
            self._let_go()  # H6: a held lock is let go with a wake-up, not just dropped
            mode, self._mode = self._mode, None
            self._shared = False  # first: other threads' get() stops reading the commit word
            if self._hold_evt is not None:
                self._hold_evt.set()  # its releaser thread sees the handle closed and ends
            self._index = _Closed()
            try:
                self._detach()
            finally:
                if mode is not None:
                    mode.close()
                self._index = _Closed()
                self._shared = self._plain_writes = False
                self._refresh_inline()

    def __del__(self) -> None:
        # Dropped without close(): the descriptor goes now, not at process exit -- and
        # with it a writer lock held between writes (the releaser thread may have let go
        # of the handle before its first watch, and then nobody would ever unlock).
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            try:  # (interpreter shutdown: anything)
                self._let_go()
            except Exception:
                pass
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> KV:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "multiprocess" if self._multiprocess else "readonly" if self._readonly else \
            "single-process"
        lazy = self._lazy
        state = "closed" if self._region is None else f"{len(self._index)} keys" + (
            f" (and about {lazy.pending} in image parts not loaded yet)" if lazy else "")
        return f"<KV {self._path} {mode} {state}>"


# The live multiprocess handles, for the one at-fork hook below (one hook per handle could
# never be unregistered: a process opening many stores would pile them up).
# (by id: a KV is a mapping, so not hashable itself)
_MULTIPROCESS: weakref.WeakValueDictionary[int, KV] = weakref.WeakValueDictionary()


def _after_fork_in_child() -> None:
    for kv in list(_MULTIPROCESS.values()):
        kv._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


if sys.platform == "win32":  # pragma: no cover
    raise ImportError("mmapkit.kv needs POSIX")
