"""The Channel's waits and wake-ups: the futex on a position, and the doorbell FIFO.

Design rules:

- Blocking: spin on the position for ``spin`` seconds (yielding the CPU between rounds:
  Disruptor's spin -> yield -> block), then sleep on the futex of the position's low 32
  bits (mmapkit.wait.Waiter).  A sleeper first raises a "sleeping" word that the other
  side reads after each publish, so the fast path makes no syscall unless someone sleeps.
  The publish path takes no store-load barrier (the claims' lock barrier costs as much as
  a send), so a publish can race a sleeper's announcement; sleeps are therefore cut into
  slices of ``_SLICE`` seconds after which the sleeper re-checks: a lost wake-up costs at
  most one slice, never a hang.
- Each sleep raises the role's epoch; a waker wakes once per epoch it has not woken yet,
  so a stream of sends to a sleeping consumer makes one FUTEX_WAKE, not one per message.
- Several sleepers of one role (multi-producer, multi-consumer, broadcast) share the
  role's "waiting" counter: it is recounted from the slots' sleeping words under the
  role's claim flock, so a flag left by a dead sleeper is not counted.
- Liveness: a sleeper looks at the peers that could move the position (their slot locks,
  ``_slots.census``) only after a slice brought nothing, so the common wake-up costs no
  census syscalls.  A receiver whose producers are all gone gets BrokenError once it has
  drained the ring; when all of them called finish(), EndOfChannel.  A producer whose
  consumers all died with the ring full gets BrokenError.
- Why a futex and not a pipe/FIFO doorbell (measured on a 2-vCPU VM, 2026-11): in C a
  futex and a pipe ping-pong the same (~5 us a round trip on one CPU, ~28 us across
  vCPUs, tight or idle), and from Python a futex through ctypes equals poll() + read() of
  a FIFO (~10 us); Channel round trips with FIFO doorbells for the single-sleeper roles
  were within noise of the futex (per-round ratios 0.9-1.25).  A pipe also needs two
  syscalls per sleep (poll with the slice's timeout, then a read to drain) and wakes only
  the reader that drains it, where FUTEX_WAKE wakes every sleeper (broadcast, MPMC).  What
  makes blocking round trips bimodal here (~14 us or ~55 us) is whether the scheduler puts
  the two processes on one vCPU, not the wake-up primitive.
- The doorbell (``fileno()``, for select/asyncio) is a FIFO ``<path>.bell``; once a
  handle asked for it, the header's DOORBELL word is 1 and every wake-up also writes a
  byte to it.  Its wake-ups are hints like the futex's: waits on it have timeouts.

Steps (a sleeper W of one role, a waker P of the other; no lock but the shared-counter
recount, which holds the role's claim flock):

    ====  =====================================  ==========  ===============================
    step  what                                   holds       another process may see
    ====  =====================================  ==========  ===============================
    W1    spin on the position (then yield)      -           -
    W2    slot sleeping = 1; epoch += 1;         (flock if   P reads "waiting" and wakes
          role's waiting word = count            shared)     (K: the flag stays; a shared
                                                             count skips dead slots)
    W3    re-read the position; unchanged:       -           -
          futex-wait on it for one slice
    W4    slot sleeping = 0, waiting recounted   (flock if   a spare wake-up later
                                                 shared)
    W5    no move after a slice: census of the   -           -
          peers (BrokenError / EndOfChannel)
    P1    after a publish: waiting word != 0     -           -
          and the epoch not woken yet: wake
          the futex (and ring the doorbell)
    ====  =====================================  ==========  ===============================
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import BrokenError, EndOfChannel
from . import _format as fmt
from . import _slots
from ._slots import F_SLEEPING as _F_SLEEPING
from ._slots import slot_word as _slot_word
from ._state import State

__all__ = ["Wake", "deadline"]

_SLICE = 0.05  # longest single sleep before re-checking positions and peers
_PRODUCER, _CONSUMER = fmt.STATE_PRODUCER, fmt.STATE_CONSUMER
_HEAD_Q = fmt.HEAD // 8
_TAIL_Q = fmt.TAIL // 8
_CW_I = fmt.CONSUMERS_WAITING // 4
_PW_I = fmt.PRODUCERS_WAITING // 4
_CE_I = fmt.CONSUMERS_EPOCH // 4
_PE_I = fmt.PRODUCERS_EPOCH // 4
_BELL_I = fmt.DOORBELL // 4


def deadline(timeout: float | None) -> float | None:
    """The time.monotonic() by which a wait of ``timeout`` seconds ends (None: never)."""
    return None if timeout is None else time.monotonic() + timeout


_deadline = deadline


class Wake(State):
    """The wait and wake-up steps of a Channel (a base class of it: the state is the
    Channel's)."""

    __slots__ = ()

    if TYPE_CHECKING:  # provided by the Channel or another of its bases
        def _where(self) -> str: ...
        def _check_open(self) -> None: ...
        def _sync_fds(self) -> None: ...
        def _attach(self, role: int) -> int: ...
        def _census(self, role: int) -> tuple[int, int, int]: ...
        def recv_nowait(self) -> bytes: ...
        def send_nowait(self, data: bytes | bytearray | memoryview) -> None: ...

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
        from .._aio import readable  # (asyncio: loaded on the first async wait only)

        with self.armed(send=send) as fd:
            await readable(fd, nap)

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
