"""What a Channel handle holds: one slotted base class shared by the Channel's concerns.

Design rules:

- The Channel is one handle whose concerns live in sibling modules as base classes
  (``_claims.Claims``, ``_wake.Wake``, ``_broadcast.Broadcast``, ``_inplace.InPlace``,
  ``_sequenced.Sequenced``).
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
from collections.abc import Callable
from typing import Any

from ..errors import OverrunError
from ..region import Region
from ..wait import Waiter
from . import _format as fmt

__all__ = ["State"]


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
        "_send_limit",
        "_send_mutex",
        "_sent",
        "_sent_bytes",
        "_seq_framers",
        "_spin",
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
    _base: int  # where the ring starts in _mm
    _base8: int  # where the payload of a frame at ring offset 0 starts in _mm
    _framers: dict[int, Callable[[memoryview, int, int, Any], None]]
    _seq_framers: dict[int, Callable[..., None]]  # _sequenced.py's, per pickle length
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
    _send_mutex: threading.Lock
    _recv_mutex: threading.Lock
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
