"""Channel: a message channel between processes over one shared mapping.

Design rules:

- One ring of variable-length frames in a Region (format in ``_format.py`` and
  docs/formats.md).  ``head`` and ``tail`` are 64-bit byte positions that only grow; head
  is written only by producers, tail only by consumers.  A producer writes the frame (its
  length word and payload, in either order: nothing reads a frame past head), then stores
  the new head: the head store publishes the frame.  A producer killed at any instant
  before that store leaves nothing visible, so a torn message is never delivered.  A
  consumer copies (or hands out a view of) the payload and then stores the new tail: a
  consumer killed before that store leaves the message for the next consumer
  (at-least-once for that one message), never half of it.
- Ordering: on x86-64 (TSO) plain aligned 8-byte stores through ``memoryview.cast('Q')``
  become visible to other cores in program order, which is all the protocol needs.  On
  weakly ordered CPUs (ARM64...) nothing orders them from Python, so there every send and
  every receive of *every* channel takes one shared kernel lock (flock): the kernel's
  lock and unlock are full barriers.  Slower, but correct.
- Several producers (``multi_producer=True``) claim the head, several consumers
  (``multi_consumer=True``) the tail.  A claim is a *lease* (format version 2, TSO CPUs):
  the lease word of the role names the participant that may enter; it enters with no
  syscall (raise its busy word, a full barrier, read the lease word: steps L1-L3) and
  leaves by lowering its busy word.  Anyone else *steals* the lease: under the role's
  flock (the channel file for producers, the ``.lock`` file for consumers; thieves one at
  a time) it writes its own name into the lease word, a barrier, then waits until every
  other busy word has read 0 once, skipping dead participants (L5-L8).  This is Dekker's
  handshake: each side stores, fences, then loads the other's word, so at least one sees
  the other; the entrant that sees a foreign name backs off, the thief that sees a busy
  word waits.  The barrier is the acquisition of a ``threading.Lock`` (on x86-64 every
  lock acquisition is a ``lock``-prefixed instruction, a full barrier), 0.2-0.4 us
  against 5-7 us for a flock pair on the loaded test VM, so a lone producer or consumer,
  or one that keeps the CPU, pays no syscall per message; a steal costs about what a
  flock claim cost.  A
  killed owner leaves its busy word at 1 and its slot lock free: thieves skip dead slots,
  so a killed peer cannot wedge the others.  Version 1 files (made by older mmapkit, whose
  processes flock every claim) and weakly ordered CPUs claim by flock, as before.  A claim
  is never held while waiting.
- Blocking: spin on the position for ``spin`` seconds (yielding the CPU between rounds:
  Disruptor's spin -> yield -> block), then sleep on the futex of the
  position's low 32 bits (mmapkit.wait.Waiter).  A sleeper first raises a "sleeping"
  word that the other side reads after each publish, so the fast path makes no syscall
  unless someone sleeps.  The publish path takes no store-load barrier (the claims' lock
  barrier costs as much as a send), so a publish can race a sleeper's announcement;
  sleeps are therefore cut into slices of ``_SLICE`` seconds
  after which the sleeper re-checks: a lost wake-up costs at most one slice, never a hang.
- Why a futex and not a pipe/FIFO doorbell (measured on a 2-vCPU VM, 2026-11): in C a
  futex and a pipe ping-pong the same (~5 us a round trip on one CPU, ~28 us across
  vCPUs, tight or idle), and from Python a futex through ctypes equals poll() + read() of
  a FIFO (~10 us); Channel round trips with FIFO doorbells for the single-sleeper roles
  were within noise of the futex (per-round ratios 0.9-1.25).  A pipe also needs two
  syscalls per sleep (poll with the slice's timeout, then a read to drain) and wakes only
  the reader that drains it, where FUTEX_WAKE wakes every sleeper (broadcast, MPMC).  What
  makes blocking round trips bimodal here (~14 us or ~55 us) is whether the scheduler puts
  the two processes on one vCPU, not the wake-up primitive.
- Liveness: every participant takes a slot in the header and holds an exclusive lock on
  its slot's byte of the ``.lock`` file beside the channel.  A sleeper looks at the slots
  before each slice: a producer slot whose lock is free belongs to a dead (or closed
  without finish()) producer.  A receiver whose producers are all gone gets BrokenError
  once it has drained the ring; when all of them called finish(), EndOfChannel.

Participant slots (who is attached, in which role, alive or not): ``_slots.py``, with
their state table; steps A1-A6 below are its ``take()``.

Cross-process protocol.  Locks: ``registry`` = OFD lock on byte 2 of ``<path>.lock``;
``slot i`` = OFD lock on byte 64+i of it, held for a handle's whole life; ``pclaim`` =
flock of the channel file (producers), ``cclaim`` = flock of ``<path>.lock`` (consumers;
strict mode: pclaim for both).  Every lock is the kernel's: a process killed at any step
loses all of them at once, and every step below is safe to die in (K column).

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
    O3    open (create) <path>.lock and the      -           an empty .lock file may appear
          claim descriptors                                  (K: harmless, reused by name)
    O4    open path again: the same file as O1?  -           -
          else start at O1 again (unlinked and
          re-created meanwhile); ENOENT: raise
    O5    read tail, head, tail until the two    -           -
          tails agree; check the positions
    A1    first send/recv/subscribe: take the    registry    other attachers wait here
          registry lock                                      (K: the kernel frees it)
    A2    read every slot state and liveness     registry    states change only by their
                                                             live owners: finish() and
                                                             close() (see D1, D2)
    A3    producer, no live producer: dead       registry    fewer gone/finished producers:
          PRODUCER and FINISHED slots -> FREE                a waiting receiver keeps
                                                             waiting, never raises falsely
    A4    try-lock a FREE slot, else a dead one  registry,   the slot's old state with a
                                                 slot        live lock: for this instant a
                                                             census counts the old role
                                                             alive (one more 50 ms slice)
    A5    write pid, sleeping=0, then the state  registry,   a live participant of our role
                                                 slot
    A6    release the registry lock              slot        -
    S1    MP send: claim (lease L1-L8, or a      pclaim      other producers wait (polling
          flock of the channel file)                         when they have a deadline)
    S2    frame would cross the ring's end:      pclaim      a published PAD frame
          PAD word, then store head (publish)
    S3    no room: unclaim, wait for tail        -           (a claim is never held while
                                                             waiting)
    S4    payload, then length word above head   pclaim      nothing: bytes at and above
                                                             head are not published
    S5    store head: publish                    pclaim      the whole message
    S6    unclaim (lease: L9); wake sleeping     -           (K before S5: nothing visible;
          consumers                                          after: delivered)
    R1    MC recv: claim (lease L1-L8, or a      cclaim      other consumers wait
          flock of the .lock file)
    R2    skip PADs (store tail past them);      cclaim      -
          copy the payload (or lend a view of it)
    R3    store tail                             cclaim      the message consumed (K before
                                                             R3: it stays for the next
                                                             consumer, never half-taken)
    R4    unclaim (lease: L9); wake sleeping     -           -
          producers
    L1    lease claim: busy word of our slot = 1 -           a thief waits for us (L7)
    L2    barrier (acquire a threading.Lock)     -           -
    L3    lease word names us: we are in         claim       (K: our busy word stays 1,
                                                             our slot lock is free: dead,
                                                             thieves skip us)
    L4    else busy = 0 and steal:               -           -
    L5    take the role's flock                  flock       other thieves wait (K: the
                                                             kernel frees it)
    L6    lease word = our name (slot and    flock       entrants at L3 see it and
          its attach generation); barrier                    steal in turn; an owner past
                                                             L3 is still in its claim (K:
                                                             the word names a dead slot;
                                                             a new attacher of that slot
                                                             has a new name, so it steals
                                                             too: nobody skips L7)
    L7    wait until every other slot's busy     flock       -
          word read 0 once (or the slot is dead)
    L8    our busy = 1, release the flock        claim       -
    L9    unclaim: busy word = 0                 -           the lease stays ours: our next
                                                             claim is L1-L3 again
    B1    broadcast send: evict (store tail      pclaim if   subscribers at an evicted
          first), then overwrite, store head     MP          cursor get OverrunError
    B2    subscriber: copy at cursor, re-read    -           -
          tail (moved past: OverrunError), then
          store the cursor in its slot
    D1    finish(): PRODUCER -> FINISHED         slot        this producer ended its stream
    D2    close(): consumer slot -> FREE         slot        -
    D3    close descriptors (always, even when   -           the slot is dead: A3/A4 may
          a step of close() fails)                           reuse it
    F1    fork child: new descriptions for the   (parent's)  - (the child never locks or
          lock file and the claims, by name                  unlocks through an inherited
          only if the name is still the same                 description: its LOCK_UN would
          file, else via /proc/self/fd                       drop the parent's lock)
    U1    unlink(): remove path if it is still   -           open() fails at O1, or starts
          this channel's file                                again from O4
    U2    then <path>.lock if still ours, and    -           -
          <path>.bell
    ====  =====================================  ==========  ===============================

Nothing a reader does writes the ring, and nothing winds back a position: head and tail
only grow, each stored by its own side (tail also by a broadcast producer's eviction).
check() runs on a live channel: an error found while tail held still is damage; one found
after tail moved is a frame consumed under it, and it looks again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import queue
import stat
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .. import _platform
from .._fileio import flock_until
from .._testhooks import PAUSES as _PAUSES
from .._testhooks import pause as _pause
from ..errors import (
    BrokenError,
    ClosedError,
    CorruptFileError,
    EndOfChannel,
    ForeignFileError,
    MessageTooLargeError,
    ModeConflictError,
    OverrunError,
    ReadOnlyError,
)
from ..region import Region
from ..wait import Waiter
from . import _format as fmt
from . import _slots
from ._slots import slot_byte as _slot_byte
from ._slots import slot_word as _slot_word

__all__ = ["Channel", "ChannelStatistics"]

_SLICE = 0.05  # longest single sleep before re-checking positions and peers
_OPEN_ATTEMPTS = 20  # open() starts again this often when the path is replaced under it
_DEFAULT_SPIN = 50e-6
# slot states
_FREE, _PRODUCER, _CONSUMER, _FINISHED, _SUBSCRIBER = (
    fmt.STATE_FREE, fmt.STATE_PRODUCER, fmt.STATE_CONSUMER, fmt.STATE_FINISHED,
    fmt.STATE_SUBSCRIBER)
# word indexes into the header cast as u64 / u32
_HEAD_Q = fmt.HEAD // 8
_TAIL_Q = fmt.TAIL // 8
_CW_I = fmt.CONSUMERS_WAITING // 4
_PW_I = fmt.PRODUCERS_WAITING // 4
# send() and recv() spell these four as literals (a constant beats a global lookup there)
assert (_HEAD_Q, _TAIL_Q, _CW_I, _PW_I) == (8, 16, 18, 34)
_CE_I = fmt.CONSUMERS_EPOCH // 4
_PE_I = fmt.PRODUCERS_EPOCH // 4
_BELL_I = fmt.DOORBELL // 4
_PLEASE_I = fmt.PRODUCER_LEASE // 4
_CLEASE_I = fmt.CONSUMER_LEASE // 4
# slot fields as u32 indexes within a slot (see _slot_word)
_F_STATE, _F_PID, _F_SLEEPING = _slots.F_STATE, _slots.F_PID, _slots.F_SLEEPING
_F_PBUSY, _F_CBUSY = _slots.F_PBUSY, _slots.F_CBUSY
_BUSY_SCAN = 64  # rounds of yielding on a busy peer between two looks at its liveness
_PAD_EVICTED_Q = fmt.PAD_EVICTED // 8
_PAD_WORD = fmt.PAD_WORD
# The hot paths spell a frame's size as ``(n + 15) & ~7`` (a call costs more than the
# arithmetic there); it must be the codec's frame_size at every alignment.
assert all((n + 15) & ~7 == fmt.frame_size(n) for n in range(64))
_U64 = struct.Struct("<Q")
_OBJ_HEAD_SIZE = fmt.OBJ_HEAD.size
_FRAMED_MAX = 256  # payloads up to this long are framed by one cached Struct per length


@dataclass(frozen=True)
class ChannelStatistics:
    """What this handle did, and the ring as it is now."""

    messages_sent: int
    bytes_sent: int
    messages_received: int
    bytes_received: int
    full_waits: int  # sends that had to wait for room
    empty_waits: int  # receives that had to wait for a message
    capacity: int
    used: int  # bytes in the ring not yet consumed
    producers_alive: int
    consumers_alive: int


class Channel:
    """A message channel between processes over shared memory.

    Make one with :meth:`create` (a file other processes :meth:`open`) or
    :meth:`anonymous` (inherited by ``fork()`` children).  Messages are bytes-like;
    :meth:`send_obj` / :meth:`recv_obj` carry any picklable object.
    """

    # Slots: send() and recv() touch a dozen attributes per message, and an instance dict
    # of this size is past CPython's shared-key limit, where each access costs a lookup.
    __slots__ = (
        "__weakref__",
        "_attach_mutex",
        "_base",
        "_base8",
        "_bc",
        "_bell",
        "_cap",
        "_cbusy",
        "_cclaim",
        "_clease",
        "_clocked",
        "_closed",
        "_cslot",
        "_ctoken",
        "_cursor",
        "_data",
        "_dq",
        "_empty_waits",
        "_fdbox",
        "_fence",
        "_finished",
        "_framers",
        "_full_waits",
        "_hdr",
        "_hdr8",
        "_hdr32",
        "_head_w",
        "_header",
        "_identity",
        "_lock_fd",
        "_lock_identity",
        "_lock_path",
        "_max",
        "_mc",
        "_mm",
        "_mp",
        "_path",
        "_pbusy",
        "_pclaim",
        "_pending_overrun",
        "_please",
        "_plocked",
        "_pslot",
        "_ptoken",
        "_readable_end",
        "_received",
        "_received_bytes",
        "_recv_fast",
        "_recv_mutex",
        "_region",
        "_room_end",
        "_send_fast",
        "_send_limit",
        "_send_mutex",
        "_sent",
        "_sent_bytes",
        "_spin",
        "_tail_seen",
        "_tail_w",
        "_woke_consumers",
        "_woke_producers",
    )

    def __init__(self, region: Region, header: fmt.Header, lock_fd: int, *,
                 lock_path: str | None, spin: float, bell_fd: int = -1,
                 claims: tuple[int, int] | None = None,
                 identity: tuple[int, int] | None = None) -> None:
        self._region = region
        self._header = header
        self._path = region.path
        self._lock_path = lock_path
        self._lock_fd = lock_fd
        self._spin = float(spin)
        self._cap = header.capacity
        self._max = fmt.max_message(header.capacity)
        self._mp = header.multi_producer
        self._mc = header.multi_consumer
        self._bc = header.broadcast
        self._cursor = 0  # a broadcast subscriber's read position
        self._pending_overrun: OverrunError | None = None  # seen by recv_many, raised next
        # Weakly ordered CPUs: both sides serialise on one kernel lock (see the top comment).
        strict = _strict()
        self._plocked = self._mp or strict
        self._clocked = self._mc or strict
        # Claims by lease (see the top comment): TSO only, version 2 files only (processes
        # of an older mmapkit on a version 1 file flock every claim), never broadcast.
        leases = not strict and header.version >= fmt.LEASE_VERSION
        self._please = self._mp and leases and not self._bc
        self._clease = self._mc and leases
        self._fence = threading.Lock()  # acquiring it is a full barrier (a locked insn)
        self._pbusy = self._cbusy = self._ptoken = self._ctoken = -1  # set by _attach()
        self._identity = identity  # (st_dev, st_ino) of the channel file
        self._lock_identity: tuple[int, int] | None = None
        if identity is not None:
            st = os.fstat(lock_fd)
            self._lock_identity = (st.st_dev, st.st_ino)
        # Claims are flock()s (a lock + unlock costs a third of an OFD byte-range pair):
        # producers lock one file, consumers another; the strict mode uses one for both.
        # open() hands in descriptors it checked are of this channel's files.
        self._pclaim, self._cclaim = claims if claims is not None else self._open_claims(strict)
        view = region.view
        self._hdr = view[: fmt.HEADER_SIZE].cast("Q")
        self._hdr32 = view[: fmt.HEADER_SIZE].cast("I")
        self._hdr8 = view[: fmt.HEADER_SIZE]
        self._data = view[fmt.HEADER_SIZE : fmt.HEADER_SIZE + self._cap]
        # The mmap itself: slicing it makes bytes in one step (3x cheaper than bytes() of a
        # memoryview slice), and slice assignment to it is a plain memcpy.  ``_base`` is
        # where the ring starts in it.
        mapping = view.obj
        if not isinstance(mapping, mmap.mmap):  # pragma: no cover - Region maps with mmap
            raise TypeError("a Channel needs a Region backed by mmap")
        self._mm = mapping
        self._base = fmt.HEADER_SIZE + region.offset - region.map_offset
        self._base8 = self._base + 8  # where the payload of a frame at ring offset 0 goes
        self._dq = self._data.cast("Q")
        self._framers: dict[int, Callable[[memoryview, int, int, Any], None]] = {}  # _framer()
        self._head_w = Waiter(region, fmt.HEAD)
        self._tail_w = Waiter(region, fmt.TAIL)
        self._pslot: int | None = None
        self._cslot: int | None = None
        self._send_fast = self._recv_fast = False  # attached, and no claim lock needed
        self._send_limit = -1  # max_message while _send_fast, else -1 (one test in send())
        self._finished = False
        self._closed = False
        # Consumer: frames below this position are published (head at its last look) and
        # do not cross the end of the ring; one comparison checks a frame against both.
        self._readable_end = 0
        self._tail_seen = 0  # producer's last look at tail: room above it is free
        self._room_end = self._cap  # tail_seen + capacity: a frame must end below it
        self._send_mutex = threading.Lock()
        self._recv_mutex = threading.Lock()
        self._attach_mutex = threading.Lock()
        self._sent = self._sent_bytes = self._received = self._received_bytes = 0
        self._full_waits = self._empty_waits = 0
        self._woke_consumers = self._woke_producers = -1  # sleep epochs already woken
        self._bell = bell_fd  # doorbell FIFO (read and write end in one), opened on demand
        # A handle dropped without close() must not look alive forever (its slot locks
        # live as long as the lock descriptor): the finalizer closes whatever is in the box.
        self._fdbox: list[int] = []
        self._sync_fds()
        weakref.finalize(self, _close_fds, self._fdbox)
        ref = weakref.ref(self)

        def after_fork() -> None:
            channel = ref()
            if channel is not None:
                channel._after_fork()

        os.register_at_fork(after_in_child=after_fork)

    # --- construction -----------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], capacity: int = 1 << 20, *,
               multi_producer: bool = False, multi_consumer: bool = False,
               broadcast: bool = False, spin: float = _DEFAULT_SPIN) -> Channel:
        """Create a channel file at ``path`` with a ring of ``capacity`` bytes.

        Raises FileExistsError if ``path`` exists (open it, or unlink it first).  The file
        appears complete or not at all: it is built beside ``path`` and linked into place.
        """
        path = os.fspath(path)
        cap = fmt.round_capacity(capacity)
        flags = ((fmt.FLAG_MULTI_PRODUCER if multi_producer else 0)
                 | (fmt.FLAG_MULTI_CONSUMER if multi_consumer else 0)
                 | (fmt.FLAG_BROADCAST if broadcast else 0))
        if broadcast and multi_consumer:
            raise ValueError("broadcast channels have subscribers, each with its own cursor; "
                             "drop multi_consumer=True")
        header = fmt.encode_header(cap, flags)
        directory = os.path.dirname(os.path.abspath(path))
        import tempfile  # here, not at import: it loads random, shutil...

        fd, tmp = tempfile.mkstemp(prefix=".mmapkit-chan-", dir=directory)
        try:
            _platform.ensure_allocated(fd, fmt.HEADER_SIZE + cap)
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
        return cls.open(path, spin=spin)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, spin: float = _DEFAULT_SPIN) -> Channel:
        """Attach to the channel file at ``path`` (made by :meth:`create`).

        Safe against a concurrent :meth:`unlink` and re-create of the same path: the
        handle either maps, locks and claims one and the same channel, or the open starts
        again on whatever the path names now (FileNotFoundError once it names nothing).
        """
        path = os.fspath(path)
        for _ in range(_OPEN_ATTEMPTS):
            try:
                return cls._open_once(path, spin)
            except _Replaced:
                continue
        raise BrokenError(f"{path} was replaced {_OPEN_ATTEMPTS} times while it was being "
                          "opened (another process keeps unlinking and re-creating it); "
                          "retry when it is stable")

    @classmethod
    def _open_once(cls, path: str, spin: float) -> Channel:
        """One attempt of :meth:`open` (steps O1-O5 of the state table)."""
        cloexec = getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, os.O_RDWR | cloexec)  # O1
        except PermissionError as exc:
            raise ReadOnlyError(exc.errno, f"{path} is not writable by this process; every "
                                "participant of a channel writes to it (ask for write "
                                "permission)", path) from exc
        region: Region | None = None
        fds: list[int] = []
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ForeignFileError(f"{path} is not a regular file, so not an mmapkit "
                                       "channel", path=path)
            header = fmt.decode_header(os.pread(fd, fmt.FIXED_SIZE, 0), path=path)
            if st.st_size != header.file_size:
                raise ForeignFileError(
                    f"{path} has {st.st_size} bytes but its header says {header.file_size}; "
                    "it was truncated or extended by something else: unlink it and create "
                    "it again", path=path)
            # O2: map exactly the size create() gave it, through this very descriptor (a
            # second open by name could land on another file, and mapping more than the
            # file has would extend it: an opener never writes a file it has not checked).
            mapping = mmap.mmap(fd, header.file_size, access=mmap.ACCESS_WRITE)
            region = Region(mapping, path=path, offset=0, map_offset=0,
                            size=header.file_size, readonly=False, private=False)
            if _PAUSES:
                _pause("channel.open:mapped")
            lock_path = path + ".lock"
            # O3: the lock file by name, then O4: the path again.  unlink() removes the path
            # before the lock file, so if the path still names our file after we opened the
            # lock file, that lock file is the one every participant of this channel uses.
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | cloexec, 0o644)
            fds.append(lock_fd)
            strict = _strict()
            cclaim = -1
            if not strict:
                cclaim = os.open(lock_path, os.O_RDONLY | cloexec)
                fds.append(cclaim)
                if not _same_file(os.fstat(cclaim), os.fstat(lock_fd)):
                    raise _Replaced
            try:
                pclaim = os.open(path, os.O_RDONLY | cloexec)
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, f"{path} was unlinked while it was "
                                        "being opened", path) from None
            fds.append(pclaim)
            if not _same_file(os.fstat(pclaim), st):
                raise _Replaced
            # O5: the ring positions, read as one consistent pair.
            hdr = region.view[: fmt.HEADER_SIZE].cast("Q")
            try:
                positions = _positions(hdr)
            finally:
                hdr.release()
            if positions is not None:
                fmt.check_positions(positions[0], positions[1], header.capacity)
            return cls(region, header, lock_fd, lock_path=lock_path, spin=spin,
                       claims=(pclaim, pclaim if strict else cclaim),
                       identity=(st.st_dev, st.st_ino))
        except BaseException:
            for f in fds:
                os.close(f)
            if region is not None:
                region.close()
            raise
        finally:
            os.close(fd)  # the mapping holds the file; our locks use their own descriptions

    @classmethod
    def anonymous(cls, capacity: int = 1 << 20, *, multi_producer: bool = False,
                  multi_consumer: bool = False, broadcast: bool = False,
                  spin: float = _DEFAULT_SPIN) -> Channel:
        """A channel in anonymous shared memory: create it before ``fork()``; the children
        inherit it.  It has no name, cannot be pickled, and vanishes with its last user."""
        cap = fmt.round_capacity(capacity)
        flags = ((fmt.FLAG_MULTI_PRODUCER if multi_producer else 0)
                 | (fmt.FLAG_MULTI_CONSUMER if multi_consumer else 0)
                 | (fmt.FLAG_BROADCAST if broadcast else 0))
        if broadcast and multi_consumer:
            raise ValueError("broadcast channels have subscribers, each with its own cursor; "
                             "drop multi_consumer=True")
        header_bytes = fmt.encode_header(cap, flags)
        region = Region.anonymous(fmt.HEADER_SIZE + cap)
        region.view[: len(header_bytes)] = header_bytes
        # The liveness locks need a file: an unlinked temporary one, reopened after fork.
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix="mmapkit-chan-lock-")
        os.unlink(tmp)
        # And the doorbell a FIFO: made now so that fork children inherit the same one.
        directory = tempfile.mkdtemp(prefix="mmapkit-chan-bell-")
        try:
            bell = os.path.join(directory, "bell")
            os.mkfifo(bell, 0o600)
            bell_fd = os.open(bell, os.O_RDWR | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            os.unlink(bell)
        finally:
            os.rmdir(directory)
        return cls(region, fmt.decode_header(header_bytes), fd, lock_path=None, spin=spin,
                   bell_fd=bell_fd)

    def __reduce__(self) -> tuple[Any, ...]:
        if self._path is None:
            raise TypeError("an anonymous Channel cannot be pickled: children get it by fork(); "
                            "use Channel.create(path) to pass it to spawned processes")
        return (_reopen, (self._path, self._spin))

    def _after_fork(self) -> None:
        """In a fork child: get our own lock-file description and forget the parent's roles."""
        if self._closed:
            return
        # A new open file description for each lock file (an inherited descriptor shares
        # the parent's locks: our LOCK_UN would drop them).  By name only when the name
        # still leads to the same file (it may have been unlinked and re-created), else
        # through /proc/self/fd (also how an anonymous channel's unlinked files reopen).
        try:
            same = self._cclaim == self._pclaim
            self._lock_fd = _reopen_fd(self._lock_fd, self._lock_path)
            self._pclaim = _reopen_fd(self._pclaim, self._path)
            self._cclaim = self._pclaim if same else _reopen_fd(self._cclaim, self._lock_path)
        except BaseException:
            # Never leave a half-detached handle (or the parent's descriptions) in the
            # child: close the inherited descriptors and make this handle a closed one.
            # Closing a descriptor does not release a lock its description still has in
            # the parent.
            self._closed = True
            self._pslot = self._cslot = None
            self._send_fast = self._recv_fast = False
            self._send_limit = -1
            fds = {self._lock_fd, self._pclaim, self._cclaim, self._bell}
            self._fdbox[:] = sorted(fd for fd in fds if fd >= 0)
            _close_fds(self._fdbox)
            self._bell = -1
            raise
        self._sync_fds()
        self._pslot = self._cslot = None
        self._pbusy = self._cbusy = self._ptoken = self._ctoken = -1  # the parent's
        self._send_fast = self._recv_fast = False
        self._send_limit = -1
        self._finished = False
        self._send_mutex = threading.Lock()
        self._recv_mutex = threading.Lock()
        self._attach_mutex = threading.Lock()
        self._fence = threading.Lock()
        self._sent = self._sent_bytes = self._received = self._received_bytes = 0
        self._full_waits = self._empty_waits = 0

    # --- properties -------------------------------------------------------------------

    @property
    def path(self) -> str | None:
        return self._path

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def max_message(self) -> int:
        """The largest message :meth:`send` accepts."""
        return self._max

    @property
    def multi_producer(self) -> bool:
        return self._mp

    @property
    def multi_consumer(self) -> bool:
        return self._mc

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def spin(self) -> float:
        """Seconds to busy-poll before sleeping (``float('inf')``: never sleep)."""
        return self._spin

    @spin.setter
    def spin(self, value: float) -> None:
        self._spin = float(value)

    # --- participants -----------------------------------------------------------------

    def _sync_fds(self) -> None:
        fds = {self._lock_fd, self._pclaim, self._cclaim, self._bell}
        self._fdbox[:] = sorted(fd for fd in fds if fd >= 0)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this Channel handle is closed; open the channel again")

    def _alive(self, slot: int) -> bool:
        return _slots.alive(self._lock_fd, slot, (self._pslot, self._cslot))

    def _attach(self, role: int) -> int:
        """Take a participant slot for ``role`` and hold its lock for as long as we live."""
        with self._attach_mutex:  # the kernel locks below do not exclude our own threads
            slot = self._pslot if role == _PRODUCER else self._cslot
            return slot if slot is not None else self._attach_locked(role)

    def _attach_locked(self, role: int) -> int:
        self._check_open()
        if role == _PRODUCER and self._finished:
            raise ClosedError("this handle called finish(); it cannot send any more")
        if role == _CONSUMER and self._bc:
            raise ModeConflictError("this is a broadcast channel: call subscribe(name) on the "
                                    "handle first, then receive")
        # Map the whole ring into this process now, not one page fault at a time while
        # messages flow (the kernel may refuse: then faults happen as usual).
        with contextlib.suppress(OSError, ValueError):
            self._region.advise("populate", fmt.HEADER_SIZE, self._cap)
        multi = self._mp if role == _PRODUCER else self._mc
        slot, token = _slots.take(self._hdr32, self._lock_fd, role, multi,
                                  (self._pslot, self._cslot))
        if role == _PRODUCER:
            self._pbusy, self._ptoken = _slot_word(slot, _F_PBUSY), token
            self._pslot = slot
            self._send_fast = not (self._plocked or self._bc)
            self._send_limit = self._max if self._send_fast else -1
        else:
            self._cbusy, self._ctoken = _slot_word(slot, _F_CBUSY), token
            self._cslot = slot
            self._recv_fast = not self._clocked
        return slot

    def _census(self, role: int) -> tuple[int, int, int]:
        """(alive, gone, finished) participants of ``role`` (finished: producers only)."""
        return _slots.census(self._hdr32, self._lock_fd, role, (self._pslot, self._cslot))

    def _announce(self, role: int, sleeping: bool) -> None:
        """Raise or lower our "sleeping" flag so the other side knows to wake us."""
        h32 = self._hdr32
        slot = self._cslot if role == _CONSUMER else self._pslot
        assert slot is not None
        h32[_slot_word(slot, _F_SLEEPING)] = int(sleeping)
        word = _CW_I if role == _CONSUMER else _PW_I
        epoch = _CE_I if role == _CONSUMER else _PE_I
        shared = (self._mc or self._bc) if role == _CONSUMER else self._mp
        if not shared:
            if sleeping:
                h32[epoch] = (h32[epoch] + 1) & 0xFFFFFFFF
            h32[word] = int(sleeping)
            return
        # Several sleepers share the counter: recount under the role's claim lock, skipping
        # flags left behind by dead sleepers.
        claim = self._cclaim if role == _CONSUMER else self._pclaim
        fcntl.flock(claim, fcntl.LOCK_EX)
        try:
            count = _slots.sleepers(h32, self._lock_fd, role, (self._pslot, self._cslot))
            if sleeping:
                h32[epoch] = (h32[epoch] + 1) & 0xFFFFFFFF
            h32[word] = count
        finally:
            fcntl.flock(claim, fcntl.LOCK_UN)

    # --- waiting ----------------------------------------------------------------------

    def _wake_consumers(self) -> None:
        """Someone sleeps for data: wake them, once per sleep (the epoch tells which)."""
        epoch = self._hdr32[_CE_I]
        if epoch != self._woke_consumers:
            self._woke_consumers = epoch
            self._head_w.wake()
            if self._hdr32[_BELL_I]:
                self._ring()

    def _wake_producers(self) -> None:
        epoch = self._hdr32[_PE_I]
        if epoch != self._woke_producers:
            self._woke_producers = epoch
            self._tail_w.wake()
            if self._hdr32[_BELL_I]:
                self._ring()

    def _spin_until(self, index: int, value: int, deadline: float | None) -> bool:
        """Busy-poll header word ``index`` for up to ``spin`` seconds; True if it moved."""
        hdr = self._hdr
        yield_cpu = self._spin != float("inf")  # spin=inf asks for pure busy-polling
        sched_yield = os.sched_yield
        end = time.monotonic() + self._spin
        if deadline is not None and deadline < end:
            end = deadline
        while True:
            for _ in range(64):
                if hdr[index] != value:
                    return True
            if time.monotonic() >= end:
                return False
            if yield_cpu:
                # Spin, then yield (Disruptor's ladder): on a busy machine the peer we wait
                # for may be runnable on this very CPU; a yield costs ~1 us when it is not.
                sched_yield()

    def _await_data(self, tail: int, deadline: float | None) -> None:
        """Return once head moved past ``tail``; raise at the end of the stream, when every
        producer is gone, or at the deadline (queue.Empty)."""
        self._await(_HEAD_Q, tail, deadline)

    def _await_room(self, tail: int, deadline: float | None) -> None:
        """Return once tail moved past ``tail``; raise when every consumer died, or at the
        deadline (queue.Full)."""
        self._await(_TAIL_Q, tail, deadline)

    def _await(self, index: int, value: int, deadline: float | None) -> None:
        """Wait for header word ``index`` (head: a consumer waits for data; tail: a producer
        waits for room) to move from ``value``: spin, then sleep in slices, looking at the
        peers that could move it only after a slice brought nothing (so the common wake-up
        costs no census syscalls)."""
        hdr = self._hdr
        if self._spin > 0 and self._spin_until(index, value, deadline):
            return
        for_data = index == _HEAD_Q
        if for_data:
            self._empty_waits += 1
        else:
            self._full_waits += 1
        me, peers = (_CONSUMER, _PRODUCER) if for_data else (_PRODUCER, _CONSUMER)
        waiter = self._head_w if for_data else self._tail_w
        looked = False
        while True:
            if hdr[index] != value:
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            expired = remaining is not None and remaining <= 0
            if looked or expired:
                alive, gone, finished = self._census(peers)
                if hdr[index] != value:  # moved just before the peer finished or died
                    return
                if not alive and gone and for_data:
                    raise BrokenError(f"every producer of {self._where()} is gone without "
                                      "finish() (killed, or closed its handle); nothing more "
                                      "will arrive")
                if not alive and gone:
                    raise BrokenError(f"every consumer of {self._where()} died with the "
                                      "channel full; nothing will make room")
                if for_data and not alive and finished:
                    raise EndOfChannel(f"every producer of {self._where()} finished the "
                                       "stream and all its messages were received")
                if expired:
                    raise queue.Empty if for_data else queue.Full
            nap = _SLICE if remaining is None else min(_SLICE, remaining)
            self._announce(me, True)
            try:
                now = hdr[index]
                if now != value:
                    return
                waiter.wait(now & 0xFFFFFFFF, nap)
            finally:
                self._announce(me, False)
            looked = True

    def _where(self) -> str:
        return self._path or "the anonymous channel"

    def _p_enter(self, deadline: float | None) -> None:
        """Step S1: take the producers' claim (the lease, or the flock)."""
        if not self._please:
            self._claim(self._pclaim, deadline, True)
            return
        h32, busy = self._hdr32, self._pbusy
        try:
            h32[busy] = 1  # L1
            self._fence.acquire()  # L2
            self._fence.release()
            if h32[_PLEASE_I] == self._ptoken:  # L3
                return
        except BaseException:  # KeyboardInterrupt: a busy word left up would stall thieves
            h32[busy] = 0
            raise
        h32[busy] = 0  # L4
        self._steal(_PLEASE_I, _F_PBUSY, self._ptoken, self._pclaim, deadline, True)

    def _p_leave(self) -> None:
        """Step S6: let the producers' claim go."""
        if self._please:
            self._hdr32[self._pbusy] = 0  # L9
        else:
            fcntl.flock(self._pclaim, fcntl.LOCK_UN)

    def _c_enter(self, deadline: float | None) -> None:
        """Step R1: take the consumers' claim (the lease, or the flock)."""
        if not self._clease:
            self._claim(self._cclaim, deadline, False)
            return
        h32, busy = self._hdr32, self._cbusy
        try:
            h32[busy] = 1
            self._fence.acquire()
            self._fence.release()
            if h32[_CLEASE_I] == self._ctoken:
                return
        except BaseException:
            h32[busy] = 0
            raise
        h32[busy] = 0
        self._steal(_CLEASE_I, _F_CBUSY, self._ctoken, self._cclaim, deadline, False)

    def _c_leave(self) -> None:
        """Step R4: let the consumers' claim go."""
        if self._clease:
            self._hdr32[self._cbusy] = 0
        else:
            fcntl.flock(self._cclaim, fcntl.LOCK_UN)

    def _lease_place(self, need: int) -> int:
        """The common case of steps S1-S3 in one call: we hold the producers' lease (L1-L3)
        and a frame of ``need`` bytes fits before the ring's end and below the room we saw
        last; returns its head position, inside the claim.  Else -1, outside any claim
        (the caller takes the general path: _acquire_space)."""
        h32, busy = self._hdr32, self._pbusy
        try:
            h32[busy] = 1
            self._fence.acquire()
            self._fence.release()
            if h32[_PLEASE_I] == self._ptoken:
                head: int = self._hdr[_HEAD_Q]
                if head % self._cap + need <= self._cap and head + need <= self._room_end:
                    return head
        except BaseException:
            h32[busy] = 0
            raise
        h32[busy] = 0
        return -1

    def _lease_take(self) -> tuple[int, int, int] | None:
        """The common case of steps R1-R2 in one call: we hold the consumers' lease and a
        data frame is there; returns what _take() returns, inside the claim.  Else None,
        outside any claim (the caller takes the general path: _take)."""
        h32, busy = self._hdr32, self._cbusy
        try:
            h32[busy] = 1
            self._fence.acquire()
            self._fence.release()
            if h32[_CLEASE_I] == self._ctoken:
                hdr = self._hdr
                tail = hdr[_TAIL_Q]
                head = hdr[_HEAD_Q]
                pos = tail % self._cap
                n = self._dq[pos >> 3]  # a PAD or damage has high bits: n + 8 > head - tail
                if head != tail and pos + 8 + n <= self._cap and n + 8 <= head - tail:
                    return tail, pos + 8, n
        except BaseException:
            h32[busy] = 0
            raise
        h32[busy] = 0
        return None

    def _steal(self, lease: int, field: int, token: int, fd: int, deadline: float | None,
               full: bool) -> None:
        """Steps L5-L8: take the lease from whoever holds it (live and idle, in a claim,
        or dead) and return inside the claim, busy.  ``token``: our lease name, the
        attach generation of our slot << 8 | 1 + the slot."""
        h32 = self._hdr32
        slot = (token & 0xFF) - 1
        self._claim(fd, deadline, full)  # L5: thieves one at a time
        try:
            h32[lease] = token  # L6
            self._fence.acquire()
            self._fence.release()
            if _PAUSES:
                _pause("channel.lease:stolen")
            self._await_idle(field, slot, deadline, full)  # L7
            h32[_slot_word(slot, field)] = 1  # L8: nobody else gets past L3 now
        except BaseException:
            h32[_slot_word(slot, field)] = 0
            raise
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _await_idle(self, field: int, me: int, deadline: float | None, full: bool) -> None:
        """Step L7: wait until every other participant's busy word ``field`` has read 0
        once since the lease changed hands (or its owner is dead)."""
        h32 = self._hdr32
        first = _slot_word(0, field)
        words = h32[first : first + fmt.SLOT_COUNT * (fmt.SLOT_SIZE // 4) : fmt.SLOT_SIZE // 4]
        try:
            waiting = [i for i, b in enumerate(words.tolist()) if b and i != me]
        finally:
            words.release()
        rounds = 0
        while waiting:
            waiting = [i for i in waiting if h32[_slot_word(i, field)]]
            if not waiting:
                return
            rounds += 1
            if rounds % _BUSY_SCAN == 0:
                # A process killed inside its claim leaves its busy word at 1: a dead
                # slot is out of every claim for good.
                waiting = [i for i in waiting if self._alive(i)]
                if not waiting:
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    raise queue.Full if full else queue.Empty
                if rounds >= 16 * _BUSY_SCAN:  # preempted inside its claim: do not spin
                    time.sleep(0.0002)
                    continue
            os.sched_yield()

    def _claim(self, fd: int, deadline: float | None, full: bool) -> None:
        """Take a claim lock (producers' or consumers'), honouring the deadline.  Polls
        start short: a claim is held for microseconds, not for a write to disk."""
        if not flock_until(fd, fcntl.LOCK_EX, deadline, first=0.0001, most=0.005):
            raise queue.Full if full else queue.Empty

    def _open_claims(self, strict: bool) -> tuple[int, int]:
        """The claim descriptors of an anonymous channel: unlinked temporary files (a named
        channel gets its claims from open(), checked to be of its own files)."""
        import tempfile

        fds = []
        for _ in range(1 if strict else 2):
            fd, tmp = tempfile.mkstemp(prefix="mmapkit-chan-claim-")
            os.unlink(tmp)
            fds.append(fd)
        return fds[0], fds[-1]

    # --- sending ----------------------------------------------------------------------

    def _too_large(self, n: int) -> MessageTooLargeError:
        return MessageTooLargeError(
            f"a message of {n} bytes cannot fit a channel whose ring holds {self._cap} bytes "
            f"(largest message {self._max}); create the channel with a larger capacity, or "
            "split the message")

    def _place(self, need: int) -> int:
        """Where a frame of ``need`` bytes can go now: its head position, or -1 when the
        ring is too full.  Writes (and publishes) a PAD frame when the frame would cross
        the end of the ring.  The caller holds the producer claim if there is one."""
        hdr, cap = self._hdr, self._cap
        head = hdr[_HEAD_Q]
        tail = hdr[_TAIL_Q]
        self._tail_seen = tail
        self._room_end = tail + cap
        pos = head % cap
        if pos + need > cap:
            pad = cap - pos
            if head + pad - tail > cap:
                return -1
            self._dq[pos >> 3] = _PAD_WORD
            head += pad
            hdr[_HEAD_Q] = head
            if self._hdr32[_CW_I]:
                self._wake_consumers()
        if head + need - tail > cap:
            return -1
        return int(head)

    def _acquire_space(self, need: int, deadline: float | None) -> int:
        """Block until ``need`` bytes are free (steps S1-S3); returns the head position to
        write at.  With a producer claim lock, returns holding it."""
        while True:
            if self._plocked:
                self._p_enter(deadline)
            try:
                head = self._place(need)
            except BaseException:
                if self._plocked:
                    self._p_leave()
                raise
            if head >= 0:
                return head
            tail = self._tail_seen
            if self._plocked:
                self._p_leave()
            self._await_room(tail, deadline)

    def send(self, data: bytes | bytearray | memoryview, timeout: float | None = None) -> None:
        """Send one message; block while the ring is full (queue.Full after ``timeout``)."""
        # The hot path: a handful of memoryview operations, no syscall, no lock.
        if data.__class__ is not bytes:
            data = _payload(data)
        n = len(data)
        if n > self._send_limit:  # too large, or not on the fast path (limit -1)
            self._send_slow(data, n, timeout)
            return
        need = (n + 15) & ~7
        hdr = self._hdr
        cap = self._cap
        head = hdr[8]  # _HEAD_Q
        pos = head % cap
        if pos + need > cap or head + need > self._room_end:
            head = self._acquire_space(need, _deadline(timeout))
            pos = head % cap
        try:
            pack = self._framers[n]
        except KeyError:
            pack = self._framer(n)
        pack(self._data, pos, n, data)  # the length word and the payload
        hdr[8] = head + need  # publish
        if self._hdr32[18]:  # _CW_I: a consumer sleeps
            self._wake_consumers()
        self._sent += 1
        self._sent_bytes += n

    def _framer(self, n: int) -> Callable[[memoryview, int, int, Any], None]:
        """pack(ring, pos, n, payload): the length word and an ``n``-byte payload of a frame
        at ring offset ``pos`` (both are written before the head store publishes them)."""
        if n > _FRAMED_MAX:
            return _write_frame
        pack = self._framers[n] = struct.Struct(f"<Q{n}s").pack_into
        return pack

    def _send_slow(self, data: bytes | memoryview, n: int, timeout: float | None) -> None:
        if self._finished:
            raise ClosedError("this handle called finish(); it cannot send any more")
        if self._pslot is None:
            self._attach(_PRODUCER)
        if n > self._max:
            raise self._too_large(n)
        if self._bc:
            self._send_broadcast(data, n, timeout)
        elif self._plocked:
            self._send_locked(data, n, fmt.frame_size(n), timeout)
        else:
            self.send(data, timeout)

    def _send_locked(self, data: bytes | memoryview, n: int, need: int,
                     timeout: float | None) -> None:
        # acquire()/release(), not ``with``: a with-statement on a lock costs twice as much
        mutex = self._send_mutex
        mutex.acquire()
        try:
            head = self._lease_place(need) if self._please else -1
            if head < 0:
                head = self._acquire_space(need, _deadline(timeout))
            try:
                _write_frame(self._data, head % self._cap, n, data)
                self._hdr[_HEAD_Q] = head + need
            finally:
                self._p_leave()
            if self._hdr32[_CW_I]:
                self._wake_consumers()
            self._sent += 1
            self._sent_bytes += n
        finally:
            mutex.release()

    def send_nowait(self, data: bytes | bytearray | memoryview) -> None:
        """Send without waiting; raise queue.Full when the ring has no room now."""
        self.send(data, timeout=0)

    def send_many(self, messages: Iterable[bytes | bytearray | memoryview],
                  timeout: float | None = None) -> int:
        """Send messages in order, publishing them together where they fit (one head store
        and at most one wake-up per batch).  Returns how many were sent: all of them, or,
        when ``timeout`` (which applies to each wait for room) ran out after some were
        sent, that many (the rest were not); queue.Full only when none was sent."""
        count = 0
        try:
            if self._bc:
                for item in messages:
                    self.send(item, timeout)
                    count += 1
                return count
            if self._pslot is None:
                self._attach(_PRODUCER)
            cap, data, hdr = self._cap, self._data, self._hdr
            with self._send_mutex if self._plocked else contextlib.nullcontext():
                batch: list[memoryview | bytes] = []
                for item in messages:
                    batch.append(item if item.__class__ is bytes else _payload(item))
                    if len(batch) < 256:
                        continue
                    sent = self._send_batch(batch, timeout, cap, data, hdr)
                    count += sent
                    if sent < len(batch):
                        return count
                    batch = []
                if batch:
                    count += self._send_batch(batch, timeout, cap, data, hdr)
        except queue.Full:
            if count:
                return count
            raise
        return count

    def _send_batch(self, batch: list[memoryview | bytes], timeout: float | None, cap: int,
                    data: memoryview, hdr: memoryview) -> int:
        for item in batch:
            if len(item) > self._max:
                raise self._too_large(len(item))
        i = 0
        while i < len(batch):
            first = batch[i]
            try:
                head = self._acquire_space(fmt.frame_size(len(first)), _deadline(timeout))
            except queue.Full:
                if i:
                    return i  # the first i went out; the caller reports how many
                raise
            try:
                limit = self._tail_seen + cap
                nbytes = 0
                framers, framer = self._framers, self._framer
                while i < len(batch):
                    item = batch[i]
                    n = len(item)
                    need = (n + 15) & ~7
                    pos = head % cap
                    if pos + need > cap or head + need > limit:
                        break
                    (framers.get(n) or framer(n))(data, pos, n, item)
                    head += need
                    nbytes += n
                    i += 1
                    self._sent += 1
                hdr[_HEAD_Q] = head
                self._sent_bytes += nbytes
            finally:
                if self._plocked:
                    self._p_leave()
            if self._hdr32[_CW_I]:
                self._wake_consumers()
        return len(batch)

    def _in_place_need(self, n: int) -> int:
        """Checks shared by reserve() and _send_with(); the ring bytes an ``n``-byte frame
        takes (length word and payload, padded to 8)."""
        if self._bc:
            raise ModeConflictError("reserve() writes in place, which a broadcast channel "
                                    "cannot offer; use send()")
        if self._pslot is None:
            self._attach(_PRODUCER)
        if n < 0:
            raise ValueError(f"cannot reserve {n} bytes")
        if n > self._max:
            raise self._too_large(n)
        return fmt.frame_size(n)

    @contextlib.contextmanager
    def reserve(self, n: int, timeout: float | None = None) -> Iterator[memoryview]:
        """``with ch.reserve(n) as buf:`` fill ``buf`` (n bytes inside the ring) in place;
        the message is published when the block ends, and dropped if it raises.

        With ``multi_producer`` the producer claim is held for the whole block: keep it
        short.  Do not keep ``buf`` (or views of it) after the block.
        """
        need = self._in_place_need(n)
        with self._send_mutex if self._plocked else contextlib.nullcontext():
            head = self._acquire_space(need, _deadline(timeout))
            done = False
            try:
                pos = head % self._cap
                buf = self._data[pos + 8 : pos + 8 + n]
                try:
                    yield buf
                finally:
                    buf.release()
                done = True
            finally:
                self._end_in_place(head, n, need, done)

    def _end_in_place(self, head: int, n: int, need: int, publish: bool) -> None:
        """The end of reserve() and _send_with(): the length word and head store (S4-S5)
        when ``publish``, then the unclaim and wake-up (S6) either way."""
        try:
            if publish:
                self._dq[(head % self._cap) >> 3] = n
                self._hdr[_HEAD_Q] = head + need
        finally:
            if self._plocked:
                self._p_leave()
        if publish:
            if self._hdr32[_CW_I]:
                self._wake_consumers()
            self._sent += 1
            self._sent_bytes += n

    def finish(self) -> None:
        """End this producer's stream: once every producer finished, receivers drain what
        is left and then get EndOfChannel.  Further sends from this handle raise."""
        if self._pslot is None:
            self._attach(_PRODUCER)
        assert self._pslot is not None
        self._hdr32[_slot_word(self._pslot, _F_STATE)] = _FINISHED
        self._finished = True
        self._send_fast = False
        self._send_limit = -1
        self._head_w.wake()

    # --- receiving --------------------------------------------------------------------

    def _bad_frame(self, tail: int, head: int) -> Exception:
        try:
            fmt.decode_frame(self._data, tail % self._cap, limit=head - tail)
        except Exception as exc:
            return exc
        return BrokenError(f"inconsistent frame at position {tail} of {self._where()}")

    def recv(self, timeout: float | None = None) -> bytes:
        """Receive one message; block while the ring is empty (queue.Empty after
        ``timeout``).  EndOfChannel when the stream finished, BrokenError when every
        producer is gone and the ring is drained."""
        if not self._recv_fast:
            return self._recv_slow(timeout)
        hdr = self._hdr
        tail = hdr[16]  # _TAIL_Q
        cap = self._cap
        end = self._readable_end
        if tail >= end:
            head = hdr[8]
            if head == tail:
                self._await_data(tail, _deadline(timeout))
                head = hdr[8]
            wrap = tail - tail % cap + cap
            end = self._readable_end = head if head < wrap else wrap
        pos = tail % cap
        n = self._dq[pos >> 3]
        if tail + 8 + n > end:  # PAD (kind bits), damage, or the frame ends past head or wrap
            return self._recv_slow(timeout)
        at = self._base8 + pos
        out = self._mm[at : at + n]
        hdr[16] = tail + ((n + 15) & ~7)  # release the bytes to the producer
        if self._hdr32[34]:  # _PW_I: a producer sleeps
            self._wake_producers()
        self._received += 1
        self._received_bytes += n
        return out

    def _recv_slow(self, timeout: float | None) -> bytes:
        if self._bc:
            return self._recv_broadcast(timeout)
        if self._cslot is None:
            self._attach(_CONSUMER)
        if self._clocked:
            return self._recv_locked(timeout)
        # Unlocked single consumer: skip PAD frames, check the frame, then the fast path.
        hdr, cap = self._hdr, self._cap
        while True:
            tail = hdr[_TAIL_Q]
            head = hdr[_HEAD_Q]
            if head == tail:
                return self.recv(timeout)
            pos = tail % cap
            word = self._dq[pos >> 3]
            if word == _PAD_WORD:
                hdr[_TAIL_Q] = tail + cap - pos
                continue
            n = word & 0xFFFFFFFF
            if word >> 32 or pos + 8 + n > cap or n + 8 > head - tail:
                raise self._bad_frame(tail, head)
            self._readable_end = 0  # the fast path looks at head again (it may be stale)
            return self.recv(timeout)

    def _take(self, deadline: float | None) -> tuple[int, int, int]:
        """Find the next message: (tail, payload position, length).  Skips PAD frames.
        With a consumer claim lock, returns holding it."""
        hdr, cap = self._hdr, self._cap
        while True:
            if self._clocked:
                self._c_enter(deadline)
            try:
                while True:
                    tail = hdr[_TAIL_Q]
                    head = hdr[_HEAD_Q]
                    if head == tail:
                        break
                    pos = tail % cap
                    word = self._dq[pos >> 3]
                    n = word & 0xFFFFFFFF
                    if word >> 32 or pos + 8 + n > cap or n + 8 > head - tail:
                        if word == _PAD_WORD:
                            hdr[_TAIL_Q] = tail + cap - pos
                            continue
                        raise self._bad_frame(tail, head)
                    return tail, pos + 8, n
            except BaseException:
                if self._clocked:
                    self._c_leave()
                raise
            if self._clocked:
                self._c_leave()
            self._await_data(tail, deadline)

    def _release(self, tail: int, n: int) -> None:
        self._hdr[_TAIL_Q] = tail + ((n + 15) & ~7)
        if self._clocked:
            self._c_leave()
        if self._hdr32[_PW_I]:
            self._wake_producers()
        self._received += 1
        self._received_bytes += n

    def _recv_locked(self, timeout: float | None) -> bytes:
        mutex = self._recv_mutex
        mutex.acquire()
        try:
            taken = self._lease_take() if self._clease else None
            tail, start, n = taken or self._take(_deadline(timeout))
            try:
                out = self._mm[self._base + start : self._base + start + n]
            except BaseException:
                if self._clocked:
                    self._c_leave()
                raise
            self._release(tail, n)
            return out
        finally:
            mutex.release()

    def recv_nowait(self) -> bytes:
        """Receive without waiting; queue.Empty when nothing is there now."""
        return self.recv(timeout=0)

    def recv_many(self, max_messages: int = 1024, max_bytes: int | None = None,
                  timeout: float | None = None) -> list[bytes]:
        """Wait (up to ``timeout``) for at least one message, then take what is there, up to
        ``max_messages`` and ``max_bytes`` of payload (at least one message is returned even
        if it alone exceeds ``max_bytes``).  One tail store and one wake-up per call."""
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        if self._bc:
            got = [self.recv(timeout)]
            size = len(got[0])
            with contextlib.suppress(queue.Empty, EndOfChannel, BrokenError):
                while len(got) < max_messages:
                    try:
                        msg = self.recv_nowait()
                    except OverrunError as exc:  # keep what we have; report it next call
                        self._pending_overrun = exc
                        break
                    if max_bytes is not None and size + len(msg) > max_bytes:
                        self._cursor_back(msg)
                        break
                    got.append(msg)
                    size += len(msg)
            return got
        if self._cslot is None:
            self._attach(_CONSUMER)
        limit_bytes = max_bytes if max_bytes is not None else 1 << 62
        with self._recv_mutex if self._clocked else contextlib.nullcontext():
            tail, start, n = self._take(_deadline(timeout))
            hdr, cap, dq = self._hdr, self._cap, self._dq
            mm, base = self._mm, self._base
            out = []
            total = 0
            try:
                head = hdr[_HEAD_Q]
                while True:
                    out.append(mm[base + start : base + start + n])
                    total += n
                    tail += (n + 15) & ~7
                    if len(out) >= max_messages or tail == head:
                        break
                    pos = tail % cap
                    word = dq[pos >> 3]
                    if word == _PAD_WORD:
                        tail += cap - pos
                        if tail == head:
                            break
                        pos = 0
                        word = dq[0]
                    n = word & 0xFFFFFFFF
                    if word >> 32 or pos + 8 + n > cap or n + 8 > head - tail:
                        raise self._bad_frame(tail, head)
                    if total + n > limit_bytes:
                        break
                    start = pos + 8
                hdr[_TAIL_Q] = tail
            finally:
                if self._clocked:
                    self._c_leave()
            if self._hdr32[_PW_I]:
                self._wake_producers()
            self._received += len(out)
            self._received_bytes += total
            return out

    @contextlib.contextmanager
    def recv_view(self, timeout: float | None = None) -> Iterator[memoryview]:
        """``with ch.recv_view() as mv:`` read the next message in place (no copy); it is
        consumed when the block ends, even if the block raises.  ``mv`` is read-only
        and invalid after the block; copy what you keep."""
        if self._bc:
            raise ModeConflictError("a broadcast producer may overwrite what a view shows; "
                                    "use recv() on broadcast channels")
        if self._cslot is None:
            self._attach(_CONSUMER)
        with self._recv_mutex if self._clocked else contextlib.nullcontext():
            tail, start, n = self._take(_deadline(timeout))
            view = self._data[start : start + n].toreadonly()
            try:
                yield view
            finally:
                view.release()
                self._release(tail, n)

    def _send_with(self, n: int, fill: Callable[[memoryview, int], None],
                   deadline: float | None = None) -> None:
        """:meth:`reserve` as a plain call, for mmapkit.ipc.queue (a generator-based
        context manager costs as much as the send itself): ``fill(ring, at)`` writes the
        ``n``-byte payload at offset ``at`` of the ring view, in place under the producer
        claim (steps S1-S4); the frame is published (S5-S6) when it returns, and dropped
        if it raises.  ``deadline`` is a time.monotonic() value (None: wait for room)."""
        need = self._in_place_need(n)
        mutex = self._send_mutex if self._plocked else None
        if mutex:
            mutex.acquire()
        try:
            head = self._lease_place(need) if self._please else -1
            if head < 0:
                head = self._acquire_space(need, deadline)
            done = False
            try:
                fill(self._data, head % self._cap + 8)
                done = True
            finally:
                self._end_in_place(head, n, need, done)
        finally:
            if mutex:
                mutex.release()

    def _recv_with(self, take: Callable[[mmap.mmap, int, int], Any],
                   deadline: float | None = None) -> Any:
        """:meth:`recv_view` as a plain call, for mmapkit.ipc.queue: ``take(mapping, at,
        n)`` reads the next message, ``n`` bytes at offset ``at`` of the mmap, in place
        under the consumer claim (steps R1-R2), and its result is returned; the message is
        consumed (R3-R4) when it returns, even if it raises.  ``take`` must not write the
        mapping nor keep a view of it.  ``deadline`` is a time.monotonic() value."""
        if self._cslot is None:
            if self._bc:
                raise ModeConflictError("a broadcast producer may overwrite what a view "
                                        "shows; use recv() on broadcast channels")
            self._attach(_CONSUMER)
        mutex = self._recv_mutex if self._clocked else None
        if mutex:
            mutex.acquire()
        try:
            taken = self._lease_take() if self._clease else None
            tail, start, n = taken or self._take(deadline)
            try:
                return take(self._mm, self._base + start, n)
            finally:
                self._release(tail, n)
        finally:
            if mutex:
                mutex.release()

    # --- broadcast --------------------------------------------------------------------

    @property
    def broadcast(self) -> bool:
        return self._bc

    @property
    def cursor(self) -> int:
        """A broadcast subscriber's read position (bytes since the channel was created)."""
        return self._cursor

    def subscribe(self, name: str) -> Channel:
        """Make this handle the broadcast subscriber ``name`` and return it.

        A new name starts at the oldest message the ring still retains; a name seen before
        resumes where it stopped (if the producer overwrote that meanwhile, the first
        receive raises OverrunError).  Each name is one live handle at a time.
        """
        with self._attach_mutex:  # the registry lock does not exclude our own threads
            return self._subscribe_locked(name)

    def _subscribe_locked(self, name: str) -> Channel:
        self._check_open()
        if not self._bc:
            raise ModeConflictError("subscribe() is for channels created with broadcast=True")
        if self._cslot is not None:
            raise ModeConflictError("this handle already subscribed; open another handle "
                                    "for another subscriber")
        raw = name.encode()
        if not 1 <= len(raw) <= fmt.NAME_SIZE:
            raise ValueError(f"a subscriber name is 1 to {fmt.NAME_SIZE} bytes of UTF-8, "
                             f"got {len(raw)}")
        slot = _slots.take_subscriber(self._hdr32, self._hdr8, self._lock_fd, raw,
                                      (self._pslot, self._cslot),
                                      lambda: int(self._hdr[_TAIL_Q]))
        self._cslot = slot
        self._cursor = int(self._hdr[_slot_byte(slot, fmt.SLOT_CURSOR) // 8])
        return self

    def _set_cursor(self, value: int) -> None:
        assert self._cslot is not None
        self._cursor = value
        self._hdr[_slot_byte(self._cslot, fmt.SLOT_CURSOR) // 8] = value

    def _cursor_back(self, msg: bytes) -> None:
        """Un-receive the message just received (recv_many's byte limit)."""
        self._set_cursor(self._cursor - fmt.frame_size(len(msg)))
        self._received -= 1
        self._received_bytes -= len(msg)

    def _send_broadcast(self, data: bytes | memoryview, n: int, timeout: float | None) -> None:
        """Publish to every subscriber; never waits for readers: the oldest messages are
        evicted (tail moves first, then the bytes are overwritten) to make room."""
        need = fmt.frame_size(n)
        hdr, cap, dq = self._hdr, self._cap, self._dq
        with self._send_mutex:
            if self._plocked:
                self._claim(self._pclaim, _deadline(timeout), True)
            try:
                head = hdr[_HEAD_Q]
                tail = hdr[_TAIL_Q]
                pos = head % cap
                pad = cap - pos if pos + need > cap else 0
                while tail < head and head + pad + need - tail > cap:
                    tpos = tail % cap
                    word = dq[tpos >> 3]
                    tail += cap - tpos if word == _PAD_WORD else fmt.frame_size(word & 0xFFFFFFFF)
                if tail != hdr[_TAIL_Q]:
                    hdr[_TAIL_Q] = tail  # readers see the eviction before the overwrite
                if pad:
                    dq[pos >> 3] = _PAD_WORD
                    head += pad
                    hdr[_HEAD_Q] = head
                    pos = 0
                    if head + need - tail > cap:
                        # Even the emptied ring needs the PAD itself gone.  Readers that were
                        # at the PAD lost nothing: say where it was, so they need not raise.
                        hdr[_PAD_EVICTED_Q] = tail
                        tail = head
                        hdr[_TAIL_Q] = tail
                _write_frame(self._data, pos, n, data)
                hdr[_HEAD_Q] = head + need
            finally:
                if self._plocked:
                    fcntl.flock(self._pclaim, fcntl.LOCK_UN)
        if self._hdr32[_CW_I]:
            self._wake_consumers()
        self._sent += 1
        self._sent_bytes += n

    def _overrun(self, cursor: int, tail: int) -> OverrunError:
        self._set_cursor(tail)
        return OverrunError(
            f"subscriber fell behind: the producer overwrote {tail - cursor} bytes of messages "
            "it had not read; it continues from the oldest retained message (a larger "
            "capacity, or a faster reader, avoids this)", lost_bytes=tail - cursor)

    def _recv_broadcast(self, timeout: float | None) -> bytes:
        if self._cslot is None:
            self._attach(_CONSUMER)  # raises: subscribe first
        if self._pending_overrun is not None:
            exc, self._pending_overrun = self._pending_overrun, None
            raise exc
        deadline = _deadline(timeout)
        hdr = self._hdr
        while True:
            c = self._cursor
            if hdr[_HEAD_Q] == c:
                self._await_data(c, deadline)
                continue
            if self._clocked:  # weakly ordered CPU: read under the producers' lock
                fcntl.flock(self._cclaim, fcntl.LOCK_EX)
            try:
                out = self._read_at(c)
            finally:
                if self._clocked:
                    fcntl.flock(self._cclaim, fcntl.LOCK_UN)
            if out is not None:
                self._received += 1
                self._received_bytes += len(out)
                return out

    def _read_at(self, c: int) -> bytes | None:
        """The message at cursor ``c`` (moving the cursor past it), or None after skipping
        a PAD; OverrunError if the producer evicted it before or while we copied it."""
        hdr, cap = self._hdr, self._cap
        head = hdr[_HEAD_Q]
        tail = hdr[_TAIL_Q]
        if c < tail:
            if c == hdr[_PAD_EVICTED_Q] and tail == c + cap - c % cap:
                self._set_cursor(tail)  # only a PAD was evicted under us: nothing lost
                return None
            raise self._overrun(c, tail)
        pos = c % cap
        word = self._dq[pos >> 3]
        if word == _PAD_WORD:
            if hdr[_TAIL_Q] > c:
                raise self._overrun(c, hdr[_TAIL_Q])
            self._set_cursor(c + cap - pos)
            return None
        n = word & 0xFFFFFFFF
        if word >> 32 or pos + 8 + n > cap or n + 8 > head - c:
            if hdr[_TAIL_Q] > c:  # overwritten while we looked
                raise self._overrun(c, hdr[_TAIL_Q])
            raise self._bad_frame(c, head)
        out = self._mm[self._base + pos + 8 : self._base + pos + 8 + n]
        if hdr[_TAIL_Q] > c:  # evicted during the copy: the bytes may be torn
            raise self._overrun(c, hdr[_TAIL_Q])
        self._set_cursor(c + fmt.frame_size(n))
        return out

    # --- doorbell and asyncio --------------------------------------------------------

    def fileno(self) -> int:
        """The channel's doorbell: a FIFO descriptor that turns readable when a waiting
        receiver (or sender) should look again.  For select/selectors/asyncio; see
        :meth:`armed` for the protocol, or just use :meth:`arecv` / :meth:`asend`."""
        self._check_open()
        if self._bell < 0:
            assert self._path is not None
            bell = self._path + ".bell"
            with contextlib.suppress(FileExistsError):
                os.mkfifo(bell, 0o600)
            self._bell = os.open(bell, os.O_RDWR | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            self._sync_fds()
        self._hdr32[_BELL_I] = 1  # from now on, wake-ups also ring the doorbell
        return self._bell

    def _ring(self) -> None:
        fd = self._bell if self._bell >= 0 else self.fileno()
        with contextlib.suppress(BlockingIOError):  # full: it is ringing already
            os.write(fd, b"\1")

    def _drain_bell(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._bell, 4096):
                pass

    @contextlib.contextmanager
    def armed(self, *, send: bool = False) -> Iterator[int]:
        """``with ch.armed() as fd: select([fd], ...)``: announce that this handle waits for a
        message (or, with ``send=True``, for room) through the doorbell, so the other side
        rings it.  Try ``recv_nowait()`` (``send_nowait()``) first and again after the
        wait; if something is already there when arming, the bell is rung at once.
        Wake-ups are hints: wait with a timeout (a lost one costs one timeout)."""
        role = _PRODUCER if send else _CONSUMER
        if (self._pslot if send else self._cslot) is None:
            self._attach(role)  # (a broadcast handle must have subscribed)
        fd = self.fileno()
        self._announce(role, True)
        try:
            hdr = self._hdr
            if send:
                ready = hdr[_HEAD_Q] - hdr[_TAIL_Q] < self._cap // 2
            else:
                ready = hdr[_HEAD_Q] != (self._cursor if self._bc else hdr[_TAIL_Q])
            if ready:
                self._ring()
            yield fd
        finally:
            self._announce(role, False)
            self._drain_bell()

    async def _await_bell(self, send: bool, nap: float) -> None:
        import asyncio  # already loaded by whoever runs the loop; not at import for the rest

        loop = asyncio.get_running_loop()
        with self.armed(send=send) as fd:
            ready = loop.create_future()

            def ring() -> None:
                if not ready.done():
                    ready.set_result(None)

            loop.add_reader(fd, ring)
            try:
                await asyncio.wait_for(ready, nap)
            except asyncio.TimeoutError:
                pass
            finally:
                loop.remove_reader(fd)

    async def arecv(self, timeout: float | None = None) -> bytes:
        """``await ch.arecv()``: :meth:`recv` for asyncio; the event loop keeps running
        while the ring is empty (it waits on the doorbell, never in a thread)."""
        deadline = _deadline(timeout)
        while True:
            try:
                return self.recv_nowait()
            except queue.Empty:
                pass
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise queue.Empty
            await self._await_bell(False, _SLICE if remaining is None
                                   else min(_SLICE, remaining))

    async def asend(self, data: bytes | bytearray | memoryview,
                    timeout: float | None = None) -> None:
        """``await ch.asend(data)``: :meth:`send` for asyncio (waits for room on the
        doorbell, never blocking the event loop)."""
        deadline = _deadline(timeout)
        while True:
            try:
                self.send_nowait(data)
                return
            except queue.Full:
                pass
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise queue.Full
            await self._await_bell(True, _SLICE if remaining is None
                                   else min(_SLICE, remaining))

    # --- objects ----------------------------------------------------------------------

    def send_obj(self, obj: Any, timeout: float | None = None) -> None:
        """Send a picklable object (pickle protocol 5).  Out-of-band buffers (numpy arrays,
        PickleBuffer) are copied straight into the ring: one copy, no intermediate bytes."""
        import pickle

        buffers: list[pickle.PickleBuffer] = []
        body = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        raws = fmt.pickle_buffers(buffers)
        total = fmt.obj_size(len(body), raws)
        try:
            if self._bc:  # no writing in place: subscribers may be reading there
                blob = bytearray(total)
                fmt.write_obj(blob, 0, body, raws)
                self.send(blob, timeout)
            else:
                self._send_with(total, lambda ring, at: fmt.write_obj(ring, at, body, raws),
                                _deadline(timeout))
        finally:
            for r in raws:
                r.release()

    def recv_obj(self, timeout: float | None = None) -> Any:
        """Receive an object sent by :meth:`send_obj`.  The message is copied once: the
        pickle alone (bytes) when it has no out-of-band buffer, else all of it into a
        bytearray whose views the buffers (numpy arrays) are (writable)."""
        blob = (bytearray(self.recv(timeout)) if self._bc
                else self._recv_with(_copy_obj, _deadline(timeout)))
        import pickle

        if blob.__class__ is bytes:
            return pickle.loads(blob)
        try:
            body, bufs = fmt.read_obj(memoryview(blob))
        except ValueError as exc:
            raise ValueError(f"the message is not an object sent by send_obj() ({exc}); "
                             "receive it with recv()") from None
        return pickle.loads(body, buffers=bufs)

    # --- status -----------------------------------------------------------------------

    def statistics(self) -> ChannelStatistics:
        """Counts of this handle (since open, or since fork in a child) and the ring now."""
        self._check_open()
        hdr = self._hdr
        head, tail = _positions(hdr) or (hdr[_HEAD_Q], hdr[_TAIL_Q])
        return ChannelStatistics(
            messages_sent=self._sent, bytes_sent=self._sent_bytes,
            messages_received=self._received, bytes_received=self._received_bytes,
            full_waits=self._full_waits, empty_waits=self._empty_waits,
            capacity=self._cap, used=int(head - tail),
            producers_alive=self._census(_PRODUCER)[0],
            consumers_alive=self._census(_CONSUMER)[0])

    def describe(self) -> dict[str, Any]:
        """The header and ring state as plain data (what ``mmapkit channel stat`` prints)."""
        self._check_open()
        h32 = self._hdr32
        head, tail = _positions(self._hdr) or (int(self._hdr[_HEAD_Q]), int(self._hdr[_TAIL_Q]))
        try:
            pending: int | None = sum(1 for _ in fmt.iter_frames(self._data, tail, head))
        except CorruptFileError:  # a live channel moved under us (or it is damaged: check())
            pending = None
        names = {_PRODUCER: "producer", _CONSUMER: "consumer", _FINISHED: "finished",
                 _SUBSCRIBER: "subscriber"}
        slots = []
        for i in range(fmt.SLOT_COUNT):
            st = h32[_slot_word(i, _F_STATE)]
            if st != _FREE:
                entry: dict[str, Any] = {"slot": i, "role": names.get(st, f"unknown {st}"),
                                         "pid": h32[_slot_word(i, _F_PID)], "alive": self._alive(i)}
                if st == _SUBSCRIBER:
                    at = _slot_byte(i, fmt.SLOT_NAME)
                    entry["name"] = bytes(self._hdr8[at : at + fmt.NAME_SIZE]).rstrip(
                        b"\0").decode(errors="replace")
                    entry["cursor"] = int(self._hdr[_slot_byte(i, fmt.SLOT_CURSOR) // 8])
                slots.append(entry)
        return {"path": self._path, "version": self._header.version,
                "capacity": self._cap, "max_message": self._max,
                "multi_producer": self._mp, "multi_consumer": self._mc, "broadcast": self._bc,
                "head": head, "tail": tail, "used": head - tail, "pending_messages": pending,
                "participants": slots}

    def check(self) -> None:
        """Verify the ring: positions, participant slots and every pending frame.  Raises
        CorruptFileError.  Safe on a live channel: a frame consumed (and perhaps
        overwritten) while it was being looked at is not damage, so the check looks again;
        bytes between tail and head are never written, so an error found while tail held
        still is real."""
        self._check_open()
        h32 = self._hdr32
        for i in range(fmt.SLOT_COUNT):
            st = h32[_slot_word(i, _F_STATE)]
            if st not in (_FREE, _PRODUCER, _CONSUMER, _FINISHED, _SUBSCRIBER):
                raise CorruptFileError(f"participant slot {i} of {self._where()} has the "
                                       f"unknown state {st}; the channel is damaged: unlink "
                                       "it and create it again", path=self._path,
                                       offset=_slot_byte(i, 0))
        for _ in range(1000):
            positions = _positions(self._hdr)
            if positions is None:
                continue
            head, tail = positions
            try:
                fmt.check_positions(head, tail, self._cap)
                for _ in fmt.iter_frames(self._data, tail, head):
                    if _PAUSES:
                        _pause("channel.check")
            except CorruptFileError:
                if self._hdr[_TAIL_Q] == tail:
                    raise
                continue  # consumed (or evicted) under us: look again
            return
        raise BrokenError(f"{self._where()} is too busy to check: its frames were consumed "
                          "and overwritten under every look; check it when it is quieter")

    # --- life cycle -------------------------------------------------------------------

    def close(self) -> None:
        """Release this handle (other handles and processes carry on).  A producer that
        closes without finish() counts as gone; idempotent.  Whatever fails on the way
        (a view still exported by the caller), every descriptor is closed, so every lock
        and slot of this handle is released."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._cslot is not None:
                self._hdr32[_slot_word(self._cslot, _F_SLEEPING)] = 0
                if not self._bc:  # a subscriber keeps its name and cursor for next time
                    self._hdr32[_slot_word(self._cslot, _F_STATE)] = _FREE
            self._pslot = self._cslot = None
            self._send_fast = self._recv_fast = False
            self._send_limit = -1
            for view in (self._dq, self._data, self._hdr, self._hdr32, self._hdr8):
                view.release()
            self._head_w.close()
            self._tail_w.close()
            self._region.close()
        finally:
            self._pslot = self._cslot = None
            self._send_fast = self._recv_fast = False
            self._send_limit = -1
            _close_fds(self._fdbox)
            self._bell = -1

    def unlink(self) -> None:
        """Remove the channel's file and lock file (handles already open keep working).

        Removes only what is still this channel's: when the path already names another
        channel (unlinked and re-created by someone else), nothing of that one is touched.
        The channel file goes first, its lock file second (open() relies on that order)."""
        if self._path is None:
            return
        if _unlink_if(self._path, self._identity):
            assert self._lock_path is not None
            _unlink_if(self._lock_path, self._lock_identity)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path + ".bell")

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"capacity={self._cap}"
        mode = ("MP" if self._mp else "SP") + ("MC" if self._mc else "SC")
        return f"<Channel {self._where()} {mode} {state}>"


def _reopen_fd(fd: int, path: str | None) -> int:
    """A fresh open file description of the file ``fd`` has open; closes ``fd``.

    By ``path`` when it still names that very file, else through /proc/self/fd: a path
    unlinked and re-created meanwhile leads to another channel's file."""
    new_fd = -1
    if path is not None:
        with contextlib.suppress(OSError):  # unlinked meanwhile: use the descriptor
            new_fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        if new_fd >= 0 and not _same_file(os.fstat(new_fd), os.fstat(fd)):
            os.close(new_fd)
            new_fd = -1
    if new_fd < 0:
        new_fd = _platform.reopen_fd(fd)
    os.close(fd)
    return new_fd


def _unlink_if(path: str, identity: tuple[int, int] | None) -> bool:
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


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return a.st_ino == b.st_ino and a.st_dev == b.st_dev


def _strict() -> bool:
    """True where every send and receive takes the kernel lock (see the top comment)."""
    return not _platform.IS_TSO or bool(os.environ.get("MMAPKIT_CHANNEL_STRICT"))


class _Replaced(Exception):
    """open(): the path was unlinked and re-created between two steps; start again."""


def _positions(hdr: memoryview) -> tuple[int, int] | None:
    """(head, tail) as they were at one instant, or None if they never held still.

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


def _deadline(timeout: float | None) -> float | None:
    """The time.monotonic() by which a wait of ``timeout`` seconds ends (None: never)."""
    return None if timeout is None else time.monotonic() + timeout


def _copy_obj(mapping: mmap.mmap, at: int, n: int) -> bytes | bytearray:
    """recv_obj()'s copy out of the ring: the pickle alone when the payload has no
    out-of-band buffer (what pickle.loads takes), else all of it."""
    if n >= _OBJ_HEAD_SIZE:
        count, _, body_len = fmt.OBJ_HEAD.unpack_from(mapping, at)
        if count == 0 and body_len <= n - _OBJ_HEAD_SIZE:
            return mapping[at + _OBJ_HEAD_SIZE : at + _OBJ_HEAD_SIZE + body_len]
    return bytearray(mapping[at : at + n])


def _close_fds(box: list[int]) -> None:
    """Close the descriptors in ``box`` once (explicit close() or garbage collection)."""
    while box:
        with contextlib.suppress(OSError):
            os.close(box.pop())


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def _reopen(path: str, spin: float) -> Channel:
    return Channel.open(path, spin=spin)


def _payload(data: bytes | bytearray | memoryview) -> bytes | memoryview:
    """A message that is not ``bytes`` as its bytes: a copy when short (what a cached
    Struct packs; a copy that short is cheap), else a byte view (no copy of a long one)."""
    view = memoryview(data).cast("B")
    return view.tobytes() if len(view) <= _FRAMED_MAX else view


def _write_frame(ring: memoryview, pos: int, n: int, payload: Any) -> None:
    """Write the frame of an ``n``-byte payload (any buffer, any length) at ring offset
    ``pos``: the payload, then its length word.  send() has a cached Struct per short
    length instead (see _framer)."""
    ring[pos + 8 : pos + 8 + n] = payload
    _U64.pack_into(ring, pos, n)
