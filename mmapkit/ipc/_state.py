"""What a Channel handle holds: one slotted base class shared by the Channel's concerns.

Design rules:

- The Channel is one handle whose concerns live in sibling modules as base classes
  (``_claims.Claims``, ``_wake.Wake``, ``_broadcast.Broadcast``, ``_inplace.InPlace``);
  ``_sequenced.SequencedChannel`` (a Queue's Channel) is a subclass.
  They all work on the state declared here, so each concern reads its attributes by the
  same names and types, and the handle has no instance dict: send() and recv() touch a
  dozen attributes per message, and a dict of this size is past CPython's shared-key
  limit, where each access costs a lookup.  A slot defined on a base class costs what
  one on the class itself does (the lookup is cached per type).
- Nothing here runs: Channel.__init__ (channel.py) sets every slot, with a comment
  saying what it is for; the fork child's reset is Channel._after_fork.
"""

from __future__ import annotations

import mmap
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import OverrunError
from ..region import Region
from ..wait import Waiter
from . import _format as fmt

__all__ = ["State", "Turn"]


class Turn:
    """A handle's turn to send (or to receive) among the threads of its process.

    The turn is the one item of the list ``free``.  The lease's one-call paths (a send or
    receive that never waits: channel.py's ``_send_locked`` / ``_recv_locked``,
    _sequenced.py) take it with ``free.pop()`` and give it back with
    ``free.append(True)``: one call to a C method each, atomic under the GIL (and under a
    free-threaded build's per-list lock).  The pair costs ~250 instructions where a
    threading.Lock's acquire() and release() cost ~830 (callgrind, CPython 3.11: acquire()
    parses its arguments), paid on both sides of every message.  Such a path that finds
    the list empty (IndexError: another thread of ours has the turn) changes nothing and
    takes the general path, which waits its turn here: acquire() queues on a Lock (a
    thread that waits for room or data for long holds the turn, and the threads behind it
    sleep in the Lock, they do not spin), then takes the item, which only a one-call path
    can be holding, and for microseconds: it yields the GIL until then.
    """

    __slots__ = ("_lock", "free")

    def __init__(self) -> None:
        self.free = [True]
        self._lock = threading.Lock()

    def acquire(self) -> None:
        self._lock.acquire()
        free = self.free
        try:
            while True:
                try:
                    free.pop()
                    return
                except IndexError:  # a one-call path of another thread of ours has it
                    time.sleep(0)
        except BaseException:  # (KeyboardInterrupt while waiting) nothing taken
            self._lock.release()
            raise

    def release(self) -> None:
        self.free.append(True)
        self._lock.release()

    def __enter__(self) -> Turn:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class State:
    """The slots of a Channel handle (see channel.py for what each one means)."""

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
        "_dq2",
        "_empty_waits",
        "_fdbox",
        "_fence",
        "_fenced",
        "_finished",
        "_framers",
        "_full_waits",
        "_hdr",
        "_hdr8",
        "_hdr32",
        "_head_mine",
        "_head_seen",
        "_head_w",
        "_header",
        "_identity",
        "_lease_recv",
        "_lease_send_limit",
        "_lock_fd",
        "_lock_identity",
        "_lock_path",
        "_max",
        "_mc",
        "_mm",
        "_mp",
        "_obj_look",
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
        "_recv_free",
        "_recv_mutex",
        "_region",
        "_room_end",
        "_send_free",
        "_send_limit",
        "_send_mutex",
        "_sent",
        "_sent_bytes",
        "_seq_base",
        "_seq_counters",
        "_seq_framers",
        "_seq_get_miss",
        "_seq_gets",
        "_seq_put_miss",
        "_spin",
        "_tail_mine",
        "_tail_seen",
        "_tail_w",
        "_woke_consumers",
        "_woke_producers",
    )

    # the file and the mapping
    _region: Region
    _header: fmt.Header
    _path: str | None
    _lock_path: str | None
    _identity: tuple[int, int] | None  # (st_dev, st_ino) of the channel file
    _lock_identity: tuple[int, int] | None
    _mm: mmap.mmap
    _hdr: memoryview  # the header cast 'Q'
    _hdr32: memoryview  # ... cast 'I'
    _hdr8: memoryview  # ... as bytes
    _data: memoryview  # the ring
    _dq: memoryview  # the ring cast 'Q'
    _dq2: memoryview  # ... from its third word on: _dq2[i] is _dq[i + 2] (no new int)
    _base: int  # where the ring starts in _mm
    _base8: int  # where the payload of a frame at ring offset 0 starts in _mm
    _framers: dict[int, Callable[[memoryview, int, int, Any], None]]
    _seq_framers: list[Callable[..., None] | None]  # _sequenced.py's, per pickle length
    # a Queue's (queue.py sets them; see _sequenced.py)
    _seq_base: int  # where the pickle of a Queue message at ring offset 0 starts in _mm
    _seq_counters: memoryview  # the Queue's state page, cast 'Q' (PUTS at index 0)
    _seq_gets: int  # the index of GETS in it, or 0: get() does not keep GETS
    _seq_put_miss: Callable[[Any, bytes | None, bool, float | None], None]
    _seq_get_miss: Callable[[bool, float | None], Any]
    # the mode
    _cap: int
    _max: int
    _mp: bool
    _mc: bool
    _bc: bool
    _spin: float
    _plocked: bool  # producers claim (several of them, or the strict mode)
    _clocked: bool
    _please: bool  # ... by lease
    _clease: bool
    # descriptors and locks
    _lock_fd: int
    _pclaim: int
    _cclaim: int
    _bell: int
    _fdbox: list[int]
    _fence: threading.Lock
    _fenced: bool  # a lease entry takes _fence (version 2), else thieves call membarrier
    _send_mutex: Turn  # this handle's turn to send, among the threads of our process
    _recv_mutex: Turn
    _send_free: list[bool]  # _send_mutex.free: what the lease's send paths take
    _recv_free: list[bool]
    _attach_mutex: threading.Lock
    # our participant slots and lease names
    _pslot: int | None
    _cslot: int | None
    _pbusy: int
    _cbusy: int
    _ptoken: int
    _ctoken: int
    _finished: bool
    _closed: bool
    # the fast paths
    _recv_fast: bool
    _send_limit: int
    _lease_send_limit: int  # max_message while the lease's send path may run, else -1
    _lease_recv: bool  # the lease's receive path may run (attached, consumer lease)
    _readable_end: int
    _obj_look: bool  # recv_obj looks at the buffer count first (_inplace.py)
    # The lease's one-call paths' copies of the positions (channel.py, _claims.py):
    _head_mine: int  # head as our last one-call send stored it, while the lease stayed
    #                  ours since (-1: unknown; every other claim and steal clears it)
    _tail_mine: int  # the same for tail and our last one-call receive
    _head_seen: int  # a consumer's last look at head (frames below it are published)
    _tail_seen: int
    _room_end: int
    # waits and wake-ups
    _head_w: Waiter
    _tail_w: Waiter
    _woke_consumers: int
    _woke_producers: int
    # broadcast
    _cursor: int
    _pending_overrun: OverrunError | None
    # counts
    _sent: int
    _sent_bytes: int
    _received: int
    _received_bytes: int
    _full_waits: int
    _empty_waits: int
