"""The Channel's participant registry: 64 slots in the header, one per live handle role.

Design rules:

- A slot is a u32 state plus fields (docs/formats.md, "Participant slots"); whether its
  participant is alive is not in the file: it holds an exclusive OFD lock on byte
  ``LOCK_SLOT + slot`` of the lock file for its handle's whole life, and the kernel drops
  that lock when the process dies.  Our own slots are alive without asking the kernel
  (an OFD lock does not conflict with its own description, so the kernel would answer
  "free").
- Slots are taken and renamed under the registry lock (byte ``LOCK_REGISTRY``); a state
  changes otherwise only by its live owner (finish(), close()).  Everything here works on
  the header's u32 view and the lock descriptor the Channel hands in: no state of its own.

Slot states (one u32 per slot; the slot's lock byte says alive or not):

    ==========  ====================  ==========================================
    state       set by                meaning for others
    ==========  ====================  ==========================================
    FREE        consumer close()      nothing
    PRODUCER    first send            live if locked; gone unfinished if not
    CONSUMER    first recv            live if locked; dead consumer if not
    FINISHED    finish()              this producer ended its stream
    SUBSCRIBER  subscribe(name)       a broadcast cursor; kept (with its name) after close
    ==========  ====================  ==========================================

Taking a slot: steps A1-A6 of the Channel's state table (channel.py).  A new producer that
finds no live producer clears the FINISHED and dead PRODUCER slots (A3): it starts a new
stream on the same ring.  Each take of a slot bumps its generation and clears its busy
words (a dead owner's), so the lease name it gets is new (_claims.py, steps L1-L9).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .. import _platform
from .._testhooks import PAUSES as _PAUSES
from .._testhooks import pause as _pause
from ..errors import ModeConflictError
from . import _format as fmt

__all__ = [
    "F_CBUSY",
    "F_GEN",
    "F_PBUSY",
    "F_PID",
    "F_SLEEPING",
    "F_STATE",
    "Mine",
    "alive",
    "census",
    "sleepers",
    "slot_byte",
    "slot_word",
    "take",
    "take_subscriber",
]

FREE, PRODUCER, CONSUMER, FINISHED, SUBSCRIBER = (
    fmt.STATE_FREE, fmt.STATE_PRODUCER, fmt.STATE_CONSUMER, fmt.STATE_FINISHED,
    fmt.STATE_SUBSCRIBER)
# slot fields as u32 indexes within a slot
F_STATE = fmt.SLOT_STATE // 4
F_PID = fmt.SLOT_PID // 4
F_SLEEPING = fmt.SLOT_SLEEPING // 4
F_PBUSY = fmt.SLOT_PBUSY // 4
F_GEN = fmt.SLOT_GENERATION // 4
F_CBUSY = fmt.SLOT_CBUSY // 4

# (our producer slot, our consumer slot): alive by definition
Mine = tuple[int | None, int | None]


def slot_byte(slot: int, offset: int) -> int:
    """Byte offset in the header of ``offset`` within participant slot ``slot``."""
    return fmt.SLOT_OFFSET + slot * fmt.SLOT_SIZE + offset


def slot_word(slot: int, field: int) -> int:
    """Index in the u32 header view of field ``field`` (F_STATE, F_PID...) of a slot."""
    return (fmt.SLOT_OFFSET + slot * fmt.SLOT_SIZE) // 4 + field


def alive(lock_fd: int, slot: int, mine: Mine) -> bool:
    """Whether the participant in ``slot`` lives (holds its slot lock)."""
    if slot == mine[0] or slot == mine[1]:
        return True
    return _platform.range_held(lock_fd, fmt.LOCK_SLOT + slot)


def census(h32: memoryview, lock_fd: int, role: int, mine: Mine) -> tuple[int, int, int]:
    """(alive, gone, finished) participants of ``role`` (finished: producers only)."""
    live = gone = finished = 0
    for i in range(fmt.SLOT_COUNT):
        st = h32[slot_word(i, F_STATE)]
        if st == role:
            if alive(lock_fd, i, mine):
                live += 1
            else:
                gone += 1
        elif st == FINISHED and role == PRODUCER:
            finished += 1
    return live, gone, finished


def sleepers(h32: memoryview, lock_fd: int, role: int, mine: Mine) -> int:
    """Live participants of ``role`` (consumers: and subscribers) whose sleeping flag is
    up; a dead sleeper's flag is skipped.  The caller holds the role's claim flock."""
    count = 0
    for i in range(fmt.SLOT_COUNT):
        state = h32[slot_word(i, F_STATE)]
        if ((state == role or (role == CONSUMER and state == SUBSCRIBER))
                and h32[slot_word(i, F_SLEEPING)] and alive(lock_fd, i, mine)):
            count += 1
    return count


def take(h32: memoryview, lock_fd: int, role: int, multi: bool, mine: Mine) -> tuple[int, int]:
    """Steps A1-A6: take a slot for ``role`` and keep its lock; (slot, lease name).
    ModeConflictError when a single-``role`` channel has its participant already, or
    every slot is taken by a live one."""
    _platform.range_lock(lock_fd, fmt.LOCK_REGISTRY)  # A1
    try:
        states = [(i, h32[slot_word(i, F_STATE)]) for i in range(fmt.SLOT_COUNT)]  # A2
        live = {i: alive(lock_fd, i, mine) for i, st in states if st != FREE}
        if not multi and any(st == role and live[i] for i, st in states):
            kind = "producer" if role == PRODUCER else "consumer"
            raise ModeConflictError(
                f"another process is already the {kind} of this single-{kind} channel; "
                f"create it with multi_{kind}=True to have several")
        if role == PRODUCER and not any(st == PRODUCER and live[i] for i, st in states):
            # A3: no live producer: a new stream starts; forget ended and abandoned ones.
            for i, st in states:
                if st in (PRODUCER, FINISHED) and not live[i]:
                    h32[slot_word(i, F_STATE)] = FREE
            states = [(i, h32[slot_word(i, F_STATE)]) for i in range(fmt.SLOT_COUNT)]
        order = ([i for i, st in states if st == FREE]
                 + [i for i, st in states if st == CONSUMER and not live[i]]
                 + [i for i, st in states if st in (PRODUCER, FINISHED) and not live[i]])
        for slot in order:
            if _platform.range_lock(lock_fd, fmt.LOCK_SLOT + slot, wait=False):  # A4
                if _PAUSES:
                    _pause("channel.attach:slot")
                h32[slot_word(slot, F_PID)] = os.getpid() & 0xFFFFFFFF  # A5
                h32[slot_word(slot, F_SLEEPING)] = 0
                h32[slot_word(slot, F_PBUSY)] = 0  # a dead owner's, if it died busy
                h32[slot_word(slot, F_CBUSY)] = 0
                # A new lease name for every take: a lease word left naming this slot by a
                # thief that died at L6-L7 must not let us in while the owner it was
                # waiting for is still inside its claim.
                gen = (h32[slot_word(slot, F_GEN)] + 1) & 0xFFFFFF
                h32[slot_word(slot, F_GEN)] = gen
                h32[slot_word(slot, F_STATE)] = role
                return slot, gen << 8 | (slot + 1)
        raise ModeConflictError(
            f"all {fmt.SLOT_COUNT} participant slots of the channel are taken by live "
            "processes; close some handles first")
    finally:
        _platform.range_unlock(lock_fd, fmt.LOCK_REGISTRY)  # A6


def take_subscriber(h32: memoryview, h8: memoryview, lock_fd: int, raw: bytes,
                    mine: Mine, start: Callable[[], int]) -> int:
    """A1-A6 for broadcast subscriber ``raw`` (its UTF-8 name): its old slot if the name
    was seen before (the cursor kept), else a new one whose cursor is ``start()``.
    Returns the slot; ModeConflictError when the name is in use by a live process or
    every slot is taken."""
    h64 = h8.cast("Q")
    try:
        _platform.range_lock(lock_fd, fmt.LOCK_REGISTRY)
        try:
            states = [(i, h32[slot_word(i, F_STATE)]) for i in range(fmt.SLOT_COUNT)]
            named = [i for i, st in states if st == SUBSCRIBER and bytes(
                h8[slot_byte(i, fmt.SLOT_NAME) : slot_byte(i, fmt.SLOT_NAME) + fmt.NAME_SIZE]
            ).rstrip(b"\0") == raw]
            if named and alive(lock_fd, named[0], mine):
                raise ModeConflictError(
                    f"subscriber {raw.decode()!r} is in use by a live process "
                    f"(pid {h32[slot_word(named[0], F_PID)]})")
            if named:
                order = named
            else:
                live = {i: alive(lock_fd, i, mine) for i, st in states if st != FREE}
                order = ([i for i, st in states if st == FREE]
                         + [i for i, st in states if st == CONSUMER and not live[i]]
                         + [i for i, st in states if st == SUBSCRIBER and not live[i]])
            for slot in order:
                if not _platform.range_lock(lock_fd, fmt.LOCK_SLOT + slot, wait=False):
                    continue
                if not named:  # a new name: start at the oldest retained message
                    at = slot_byte(slot, fmt.SLOT_NAME)
                    h8[at : at + fmt.NAME_SIZE] = raw.ljust(fmt.NAME_SIZE, b"\0")
                    h64[slot_byte(slot, fmt.SLOT_CURSOR) // 8] = start()
                h32[slot_word(slot, F_PID)] = os.getpid() & 0xFFFFFFFF
                h32[slot_word(slot, F_SLEEPING)] = 0
                h32[slot_word(slot, F_STATE)] = SUBSCRIBER
                return slot
            raise ModeConflictError(f"all {fmt.SLOT_COUNT} participant slots are taken; "
                                    "close some handles first")
        finally:
            _platform.range_unlock(lock_fd, fmt.LOCK_REGISTRY)
    finally:
        h64.release()
