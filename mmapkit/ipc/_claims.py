"""The Channel's claims: who may move head (producers) or tail (consumers) next.

Design rules:

- A channel with several producers (``multi_producer=True``) makes them claim the head
  before S2-S5 of channel.py's state table; several consumers claim the tail before
  R2-R3.  A claim is never held while waiting (for room, for data).
- A claim is a *lease* (format versions 2 and 3, TSO CPUs): the lease word of the role
  names the participant that may enter; it enters with no syscall (raise its busy word, a
  full barrier (version 2; none in version 3, below), read the lease word: L1-L3) and
  leaves by lowering its busy word (L9).  Anyone else *steals* the lease: under the
  role's flock (the channel file for producers, the ``.lock`` file for consumers;
  thieves one at a time) it writes its own name into the lease word, a barrier, then
  waits until every other busy word has read 0 once, skipping dead participants
  (L5-L8).  This is Dekker's handshake: each side stores, fences, then loads the other's
  word, so at least one sees the other; the entrant that sees a foreign name backs off,
  the thief that sees a busy word waits.
- Version 2: the barrier is the acquisition of a ``threading.Lock`` (on x86-64 every lock
  acquisition is a ``lock``-prefixed instruction, a full barrier), 0.2-0.4 us against
  5-7 us for a flock pair on the loaded test VM, so a lone producer or consumer, or one
  that keeps the CPU, pays no syscall per message; a steal costs about what a flock claim
  cost.
- Version 3 (format: _format.py) moves the whole barrier to the thief: the entrant stores
  its busy word and loads the lease word with nothing between (L2 is empty), and the thief,
  after storing the lease word, calls membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) (L6),
  which returns only after every CPU running an enrolled process has executed a full
  barrier (a CPU running none has passed a context switch, itself one).  Dekker's
  handshake holds as before: an entrant whose load ran before that barrier had its busy
  store drained by it, so the thief's later load sees busy = 1; an entrant whose store ran
  after it loads after the thief's store and sees a foreign name.  Every participant
  enrols (MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) when it attaches to a leased role,
  before its first entry; a fork child attaches, so enrols, again.  The entry loses two
  calls (callgrind: a Queue put+get 29.6k -> 28.0k instructions, an MPMC 64 B send+recv
  18.6k -> 16.9k); a steal gains a ~1 us syscall.  A process that cannot call membarrier
  (an old kernel, a seccomp filter) refuses to attach to a leased role of a version 3
  file (UnsupportedPlatformError), and creates version 2 files.
- A killed owner leaves its busy word at 1 and its slot lock free: thieves skip dead
  slots, so a killed peer cannot wedge the others.
- Version 1 files (made by older mmapkit, whose processes flock every claim), broadcast
  producers and weakly ordered CPUs (``strict()``: there every send and receive of every
  channel takes the kernel lock, whose lock and unlock are full barriers) claim by flock.
- L1-L3 are written out again where a message is the lease's common case: here in
  ``_lease_place`` / ``_lease_take`` (the in-place paths), in channel.py's
  ``_send_locked`` / ``_recv_locked`` (send and recv with several producers or
  consumers) and in _sequenced.py (the Queue's put and get).  A call to ``_lease_in``
  there costs 3% of a 64 B multi-producer, multi-consumer send+recv (callgrind, 27.1k
  against 26.2k instructions), and the whole path in one frame took that send+recv from
  26.2k to 20.5k, so the copies are deliberate: each is the same four lines (busy word
  up, fence, compare, busy word down on every way out).  ``_lease_in`` is the one
  spelling for everything else.

Protocol (steps of channel.py's table S1/R1; ``claim``: the lease is ours and our busy
word is 1; ``flock``: the role's flock, the channel file's for producers, the lock file's
for consumers):

    ====  =====================================  ==========  ===============================
    step  what                                   holds       another process may see
                                                             (after this step, before next)
    ====  =====================================  ==========  ===============================
    L1    lease claim: busy word of our slot = 1 -           a thief waits for us (L7)
    L2    v2: barrier (acquire a threading.Lock) -           -
          v3: nothing (the thief's L6 barrier)
    L3    lease word names us: we are in         claim       (K: our busy word stays 1,
                                                             our slot lock is free: dead,
                                                             thieves skip us)
    L4    else (or L3 held but nothing fits, no  -           -
          frame ready: back to the general
          path) busy = 0 and steal:
    L5    take the role's flock (tries without   flock       other thieves wait, yielding
          blocking, a yield apart; then waits                then in flock() (K: the
          in flock(): _thief_turn)                           kernel frees it)
    L6    lease word = our name (slot and its    flock       entrants at L3 see it and
          attach generation); barrier (v3:                   steal in turn; an owner past
          membarrier: one on every                           L3 is still in its claim (K:
          participant's CPU)                                 the word names a dead slot;
                                                             a new attacher of that slot
                                                             has a new name, so it steals
                                                             too: nobody skips L7)
    L7    wait until every other slot's busy     flock       -
          word read 0 once (or the slot is dead)
    L8    our busy = 1, release the flock        claim       -
    L9    unclaim: busy word = 0                 -           the lease stays ours: our next
                                                             claim is L1-L3 again
    ====  =====================================  ==========  ===============================

Lease names: the attach generation of the slot << 8 | 1 + the slot (``_slots.take``),
so a slot reused after its owner died has a new name.

Copies of the positions (``_head_mine``, ``_tail_mine``, ``_head_seen``).  A
memoryview load is ~250 instructions from Python, and the lease's one-call paths read
the position they move on every message.  They need not while the lease stayed ours
(callgrind, an MPMC 64 B send+recv: one message at a time 16.4k -> 16.3k instructions,
the consumer's head looked at each time; a hundred queued, with the turn below, 17.9k ->
16.2k):

    ====  =====================================  ==========  ===============================
    step  what                                   holds       another process may see
    ====  =====================================  ==========  ===============================
    M1    a one-call send stores head (S5) and   claim       head (the copy is ours only:
          keeps it as _head_mine (receive:                   nothing shared changes; K:
          tail, R3, and _tail_mine)                          the copy dies with us)
    M2    the next one-call entry passes L3:     claim       -
          nobody entered since M1 (a thief's
          L6 names itself, and only our own
          L6 names us again), so the position
          is the copy: no load
    M3    any other claim of ours clears the     -           -
          copy: every general path leaves by
          L9 through _p_leave/_c_leave (which
          clear it), every steal clears it
          first (L5, even one that gives up at
          its deadline with the lease ours), a
          fork child starts without one
    M4    a consumer's _head_seen: head at its   claim       -
          last look.  Head only grows and a
          frame below it stays whole until tail
          passes it, so a frame at tail below
          it is published whatever happened
          since; it looks again only when tail
          reached it
    ====  =====================================  ==========  ===============================

Threads: a handle's lease name and busy words are its process's, so two threads of one
process must not both be past L1 on one handle.  Each role has a turn (``_state.Turn``):
the one-call paths take it with list.pop() (a miss when another thread has it) and
every general path queues for it behind a Lock.
"""

from __future__ import annotations

import fcntl
import os
import queue
import time
from typing import TYPE_CHECKING

from .. import _platform
from .._fileio import flock_until
from .._testhooks import PAUSES as _PAUSES
from .._testhooks import pause as _pause
from . import _format as fmt
from ._slots import F_CBUSY as _F_CBUSY
from ._slots import F_PBUSY as _F_PBUSY
from ._slots import slot_word as _slot_word
from ._state import State

__all__ = ["Claims", "open_claims", "strict"]

_PLEASE_I = fmt.PRODUCER_LEASE // 4
_CLEASE_I = fmt.CONSUMER_LEASE // 4
_HEAD_Q = fmt.HEAD // 8
_TAIL_Q = fmt.TAIL // 8
_THIEF_YIELDS = 64  # tries of the thieves' flock without blocking (L5), a yield apart
_BUSY_SCAN = 64  # rounds of yielding on a busy peer between two looks at its liveness


def strict() -> bool:
    """True where every send and receive takes the kernel lock (weakly ordered CPUs, or
    MMAPKIT_CHANNEL_STRICT set): see the top comment."""
    return not _platform.IS_TSO or bool(os.environ.get("MMAPKIT_CHANNEL_STRICT"))


def open_claims(strict: bool) -> tuple[int, int]:
    """The claim descriptors of an anonymous channel: unlinked temporary files (a named
    channel gets its claims from open(), checked to be of its own files)."""
    import tempfile

    fds = []
    for _ in range(1 if strict else 2):
        fd, tmp = tempfile.mkstemp(prefix="mmapkit-chan-claim-")
        os.unlink(tmp)
        fds.append(fd)
    return fds[0], fds[-1]


class Claims(State):
    """The claim steps of a Channel (a base class of it: the state is the Channel's)."""

    __slots__ = ()

    if TYPE_CHECKING:  # provided by the Channel or another of its bases
        def _alive(self, slot: int) -> bool: ...

    def _lease_in(self, lease: int, busy: int, token: int) -> bool:
        """Steps L1-L3: True when we are in the claim (our busy word stays 1), else False
        with our busy word lowered again (L4: the caller steals, or takes another path)."""
        h32 = self._hdr32
        try:
            h32[busy] = 1  # L1
            if self._fenced:  # L2 (version 3: none, see the top comment)
                self._fence.acquire()
                self._fence.release()
            if h32[lease] == token:  # L3
                return True
        except BaseException:  # KeyboardInterrupt: a busy word left up would stall thieves
            h32[busy] = 0
            raise
        h32[busy] = 0  # L4
        return False

    def _p_enter(self, deadline: float | None) -> None:
        """Step S1: take the producers' claim (the lease, or the flock)."""
        if not self._please:
            self._claim(self._pclaim, deadline, True)
        elif not self._lease_in(_PLEASE_I, self._pbusy, self._ptoken):
            self._steal(_PLEASE_I, _F_PBUSY, self._ptoken, self._pclaim, deadline, True)

    def _p_leave(self) -> None:
        """Step S6: let the producers' claim go."""
        if self._please:
            self._head_mine = -1  # a general path wrote head: the one-call paths re-read it
            self._hdr32[self._pbusy] = 0  # L9
        else:
            fcntl.flock(self._pclaim, fcntl.LOCK_UN)

    def _c_enter(self, deadline: float | None) -> None:
        """Step R1: take the consumers' claim (the lease, or the flock)."""
        if not self._clease:
            self._claim(self._cclaim, deadline, False)
        elif not self._lease_in(_CLEASE_I, self._cbusy, self._ctoken):
            self._steal(_CLEASE_I, _F_CBUSY, self._ctoken, self._cclaim, deadline, False)

    def _c_leave(self) -> None:
        """Step R4: let the consumers' claim go."""
        if self._clease:
            self._tail_mine = -1  # (as _p_leave: the one-call paths re-read tail)
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
            if self._fenced:  # L2 (version 3: none, see the top comment)
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
            if self._fenced:  # L2 (version 3: none, see the top comment)
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
        # Whoever held the lease since our last claim may have moved the positions: the
        # one-call paths' copies of them are stale from here, even if this steal fails.
        self._head_mine = self._tail_mine = -1
        self._thief_turn(fd, deadline, full)  # L5: thieves one at a time
        try:
            h32[lease] = token  # L6
            if self._fenced:
                self._fence.acquire()
                self._fence.release()
            else:  # version 3: a barrier on every CPU that runs a participant, and ours
                _platform.membarrier_global()
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
            busy = words.tolist()
        finally:
            words.release()
        busy[me] = 0
        if not any(busy):  # the common steal: nobody in a claim (one C loop, not 64 steps)
            return
        waiting = [i for i, b in enumerate(busy) if b]
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

    def _thief_turn(self, fd: int, deadline: float | None, full: bool) -> None:
        """Step L5's flock.  Another thief holds it for a few microseconds unless the
        owner it waits for (L7) was preempted inside its claim: then a thief that sleeps in
        flock() costs a sleep and a wake-up, and the thieves behind it form a convoy that
        sleeps on every steal (measured, 4 x 4 on 2 vCPUs: ~1 voluntary context switch a
        message in such runs against ~0.01 in the others).  So try without blocking first,
        yielding the CPU between tries (to the preempted owner, as likely as not), and
        block only after that."""
        for _ in range(_THIEF_YIELDS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            if deadline is not None and time.monotonic() >= deadline:
                break
            os.sched_yield()
        self._claim(fd, deadline, full)

    def _claim(self, fd: int, deadline: float | None, full: bool) -> None:
        """Take a claim lock (producers' or consumers'), honouring the deadline.  Polls
        start short: a claim is held for microseconds, not for a write to disk."""
        if not flock_until(fd, fcntl.LOCK_EX, deadline, first=0.0001, most=0.005):
            raise queue.Full if full else queue.Empty
