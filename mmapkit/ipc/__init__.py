"""Inter-process channels over shared memory: :class:`Channel` (re-exported as
``mmapkit.Channel``) and its :class:`ChannelStatistics`; :class:`Queue`,
:class:`SimpleQueue` and :class:`JoinableQueue`, drop-ins for ``multiprocessing``'s."""

from __future__ import annotations

from .channel import Channel, ChannelStatistics
from .queue import JoinableQueue, Queue, SimpleQueue

__all__ = ["Channel", "ChannelStatistics", "JoinableQueue", "Queue", "SimpleQueue"]
