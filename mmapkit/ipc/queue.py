"""Queue: a drop-in ``multiprocessing.Queue`` over a shared-memory Channel.

Design rules:

- One multi-producer, multi-consumer :class:`~mmapkit.ipc.channel.Channel` carries the
  messages, and a 4 KiB *state page* carries the counts ``multiprocessing.Queue`` keeps in
  semaphores.  Both live in files made in ``/dev/shm`` (else the temporary directory) and
  unlinked at once: no name outlives the constructor, so nothing is left behind when the
  processes that use the queue exit or are killed; the kernel frees the memory with the
  last descriptor or mapping.  Only a crash inside the constructor, between creating the
  files and unlinking them, can leave a ``mmapkit-queue-*`` directory (safe to delete).
- Children get the queue the way they get a ``multiprocessing.Queue``: by ``fork()``
  (inherited mapping; the Channel reopens its lock descriptions in the child), or pickled by
  ``multiprocessing`` while it starts a spawn / forkserver child: then the descriptors of
  the two unlinked files travel as ``multiprocessing.reduction.DupFd`` (the way
  ``multiprocessing`` passes a ``Connection``).  Anywhere else pickling raises the
  ``RuntimeError`` of ``multiprocessing.Queue``.
- No feeder thread: ``put()`` has written the message into shared memory when it returns,
  so nothing is lost when the putting process exits or is killed afterwards, and exiting
  never waits for a flush.
- A message: ``seq`` (u64), then the object payload of ``Channel.send_obj`` (its one
  spelling is in ``_format.py``: buffer count, reserved, pickle length, the pickle of
  protocol 5, each out-of-band buffer as length and bytes).  Buffers (numpy arrays,
  PickleBuffer) are copied straight into the ring and come out as views of the one copy
  the receiver makes; an object without them comes out as its pickle alone (one copy).

State page (little-endian words; one writer at a time per word, named in the table):

    ======  ====  =====  ==========================================================
    offset  size  name   written by
    ======  ====  =====  ==========================================================
    0       u64   PUTS   the next sequence number; producers, under the producer claim
    64      u64   GETS   one past the highest sequence consumed; consumers, under the
                         consumer claim (its low u32 is the futex a full put() sleeps on)
    128     u32   GWAIT  1 while a put() sleeps on a full queue (maxsize); set by any
                         sleeper, cleared by any consumer, unlocked: a wake-up hint
                         only (a lost one costs a sleeper one wait slice)
    192     u64   DONE   task_done() calls (JoinableQueue), under the state lock (flock
                         of the state file, one description per process); low u32: the
                         futex join() sleeps on
    256     u32   DWAIT  1 while a join() sleeps; set by any joiner, cleared by
                         task_done(), unlocked: a wake-up hint like GWAIT
    ======  ====  =====  ==========================================================

Cross-process protocol on top of the Channel's (its steps S*, R* in channel.py).  K says
what a process killed after that step (before the next) leaves behind:

    ====  ============================================  =========  ======================
    step  what                                          holds      K
    ====  ============================================  =========  ======================
    P1    pickle the object (no lock)                   -          nothing
    P2    claim the frame (Channel._send_with, its      pclaim     nothing visible
          S1-S3)
    P3    maxsize: PUTS - GETS >= maxsize and the ring  pclaim     nothing (the frame is
          is not empty: drop the frame, wait (P6)                  dropped unpublished)
    P4    write seq = PUTS and the payload; PUTS += 1   pclaim     a *gap*: PUTS counts a
                                                                   message never published
    P5    _send_with returns: the Channel's S5          -          the message, delivered
          publishes
    P6    a full put() sleeps: GWAIT = 1, re-read the   -          GWAIT stays 1: one
          count, futex-wait on GETS (50 ms slices)                 spare wake-up later
    G1    Channel._recv_with: its R1-R2                 cclaim     nothing
    G2    copy the message out; GETS = max(GETS, seq+1) cclaim     the message stays for
          (skipped by Queue.get() without maxsize:                 the next consumer, who
          see Counting)                                            stores the same GETS
    G3    _recv_with returns: the Channel's R3          -          consumed
    G4    GWAIT: clear it, wake the futex on GETS       -          a sleeper re-checks
          (skipped by a Queue without maxsize: only               within one slice
          a put() with one sleeps on GETS)
    ====  ============================================  =========  ======================

Counting.  ``qsize()`` is PUTS - the sequence number of the message at tail (the oldest
in the ring), 0 when the ring holds no message (empty, or only a PAD frame up to its end:
the Channel's S2 publishes one before the frame that follows).  Ring order is sequence
order (P2-P5 run under the one producer claim), so a gap left at P4 by a killed producer
counts one message too many until the messages before it are consumed; an empty ring
counts 0.  GETS is kept (G2) only where something reads it: a queue with a ``maxsize``
(P3, and the futex of P6) and get_many; the common get() of a queue without one skips
that store (two memoryview operations, ~2.5% of a put+get).  Nothing a killed process
leaves can make a put() wait for ever.  JoinableQueue counts unfinished tasks as
PUTS - DONE: a gap there is a task that never arrives (join() waits for it, as
``multiprocessing.JoinableQueue`` waits for the messages a killed process had buffered).
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import pickle
import queue as _queue
import struct
import tempfile
import time
import weakref
from typing import Any

from .. import _platform
from ..errors import BrokenError, CorruptFileError, DiskFullError, MessageTooLargeError
from ..lock import FileLock
from ..region import Region
from ..wait import Waiter
from . import _format as fmt
from ._claims import strict as _strict
from ._files import check_ring, map_checked
from ._files import close_fds as _close_all
from ._sequenced import HasBuffers as _HasBuffers
from ._sequenced import SequencedChannel
from ._sequenced import no_buffers as _no_buffers

__all__ = ["JoinableQueue", "Queue", "SimpleQueue"]

DEFAULT_CAPACITY = 1 << 22  # 4 MiB of shared memory per queue
_STATE_SIZE = 4096
_PUTS_Q, _GETS_Q, _DONE_Q = 0, 8, 24  # u64 indexes (offsets 0, 64, 192)
_GETS_OFF, _DONE_OFF = 64, 192
_GWAIT_I, _DWAIT_I = 32, 64  # u32 indexes (offsets 128, 256)
_SLICE = 0.05
_HEAD_Q, _TAIL_Q, _PAD_WORD = fmt.HEAD_Q, fmt.TAIL_Q, fmt.PAD_WORD
_CLEASE_I = fmt.CONSUMER_LEASE // 4
_dumps = pickle.dumps
_SEQ = struct.Struct("<Q")  # a message: its sequence number, then an object payload
_MSG = fmt.QUEUE_MSG  # ...and the payload's head: the common case in one pack


def _shm_dir() -> str:
    """Where the queue's files are made (and unlinked): tmpfs when there is one."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return tempfile.gettempdir()


def _channel_from_fds(fd: int, lock_fd: int, spin: float) -> SequencedChannel:
    """A Channel handle over the (unlinked) channel file ``fd`` and its lock file
    ``lock_fd``, with descriptions of its own for every lock (``fd`` and ``lock_fd`` are
    left open and untouched: they may be shared with the parent that passed them)."""
    region, header, _ = map_checked(fd, None)
    fds: list[int] = []
    try:
        check_ring(region, header.capacity)  # the Channel's steps O1-O5, but by descriptor
        fds.append(_platform.reopen_fd(lock_fd))
        fds.append(_platform.reopen_fd(fd))
        strict = _strict()
        if not strict:
            fds.append(_platform.reopen_fd(lock_fd))
        return SequencedChannel(region, header, fds[0], lock_path=None, spin=spin,
                       claims=(fds[1], fds[1] if strict else fds[2]))
    except BaseException:
        _close_all(fds)
        region.close()
        raise


class _Shared:
    """One process's handle on a queue's shared parts: the Channel and the state page."""

    def __init__(self, channel: SequencedChannel, chan_fd: int, lock_fd: int,
                 state_fd: int) -> None:
        self.channel = channel
        self.fds = [chan_fd, lock_fd, state_fd]  # kept to pass on to spawned children
        self._box = list(self.fds)
        weakref.finalize(self, _close_all, self._box)
        mapping = mmap.mmap(state_fd, _STATE_SIZE, access=mmap.ACCESS_WRITE)
        self.region = Region(mapping, path=None, offset=0, map_offset=0, size=_STATE_SIZE,
                             readonly=False, private=False)
        self.q = self.region.view.cast("Q")
        self.i = self.region.view.cast("I")
        self.gets_w = Waiter(self.region, _GETS_OFF)
        self.done_w = Waiter(self.region, _DONE_OFF)
        # JoinableQueue's state lock: a description of this process's own (the passed
        # descriptor's may be shared with the parent); FileLock gives a fork child one.
        lock_fd = _platform.reopen_fd(state_fd)
        self._box.append(lock_fd)
        self.state_lock = FileLock(lock_fd)
        self.closed = False
        self.retrying = False  # get_general() is trying the one-call get again (no nesting)
        # The channel's one-call put and get (_sequenced.py) and where they hand over what
        # they cannot do in one call: to us, through a weak reference (no cycle).
        channel._seq_counters = self.q
        me = weakref.ref(self)
        channel._seq_put_miss = functools.partial(_put_missed, me)
        channel._seq_get_miss = functools.partial(_get_missed, me)

    @classmethod
    def create(cls, capacity: int, spin: float) -> _Shared:
        directory = tempfile.mkdtemp(prefix="mmapkit-queue-", dir=_shm_dir())
        path = os.path.join(directory, "ring")
        state = os.path.join(directory, "state")
        cloexec = getattr(os, "O_CLOEXEC", 0)
        fds: list[int] = []
        channel: SequencedChannel | None = None
        try:
            channel = SequencedChannel.create(path, capacity, multi_producer=True,
                                     multi_consumer=True, spin=spin)
            fds.append(os.open(path, os.O_RDWR | cloexec))
            fds.append(os.open(path + ".lock", os.O_RDWR | cloexec))
            fds.append(os.open(state, os.O_RDWR | os.O_CREAT | os.O_EXCL | cloexec, 0o600))
            _platform.ensure_allocated(fds[2], _STATE_SIZE)
            return cls(channel, fds[0], fds[1], fds[2])
        except BaseException as exc:
            _close_all(fds)
            if channel is not None:
                channel.close()
            if isinstance(exc, DiskFullError):  # say where, and what to do, in our words
                raise DiskFullError(
                    exc.errno, f"no room left in {os.path.dirname(directory)} for a queue "
                    f"of {capacity} bytes: free shared memory there (other queues, or "
                    "files left in it), or create the Queue with a smaller capacity=") from exc
            raise
        finally:
            if channel is not None:
                channel.unlink()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(state)
            with contextlib.suppress(OSError):
                os.rmdir(directory)

    @classmethod
    def adopt(cls, chan_fd: int, lock_fd: int, state_fd: int, spin: float) -> _Shared:
        """In a spawned child: the descriptors its parent passed."""
        channel = _channel_from_fds(chan_fd, lock_fd, spin)
        try:
            return cls(channel, chan_fd, lock_fd, state_fd)
        except BaseException:
            channel.close()
            raise

    # --- counts -------------------------------------------------------------------------

    def pending(self) -> bool:
        """Whether the ring holds a message (not just a PAD frame up to its end)."""
        ch = self.channel
        hdr = ch._hdr
        tail = hdr[_TAIL_Q]
        head = hdr[_HEAD_Q]
        if head == tail:
            return False
        pos = tail % ch._cap
        return not (head == tail + ch._cap - pos and ch._dq[pos >> 3] == _PAD_WORD)

    def count(self) -> int:
        """PUTS less the sequence number of the oldest message in the ring (0 when it holds
        none).  That message may be consumed, and its bytes reused, while we read it: the
        count is approximate then, as qsize() is documented to be, and never negative."""
        ch = self.channel
        hdr, cap, dq = ch._hdr, ch._cap, ch._dq
        tail = hdr[_TAIL_Q]
        head = hdr[_HEAD_Q]
        if head == tail:  # an empty ring counts 0, whatever gap PUTS has
            return 0
        pos = tail % cap
        if dq[pos >> 3] == _PAD_WORD:  # S2's PAD up to the end: the message is at 0
            if head == tail + cap - pos:
                return 0
            pos = 0
        puts = int(self.q[_PUTS_Q])
        if pos + 16 > cap:  # damage (a frame never starts in the ring's last 8 bytes)
            return max(0, puts - int(self.q[_GETS_Q]))
        return max(0, puts - int(dq[(pos + 8) >> 3]))

    # --- putting and getting ----------------------------------------------------------

    def put(self, obj: Any, maxsize: int, deadline: float | None) -> None:
        """Steps P1-P5.  ``deadline``: a time.monotonic() value, None to wait for ever."""
        if not maxsize:  # P1-P5 in one call when the lease is ours and there is room
            self.channel._send_seq(obj, True, _remaining(deadline))
            return
        try:
            body: bytes | None = _dumps(obj, 5, buffer_callback=_no_buffers)  # P1
        except _HasBuffers:  # (see _sequenced.py)
            body = None
        self.put_body(obj, body, maxsize, deadline)

    def put_body(self, obj: Any, body: bytes | None, maxsize: int,
                 deadline: float | None) -> None:
        """P2-P5 the general way for ``obj`` pickled as ``body`` (None: it has out-of-band
        buffers; pickled again here, collecting them).  The one-call put's miss hook
        comes here too, with maxsize 0."""
        if body is None:
            buffers: list[pickle.PickleBuffer] = []
            self.put_pickled(_dumps(obj, 5, buffer_callback=buffers.append), buffers,
                             maxsize, deadline)
        else:
            self.put_pickled(body, [], maxsize, deadline)

    def put_pickled(self, body: bytes, buffers: list[pickle.PickleBuffer], maxsize: int,
                    deadline: float | None) -> None:
        """Steps P2-P5 of an object pickled (P1) to ``body`` and ``buffers``, the general
        way: claim, wait for room (and below ``maxsize``), write."""
        if buffers:
            self._put_buffers(body, buffers, maxsize, deadline)
            return
        blen = len(body)
        q = self.q
        pending = self.pending

        def fill(ring: memoryview, at: int) -> None:  # steps P3-P4, under the claim
            seq = q[_PUTS_Q]
            if maxsize > 0 and seq - q[_GETS_Q] >= maxsize and pending():
                raise _FullNow  # drops the frame unpublished
            _MSG.pack_into(ring, at, seq, 0, 0, blen)
            ring[at + _MSG.size : at + _MSG.size + blen] = body
            q[_PUTS_Q] = seq + 1

        self._send(_MSG.size + blen, fill, maxsize, deadline)

    def _put_buffers(self, body: bytes, buffers: list[pickle.PickleBuffer], maxsize: int,
                     deadline: float | None) -> None:
        """put() of an object with out-of-band buffers: each copied once, into the ring."""
        raws = fmt.pickle_buffers(buffers)
        q = self.q

        def fill(ring: memoryview, at: int) -> None:  # steps P3-P4, under the claim
            seq = q[_PUTS_Q]
            if maxsize > 0 and seq - q[_GETS_Q] >= maxsize and self.pending():
                raise _FullNow
            _SEQ.pack_into(ring, at, seq)
            fmt.write_obj(ring, at + _SEQ.size, body, raws)
            q[_PUTS_Q] = seq + 1

        try:
            self._send(_SEQ.size + fmt.obj_size(len(body), raws), fill, maxsize, deadline)
        finally:
            for r in raws:
                r.release()

    def _send(self, total: int, fill: Any, maxsize: int, deadline: float | None) -> None:
        ch = self.channel
        if total > ch.max_message:
            need = total + fmt.FRAME.size
            suggest = 1 << (need - 1).bit_length()
            raise MessageTooLargeError(
                f"this object pickles to a message of {total} bytes; the Queue's ring holds "
                f"{ch.capacity} bytes (largest message {ch.max_message}): create the Queue "
                f"with capacity={suggest} or more")
        while True:
            if maxsize > 0:
                self._await_below(maxsize, deadline)
            try:
                ch._send_with(total, fill, deadline)  # P2-P5
                return
            except _FullNow:
                if deadline is not None and time.monotonic() >= deadline:
                    raise _queue.Full from None
            except BrokenError:  # every consumer died with the ring full: wait for new ones
                if deadline is not None and time.monotonic() >= deadline:
                    raise _queue.Full from None

    def _await_below(self, maxsize: int, deadline: float | None) -> None:
        """Wait until fewer than ``maxsize`` messages are queued (queue.Full at deadline)."""
        i32 = self.i
        while True:
            if self.count() < maxsize:
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise _queue.Full
            gets = i32[_GETS_OFF // 4]
            i32[_GWAIT_I] = 1
            if self.count() < maxsize:
                return
            self.gets_w.wait(gets, _SLICE if remaining is None else min(_SLICE, remaining))

    def _take(self, mapping: mmap.mmap, at: int, n: int) -> bytes | bytearray:
        """Step G2, under the consumer claim: copy the message out, store GETS.  Returns
        the pickle alone (bytes) when the message has no out-of-band buffer, else the
        whole message (a bytearray the buffers will be views of)."""
        if n < _MSG.size:
            raise _damaged(f"a {n}-byte message is shorter than a Queue message's header")
        seq, count, _, blen = _MSG.unpack_from(mapping, at)
        q = self.q
        if seq >= q[_GETS_Q]:
            q[_GETS_Q] = seq + 1
        if count == 0 and blen <= n - _MSG.size:
            return mapping[at + _MSG.size : at + _MSG.size + blen]
        return fmt.copy_out(mapping, at, n)

    def get(self, deadline: float | None) -> Any:
        """Steps G1-G4 and the unpickling (after the claim is let go)."""
        # G1-G3 in one call when the lease is ours and a message without out-of-band
        # buffers is there; else the general path, which claims and waits.
        obj = self.channel._recv_seq(True, _remaining(deadline))
        self.wake_putters()
        return obj

    def wake_putters(self) -> None:
        """Step G4: a put() sleeps on a full queue: wake it."""
        if self.i[_GWAIT_I]:
            self.i[_GWAIT_I] = 0
            self.gets_w.wake()

    def get_general(self, deadline: float | None) -> Any:
        """get() when its one-call path missed: claim, wait, take (G1-G4), unpickle.

        A miss on an empty ring while the consumers' lease is ours (the common miss of one
        consumer that keeps up with its producers) waits for a message as the general path
        would, then tries the one-call get again: taking the message there costs ~10k
        instructions less than the general path's claim and take (callgrind)."""
        ch = self.channel
        if not self.retrying:
            hdr = ch._hdr
            tail = hdr[_TAIL_Q]
            if hdr[_HEAD_Q] == tail and ch._hdr32[_CLEASE_I] == ch._ctoken:
                try:
                    ch._await_data(tail, deadline)  # queue.Empty at the deadline
                except BrokenError:  # every producer gone: the loop below waits for new ones
                    pass
                else:
                    self.retrying = True  # its own miss takes the general path below
                    try:
                        return ch._recv_seq(True, _remaining(deadline))
                    finally:
                        self.retrying = False
        blob: bytes | bytearray | None = None
        while blob is None:
            try:
                blob = ch._recv_with(self._take, deadline)
            except BrokenError:  # every producer gone: a queue waits for new ones
                if deadline is not None and time.monotonic() >= deadline:
                    raise _queue.Empty from None
        self.wake_putters()
        if blob.__class__ is bytes:
            return pickle.loads(blob)
        return _decode(blob)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            self.channel.close()
        for w in (self.gets_w, self.done_w, self.state_lock):
            with contextlib.suppress(Exception):
                w.close()
        for v in (self.q, self.i):
            v.release()
        with contextlib.suppress(Exception):
            self.region.close()
        _close_all(self._box)


def _put_missed(shared: weakref.ref[_Shared], obj: Any, body: bytes | None, block: bool,
                timeout: float | None) -> None:
    """The miss hook of the channel's one-call put (see _Shared.__init__)."""
    owner = shared()
    if owner is None or owner.closed:
        raise ValueError("the Queue is closed")
    owner.put_body(obj, body, 0, _deadline(block, timeout))


def _get_missed(shared: weakref.ref[_Shared], block: bool, timeout: float | None) -> Any:
    """The miss hook of the channel's one-call get: the general path."""
    owner = shared()
    if owner is None or owner.closed:
        raise ValueError("the Queue is closed")
    return owner.get_general(_deadline(block, timeout))


class _FullNow(Exception):
    """Step P3: the queue filled up between the wait and the claim."""


def _damaged(what: str) -> CorruptFileError:
    return CorruptFileError(f"{what}: the queue's shared memory was written by something "
                            "other than a Queue; make a new Queue")


def _decode(blob: bytes | bytearray) -> Any:
    """A message with out-of-band buffers (or a damaged one) back into its object."""
    mv = memoryview(blob)
    try:
        body, bufs = fmt.read_obj(mv[_SEQ.size :])
    except ValueError as exc:
        raise _damaged(f"a message in the queue is not one a Queue put ({exc})") from None
    return pickle.loads(body, buffers=bufs)


def _remaining(deadline: float | None) -> float | None:
    """The timeout left until ``deadline`` (a time.monotonic() value; None: none)."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _deadline(block: bool, timeout: float | None) -> float | None:
    if not block:
        return time.monotonic()
    if timeout is None:
        return None
    return time.monotonic() + max(0.0, float(timeout))


def _assert_spawning(obj: object) -> None:
    from multiprocessing import context

    context.assert_spawning(obj)


def _dup_fds(fds: list[int]) -> list[Any]:
    from multiprocessing import reduction

    return [reduction.DupFd(fd) for fd in fds]


class Queue:
    """A process-shared FIFO queue with the interface of ``multiprocessing.Queue``.

    ``maxsize`` bounds the number of queued objects (0: only the ring's ``capacity`` in
    bytes bounds it).  A pickled object larger than the ring is refused with
    MessageTooLargeError (which says the capacity to use).  ``ctx`` is accepted for
    compatibility: the queue works with every start method.  See docs/queue.md for what
    differs from ``multiprocessing.Queue``.
    """

    _shared: _Shared
    _chan: SequencedChannel  # _shared.channel

    def __init__(self, maxsize: int = 0, *, capacity: int = DEFAULT_CAPACITY,
                 ctx: Any = None, spin: float = 50e-6) -> None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool):
            raise TypeError(f"maxsize must be an int, got {type(maxsize).__name__}")
        self._maxsize = max(0, maxsize)
        self._spin = float(spin)
        self._shared = _Shared.create(capacity, self._spin)
        self._closed = False
        self._bind()

    def _bind(self) -> None:
        """The parts put() and get() use on every call, one attribute each."""
        self._chan = self._shared.channel
        # G2's store of GETS: only a queue with a maxsize reads it (0: no store, see Counting)
        self._chan._seq_gets = _GETS_Q if self._maxsize else 0
        # Without a maxsize, put() and get() are the channel's one-call put and get
        # (_sequenced.py), made this queue's own attributes: no call layer between the
        # caller and them (~0.5k instructions a side).  A subclass that overrides put or
        # get keeps its own; close() takes both away again.
        if not self._maxsize:
            cls = type(self)
            if cls.put is Queue.put:
                self.put = self._chan._send_seq  # type: ignore[method-assign]
            if cls.get is Queue.get:
                self.get = self._chan._recv_seq  # type: ignore[method-assign]

    # --- passing to children ------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        _assert_spawning(self)
        if self._closed:
            raise ValueError(f"{type(self).__name__} {self!r} is closed")
        return {"maxsize": self._maxsize, "spin": self._spin,
                "fds": _dup_fds(self._shared.fds)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._maxsize = state["maxsize"]
        self._spin = state["spin"]
        fds = [d.detach() for d in state["fds"]]
        self._shared = _Shared.adopt(fds[0], fds[1], fds[2], self._spin)
        self._closed = False
        self._bind()

    # --- the multiprocessing.Queue interface ----------------------------------------------

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put ``obj``; block while the queue is full (queue.Full after ``timeout``, or at
        once when ``block`` is false)."""
        if self._closed:
            self._check_closed()
        if not self._maxsize:  # (what _bind() makes put() itself)
            self._chan._send_seq(obj, block, timeout)
            return
        self._shared.put(obj, self._maxsize, _deadline(block, timeout))

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, False)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest object; block while the queue is empty
        (queue.Empty after ``timeout``, or at once when ``block`` is false)."""
        if self._closed:
            self._check_closed()
        # Steps G1-G3 in one call (the lease ours, a message without out-of-band buffers
        # there); else the general path, which claims and waits.  Only a put() with a
        # maxsize sleeps on GETS (G4): none without one.
        obj = self._chan._recv_seq(block, timeout)
        if self._maxsize:
            self._shared.wake_putters()
        return obj

    def get_nowait(self) -> Any:
        return self.get(False)

    def put_many(self, objs: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put every object of the iterable ``objs`` in order.  ``timeout`` bounds the whole
        call; on queue.Full, the objects before the one that did not fit are queued (the
        exception's ``args[0]`` says how many)."""
        self._check_closed()
        deadline = _deadline(block, timeout)
        for done, obj in enumerate(objs):
            try:
                self._shared.put(obj, self._maxsize, deadline)
            except _queue.Full:
                raise _queue.Full(done) from None

    def get_many(self, block: bool = True, timeout: float | None = None,
                 max_messages_to_get: int = 1_000_000_000) -> list[Any]:
        """Wait (like get()) for one object, then take whatever else is queued now, up to
        ``max_messages_to_get`` in all; queue.Empty when none came."""
        self._check_closed()
        if max_messages_to_get < 1:
            raise ValueError("max_messages_to_get must be at least 1")
        shared = self._shared
        out = [shared.get(_deadline(block, timeout))]
        while len(out) < max_messages_to_get and shared.pending():
            try:
                out.append(shared.get(time.monotonic()))
            except _queue.Empty:
                break
        return out

    def qsize(self) -> int:
        """The approximate number of queued objects (exact when nothing moves)."""
        self._check_closed()
        return self._shared.count()

    def empty(self) -> bool:
        self._check_closed()
        return not self._shared.pending()

    def full(self) -> bool:
        self._check_closed()
        return self._maxsize > 0 and self._shared.count() >= self._maxsize

    def close(self) -> None:
        """This handle puts and gets no more (other handles and processes carry on); its
        memory and descriptors are released.  Idempotent; also done on garbage collection."""
        if self._closed:
            return
        self._closed = True
        self.__dict__.pop("put", None)  # (the one-call put and get of _bind())
        self.__dict__.pop("get", None)
        self._shared.close()

    def join_thread(self) -> None:
        """Only after close(), as with multiprocessing.Queue; returns at once (there is no
        feeder thread: put() wrote into shared memory before it returned)."""
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")

    def cancel_join_thread(self) -> None:
        """Nothing to cancel: no data is ever buffered in the process."""

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @property
    def capacity(self) -> int:
        """The ring's size in bytes (the largest message is a little smaller)."""
        return self._shared.channel.capacity

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"capacity={self._shared.channel.capacity}"
        return f"<mmapkit.{type(self).__name__} maxsize={self._maxsize} {state}>"


class JoinableQueue(Queue):
    """``multiprocessing.JoinableQueue``: a Queue with ``task_done()`` and ``join()``."""

    def task_done(self) -> None:
        """Say a task taken with get() is done; ValueError when called more often than
        objects were put."""
        shared = self._shared
        with shared.state_lock:
            done = shared.q[_DONE_Q]
            if done >= shared.q[_PUTS_Q]:
                raise ValueError("task_done() called too many times")
            shared.q[_DONE_Q] = done + 1
        if shared.i[_DWAIT_I]:
            shared.i[_DWAIT_I] = 0
            shared.done_w.wake()

    def join(self) -> None:
        """Block until every object put has been taken and marked done by task_done()."""
        shared = self._shared
        q, i32 = shared.q, shared.i
        while True:
            done = i32[_DONE_OFF // 4]
            if q[_PUTS_Q] <= q[_DONE_Q]:
                return
            i32[_DWAIT_I] = 1
            if q[_PUTS_Q] <= q[_DONE_Q]:
                return
            shared.done_w.wait(done, _SLICE)


class SimpleQueue:
    """``multiprocessing.SimpleQueue``: put(), get(), empty(), close(); no size bound but
    the ring's ``capacity``."""

    def __init__(self, *, capacity: int = DEFAULT_CAPACITY, ctx: Any = None,
                 spin: float = 50e-6) -> None:
        self._spin = float(spin)
        self._shared = _Shared.create(capacity, self._spin)
        self._closed = False

    def __getstate__(self) -> dict[str, Any]:
        _assert_spawning(self)
        if self._closed:
            raise ValueError(f"{type(self).__name__} {self!r} is closed")
        return {"spin": self._spin, "fds": _dup_fds(self._shared.fds)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._spin = state["spin"]
        fds = [d.detach() for d in state["fds"]]
        self._shared = _Shared.adopt(fds[0], fds[1], fds[2], self._spin)
        self._closed = False

    def _check_closed(self) -> None:
        if self._closed:  # what multiprocessing.SimpleQueue's closed pipe raises
            raise OSError("handle is closed")

    def put(self, obj: Any) -> None:
        self._check_closed()
        self._shared.put(obj, 0, None)

    def get(self) -> Any:
        self._check_closed()
        return self._shared.get(None)

    def empty(self) -> bool:
        self._check_closed()
        return not self._shared.pending()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._shared.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"capacity={self._shared.channel.capacity}"
        return f"<mmapkit.SimpleQueue {state}>"
