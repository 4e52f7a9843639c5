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
  (``multi_consumer=True``) the tail: a lease entered with no syscall, stolen under a
  flock (``_claims.py``, steps L1-L9).  A claim is never held while waiting.
- Blocking: spin, then sleep in slices on the futex of the position, woken by the other
  side only when it sees a sleeper (``_wake.py``, with the doorbell FIFO for asyncio).
- Liveness: every participant takes a slot in the header and holds an exclusive lock on
  its slot's byte of the ``.lock`` file beside the channel (``_slots.py``).  A sleeper
  looks at the slots after a slice brought nothing: a producer slot whose lock is free
  belongs to a dead (or closed without finish()) producer.  A receiver whose producers
  are all gone gets BrokenError once it has drained the ring; when all of them called
  finish(), EndOfChannel.
- The concerns live beside this module, each with its rules and its steps: the files
  (``_files.py``: C1-C2, O1-O5, F1, U1-U2), the claims (``_claims.py``: L1-L9), waits
  and wake-ups (``_wake.py``), broadcast (``_broadcast.py``: B1-B2), writing and reading
  in place and objects (``_inplace.py``), the participant registry (``_slots.py``: A1-A6
  are its ``take()``).  This module is the handle and the ring's send and receive.
- The hot paths (send() and recv() of one producer and one consumer, the lease paths of
  several) spell the header's word indexes and the frame size ``(n + 15) & ~7`` as
  literals: a global or a call there costs more than the arithmetic.  Both are asserted
  against ``_format.py`` at import.
- send() and recv() of a handle that claims by lease go straight to ``_send_locked`` /
  ``_recv_locked`` (one test of ``_lease_send_limit`` / ``_lease_recv``: set when the
  handle attaches to a leased role, cleared by finish(), close() and in a fork child), not
  through ``_send_slow`` / ``_recv_slow``: a call layer is ~6% of an MPMC send + recv.

Cross-process protocol.  Locks: ``registry`` = OFD lock on byte 2 of ``<path>.lock``;
``slot i`` = OFD lock on byte 64+i of it, held for a handle's whole life; ``pclaim`` =
flock of the channel file (producers), ``cclaim`` = flock of ``<path>.lock`` (consumers;
strict mode: pclaim for both).  Every lock is the kernel's: a process killed at any step
loses all of them at once, and every step below is safe to die in (K column).  Steps
C, O, F, U: ``_files.py``; L: ``_claims.py``; B: ``_broadcast.py``.

    ====  =====================================  ==========  ===============================
    step  what                                   holds       another process may see
                                                             (after this step, before next)
    ====  =====================================  ==========  ===============================
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
    S4    length word and payload above head,    pclaim      nothing: bytes at and above
          in any order (unpublished until S5)                head are not published
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
    D1    finish(): PRODUCER -> FINISHED         slot        this producer ended its stream
    D2    close(): consumer slot -> FREE         slot        -
    D3    close descriptors (always, even when   -           the slot is dead: A3/A4 may
          a step of close() fails)                           reuse it
    ====  =====================================  ==========  ===============================

Nothing a reader does writes the ring, and nothing winds back a position: head and tail
only grow, each stored by its own side (tail also by a broadcast producer's eviction).
check() runs on a live channel: an error found while tail held still is damage; one found
after tail moved is a frame consumed under it, and it looks again.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import queue
import struct
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from .. import _platform
from .._testhooks import PAUSES as _PAUSES
from .._testhooks import pause as _pause
from ..errors import (
    BrokenError,
    ClosedError,
    CorruptFileError,
    EndOfChannel,
    MessageTooLargeError,
    ModeConflictError,
    OverrunError,
    UnsupportedPlatformError,
)
from ..region import Region
from ..wait import Waiter
from . import _files, _slots
from . import _format as fmt
from ._broadcast import Broadcast
from ._claims import Claims, open_claims, strict
from ._files import close_fds as _close_fds
from ._files import positions as _positions
from ._files import reopen_fd as _reopen_fd
from ._inplace import InPlace
from ._slots import slot_byte as _slot_byte
from ._slots import slot_word as _slot_word
from ._state import Turn
from ._wake import Wake
from ._wake import deadline as _deadline

__all__ = ["Channel", "ChannelStatistics"]

_OPEN_ATTEMPTS = 20  # open() starts again this often when the path is replaced under it
_DEFAULT_SPIN = 50e-6
# slot states
_FREE, _PRODUCER, _CONSUMER, _FINISHED, _SUBSCRIBER = (
    fmt.STATE_FREE, fmt.STATE_PRODUCER, fmt.STATE_CONSUMER, fmt.STATE_FINISHED,
    fmt.STATE_SUBSCRIBER)
# word indexes into the header cast as u64 / u32
_HEAD_Q = fmt.HEAD_Q
_TAIL_Q = fmt.TAIL_Q
_CW_I = fmt.CONSUMERS_WAITING // 4
_PW_I = fmt.PRODUCERS_WAITING // 4
_PLEASE_I = fmt.PRODUCER_LEASE // 4
_CLEASE_I = fmt.CONSUMER_LEASE // 4
# send() and recv() spell these four as literals (a constant beats a global lookup there)
assert (_HEAD_Q, _TAIL_Q, _CW_I, _PW_I) == (8, 16, 18, 34)
# slot fields as u32 indexes within a slot (see _slot_word)
_F_STATE, _F_PID, _F_SLEEPING = _slots.F_STATE, _slots.F_PID, _slots.F_SLEEPING
_F_PBUSY, _F_CBUSY = _slots.F_PBUSY, _slots.F_CBUSY
_PAD_WORD = fmt.PAD_WORD
# The hot paths spell a frame's size as ``(n + 15) & ~7`` (a call costs more than the
# arithmetic there); it must be the codec's frame_size at every alignment.
assert all((n + 15) & ~7 == fmt.frame_size(n) for n in range(64))
_FRAMED_MAX = 256  # payloads up to this long are framed by one cached Struct per length
_write_frame = fmt.write_frame
_C = TypeVar("_C", bound="Channel")  # (a Queue's channel is a subclass: _sequenced.py)


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


class Channel(Claims, Wake, Broadcast, InPlace):
    """A message channel between processes over shared memory.

    Make one with :meth:`create` (a file other processes :meth:`open`) or
    :meth:`anonymous` (inherited by ``fork()`` children).  Messages are bytes-like;
    :meth:`send_obj` / :meth:`recv_obj` carry any picklable object.
    """

    __slots__ = ()  # the slots are _state.State's

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
        one_lock = strict()
        self._plocked = self._mp or one_lock
        self._clocked = self._mc or one_lock
        # Claims by lease (see the top comment): TSO only, version 2 and 3 files only
        # (processes of an older mmapkit on a version 1 file flock every claim), never
        # broadcast.
        leases = not one_lock and header.version >= fmt.LEASE_VERSION
        self._please = self._mp and leases and not self._bc
        self._clease = self._mc and leases
        self._fence = threading.Lock()  # acquiring it is a full barrier (a locked insn)
        # Version 3: the holder enters with no barrier, the thief calls membarrier().
        self._fenced = header.version < fmt.FENCELESS_VERSION
        self._pbusy = self._cbusy = self._ptoken = self._ctoken = -1  # set by _attach()
        self._identity = identity  # (st_dev, st_ino) of the channel file
        self._lock_identity: tuple[int, int] | None = None
        if identity is not None:
            st = os.fstat(lock_fd)
            self._lock_identity = (st.st_dev, st.st_ino)
        # Claims are flock()s (a lock + unlock costs a third of an OFD byte-range pair):
        # producers lock one file, consumers another; the strict mode uses one for both.
        # open() hands in descriptors it checked are of this channel's files.
        self._pclaim, self._cclaim = claims if claims is not None else open_claims(one_lock)
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
        self._dq2 = self._dq[2:]  # (_sequenced.py)
        self._framers = {}  # _framer()
        self._seq_framers = []  # a Queue's (_sequenced.py), and its parts (queue.py sets)
        self._seq_base = self._base + 32  # (the frame's head: _sequenced._HEAD)
        self._seq_counters = memoryview(bytearray(64)).cast("Q")
        self._seq_gets = 0
        self._seq_put_miss = _not_a_queue
        self._seq_get_miss = _not_a_queue
        self._head_w = Waiter(region, fmt.HEAD)
        self._tail_w = Waiter(region, fmt.TAIL)
        self._pslot: int | None = None
        self._cslot: int | None = None
        self._recv_fast = False  # attached, and no claim lock needed
        self._send_limit = -1  # max_message while sends need no claim lock, else -1 (one
        # test in send())
        self._lease_send_limit = -1  # max_message while a send may take _send_locked at
        # once (attached producer, producer lease, not finished), else -1
        self._lease_recv = False  # recv() may take _recv_locked at once (attached, lease)
        self._finished = False
        self._closed = False
        # Consumer: frames below this position are published (head at its last look) and
        # do not cross the end of the ring; one comparison checks a frame against both.
        self._readable_end = 0
        self._obj_look = False  # recv_obj: the last object had no out-of-band buffer
        self._head_mine = self._tail_mine = -1  # the lease's one-call paths' copies of
        self._head_seen = 0  # head and tail (see _state.py and _claims.py)
        self._tail_seen = 0  # producer's last look at tail: room above it is free
        self._room_end = self._cap  # tail_seen + capacity: a frame must end below it
        self._new_turns()
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
        _LIVE.add(self)  # (see _after_fork_in_child: one hook for all handles)

    # --- construction -----------------------------------------------------------------

    @classmethod
    def create(cls: type[_C], path: str | os.PathLike[str], capacity: int = 1 << 20, *,
               multi_producer: bool = False, multi_consumer: bool = False,
               broadcast: bool = False, spin: float = _DEFAULT_SPIN) -> _C:
        """Create a channel file at ``path`` with a ring of ``capacity`` bytes.

        Raises FileExistsError if ``path`` exists (open it, or unlink it first).  The file
        appears complete or not at all: it is built beside ``path`` and linked into place.
        """
        path = os.fspath(path)
        cap = fmt.round_capacity(capacity)
        header = fmt.encode_header(cap, _flags(multi_producer, multi_consumer, broadcast),
                                   _new_version())
        _files.create_file(path, header, fmt.HEADER_SIZE + cap)
        return cls.open(path, spin=spin)

    @classmethod
    def open(cls: type[_C], path: str | os.PathLike[str], *,
             spin: float = _DEFAULT_SPIN) -> _C:
        """Attach to the channel file at ``path`` (made by :meth:`create`).

        Safe against a concurrent :meth:`unlink` and re-create of the same path: the
        handle either maps, locks and claims one and the same channel, or the open starts
        again on whatever the path names now (FileNotFoundError once it names nothing).
        """
        path = os.fspath(path)
        for _ in range(_OPEN_ATTEMPTS):
            try:
                region, header, lock_fd, lock_path, claims, identity = _files.open_files(path)
            except _files.Replaced:
                continue
            return cls(region, header, lock_fd, lock_path=lock_path, spin=spin,
                       claims=claims, identity=identity)
        raise BrokenError(f"{path} was replaced {_OPEN_ATTEMPTS} times while it was being "
                          "opened (another process keeps unlinking and re-creating it); "
                          "retry when it is stable")

    @classmethod
    def anonymous(cls: type[_C], capacity: int = 1 << 20, *, multi_producer: bool = False,
                  multi_consumer: bool = False, broadcast: bool = False,
                  spin: float = _DEFAULT_SPIN) -> _C:
        """A channel in anonymous shared memory: create it before ``fork()``; the children
        inherit it.  It has no name, cannot be pickled, and vanishes with its last user."""
        cap = fmt.round_capacity(capacity)
        header_bytes = fmt.encode_header(cap, _flags(multi_producer, multi_consumer,
                                                     broadcast), _new_version())
        region = Region.anonymous(fmt.HEADER_SIZE + cap)
        region.view[: len(header_bytes)] = header_bytes
        lock_fd, bell_fd = _files.anonymous_files()
        return cls(region, fmt.decode_header(header_bytes), lock_fd, lock_path=None,
                   spin=spin, bell_fd=bell_fd)

    def __reduce__(self) -> tuple[Any, ...]:
        if self._path is None:
            raise TypeError("an anonymous Channel cannot be pickled: children get it by fork(); "
                            "use Channel.create(path) to pass it to spawned processes")
        return (_reopen, (self._path, self._spin))

    def _after_fork(self) -> None:
        """In a fork child (step F1): get our own lock-file descriptions and forget the
        parent's roles."""
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
            self._forget_roles()
            self._sync_fds()
            _close_fds(self._fdbox)
            self._bell = -1
            raise
        self._sync_fds()
        self._forget_roles()
        self._pbusy = self._cbusy = self._ptoken = self._ctoken = -1  # the parent's
        self._finished = False
        self._new_turns()
        self._attach_mutex = threading.Lock()
        self._fence = threading.Lock()
        self._sent = self._sent_bytes = self._received = self._received_bytes = 0
        self._full_waits = self._empty_waits = 0

    def _new_turns(self) -> None:
        """This handle's turns to send and to receive among our threads (_state.Turn)."""
        self._send_mutex = Turn()
        self._recv_mutex = Turn()
        self._send_free = self._send_mutex.free
        self._recv_free = self._recv_mutex.free

    def _forget_roles(self) -> None:
        """No slot, no fast path: what a closed handle or a fork child starts from."""
        self._head_mine = self._tail_mine = -1
        self._head_seen = 0
        self._pslot = self._cslot = None
        self._recv_fast = False
        self._send_limit = -1
        self._lease_send_limit = -1
        self._lease_recv = False
        self._obj_look = False  # (its look waits as a consumer, which needs a slot)

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
        if (self._please if role == _PRODUCER else self._clease) and not self._fenced:
            _enrol(self._where())  # before our first lease entry without a barrier
        slot, token = _slots.take(self._hdr32, self._lock_fd, role, multi,
                                  (self._pslot, self._cslot))
        if role == _PRODUCER:
            self._pbusy, self._ptoken = _slot_word(slot, _F_PBUSY), token
            self._pslot = slot
            self._send_limit = -1 if self._plocked or self._bc else self._max
            self._lease_send_limit = self._max if self._please else -1
        else:
            self._cbusy, self._ctoken = _slot_word(slot, _F_CBUSY), token
            self._cslot = slot
            self._recv_fast = not self._clocked
            self._lease_recv = self._clease
        return slot

    def _census(self, role: int) -> tuple[int, int, int]:
        """(alive, gone, finished) participants of ``role`` (finished: producers only)."""
        return _slots.census(self._hdr32, self._lock_fd, role, (self._pslot, self._cslot))

    def _where(self) -> str:
        return self._path or "the anonymous channel"

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
        room = self._room_now()  # (tail read after head)
        pos = head % cap
        if pos + need > cap:
            pad = cap - pos
            if head + pad > room:
                return -1
            self._dq[pos >> 3] = _PAD_WORD
            head += pad
            hdr[_HEAD_Q] = head
            if self._hdr32[_CW_I]:
                self._wake_consumers()
        if head + need > room:
            return -1
        return int(head)

    def _room_now(self) -> int:
        """Where the room for frames ends now (tail + capacity), remembered for the next
        send (``_tail_seen``, ``_room_end``).  _place calls it, and the lease paths do,
        under the producer claim, when the room they saw last is used up: with a full
        ring every send would otherwise take the general path (a Queue put + get 49k
        instructions instead of 22k, callgrind)."""
        tail = self._tail_seen = self._hdr[_TAIL_Q]
        room: int = tail + self._cap
        self._room_end = room
        return room

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
            if n <= self._lease_send_limit:  # several producers: straight to the lease
                self._send_locked(data, n, timeout)
            else:
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
            self._send_locked(data, n, timeout)
        else:
            self.send(data, timeout)

    def _send_locked(self, data: bytes | memoryview, n: int, timeout: float | None) -> None:
        """send() with a producer claim (S1-S6).  The lease's common case (we hold it and
        the frame fits below the room we saw last, or below the room there is now:
        ``_room_now``) is written out here, without a call:
        it is the multi-producer hot path (see _claims.py for steps L1-L9).  It takes our
        process's turn to send by popping ``_send_free`` (_state.Turn); taken by another
        thread of ours, or the case not common, the general path waits its turn."""
        need = (n + 15) & ~7
        if self._please:
            free = self._send_free
            try:
                free.pop()
            except IndexError:  # another thread of ours is sending: wait our turn below
                pass
            else:
                try:
                    h32, busy = self._hdr32, self._pbusy
                    try:
                        h32[busy] = 1  # L1
                        if self._fenced:  # L2 (version 3: no barrier here, see _claims.py)
                            fence = self._fence
                            fence.acquire()
                            fence.release()
                        if h32[_PLEASE_I] == self._ptoken:  # L3
                            hdr, cap = self._hdr, self._cap
                            head = self._head_mine  # (see _head_mine in _state.py)
                            if head < 0:
                                head = hdr[8]  # _HEAD_Q
                            pos = head % cap
                            if pos + need <= cap and (head + need <= self._room_end
                                                      or head + need <= self._room_now()):
                                try:
                                    pack = self._framers[n]
                                except KeyError:
                                    pack = self._framer(n)
                                pack(self._data, pos, n, data)
                                hdr[8] = self._head_mine = head + need  # S5: publish
                                h32[busy] = 0  # L9
                                if h32[18]:  # _CW_I
                                    self._wake_consumers()
                                self._sent += 1
                                self._sent_bytes += n
                                return
                    except BaseException:  # a busy word left up would stall thieves
                        h32[busy] = 0
                        raise
                    h32[busy] = 0  # L4: the general path claims (or steals) again
                finally:
                    free.append(True)
        mutex = self._send_mutex
        mutex.acquire()
        try:
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

    def finish(self) -> None:
        """End this producer's stream: once every producer finished, receivers drain what
        is left and then get EndOfChannel.  Further sends from this handle raise."""
        if self._pslot is None:
            self._attach(_PRODUCER)
        assert self._pslot is not None
        self._hdr32[_slot_word(self._pslot, _F_STATE)] = _FINISHED
        self._finished = True
        self._send_limit = -1
        self._lease_send_limit = -1
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
            if self._lease_recv:  # several consumers: straight to the lease
                return self._recv_locked(timeout)
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
                tail = hdr[_TAIL_Q]
                if hdr[_HEAD_Q] == tail:
                    # Empty: wait before claiming.  A claim (a steal, when another consumer
                    # holds the lease) only to find nothing costs a flock pair, and idle
                    # consumers of a busy MPMC channel would steal from the busy one.
                    self._await_data(tail, deadline)
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
        """recv() with a consumer claim (R1-R4).  The lease's common case (we hold it and
        a data frame is there) is written out here, without a call: it is the
        multi-consumer hot path (see _claims.py for steps L1-L9).  Our process's turn to
        receive: as in _send_locked."""
        if self._clease:
            free = self._recv_free
            try:
                free.pop()
            except IndexError:  # another thread of ours is receiving: wait our turn below
                pass
            else:
                try:
                    h32, busy = self._hdr32, self._cbusy
                    try:
                        h32[busy] = 1  # L1
                        if self._fenced:  # L2 (version 3: no barrier here, see _claims.py)
                            fence = self._fence
                            fence.acquire()
                            fence.release()
                        if h32[_CLEASE_I] == self._ctoken:  # L3
                            hdr, cap = self._hdr, self._cap
                            tail = self._tail_mine  # (see _tail_mine in _state.py)
                            if tail < 0:
                                tail = hdr[16]  # _TAIL_Q
                            head = self._head_seen
                            if tail >= head:  # what we saw is consumed: look at head again
                                head = self._head_seen = hdr[8]  # before the frame's words
                            pos = tail % cap
                            n = self._dq[pos >> 3]  # a PAD or damage has high bits
                            if tail + 8 + n <= head and pos + 8 + n <= cap:
                                at = self._base8 + pos
                                out = self._mm[at : at + n]
                                hdr[16] = self._tail_mine = tail + ((n + 15) & ~7)  # R3
                                h32[busy] = 0  # L9
                                if h32[34]:  # _PW_I
                                    self._wake_producers()
                                self._received += 1
                                self._received_bytes += n
                                return out
                    except BaseException:  # a busy word left up would stall thieves
                        h32[busy] = 0
                        raise
                    h32[busy] = 0  # L4: the general path claims (or steals) again
                finally:
                    free.append(True)
        mutex = self._recv_mutex
        mutex.acquire()
        try:
            tail, start, n = self._take(_deadline(timeout))
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
            self._forget_roles()
            for view in (self._dq2, self._dq, self._data, self._hdr, self._hdr32, self._hdr8):
                view.release()
            self._head_w.close()
            self._tail_w.close()
            self._region.close()
        finally:
            self._forget_roles()
            _close_fds(self._fdbox)
            self._bell = -1

    def unlink(self) -> None:
        """Remove the channel's file and lock file (handles already open keep working).

        Removes only what is still this channel's: when the path already names another
        channel (unlinked and re-created by someone else), nothing of that one is touched.
        The channel file goes first, its lock file second (open() relies on that order)."""
        if self._path is None:
            return
        if _files.unlink_if(self._path, self._identity):
            assert self._lock_path is not None
            _files.unlink_if(self._lock_path, self._lock_identity)
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




def _flags(multi_producer: bool, multi_consumer: bool, broadcast: bool) -> int:
    """The header flags of create() and anonymous(); ValueError for a mode that cannot be."""
    if broadcast and multi_consumer:
        raise ValueError("broadcast channels have subscribers, each with its own cursor; "
                         "drop multi_consumer=True")
    return ((fmt.FLAG_MULTI_PRODUCER if multi_producer else 0)
            | (fmt.FLAG_MULTI_CONSUMER if multi_consumer else 0)
            | (fmt.FLAG_BROADCAST if broadcast else 0))


def _not_a_queue(*args: Any) -> Any:
    """The miss hooks of _sequenced.py on a channel that no Queue carries."""
    raise ModeConflictError("this channel does not carry a mmapkit.Queue")


def _reopen(path: str, spin: float) -> Channel:
    return Channel.open(path, spin=spin)


def _payload(data: bytes | bytearray | memoryview) -> bytes | memoryview:
    """A message that is not ``bytes`` as its bytes: a copy when short (what a cached
    Struct packs; a copy that short is cheap), else a byte view (no copy of a long one)."""
    view = memoryview(data).cast("B")
    return view.tobytes() if len(view) <= _FRAMED_MAX else view


def _new_version() -> int:
    """The format version of a new channel: 3 (lease entries with no barrier) where this
    process can call membarrier(2) and claims are leases at all, else 2."""
    if not strict() and _platform.membarrier_ready():
        return fmt.VERSION
    return fmt.LEASE_VERSION


def _enrol(where: str) -> None:
    """Enrol this process for the thieves' barrier (membarrier(2)) of a version 3 file."""
    if not _platform.membarrier_ready():
        raise UnsupportedPlatformError(
            f"{where} is a version 3 channel, whose lease holders rely on membarrier(2), "
            "which this process cannot call (an old kernel, or a seccomp filter): allow "
            "membarrier, or have every process use a channel created here (version 2)")
    _platform.membarrier_register()


# Every open handle, for the one at-fork hook of this module (a hook per handle could
# never be unregistered: a program that opens many channels would pile them up).
_LIVE: weakref.WeakSet[Channel] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for channel in list(_LIVE):
        channel._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
