"""Inter-process channels over shared memory: :class:`Channel` (re-exported as
``mmapkit.Channel``) and its :class:`ChannelStatistics`; :class:`Queue`,
:class:`SimpleQueue` and :class:`JoinableQueue`, drop-ins for ``multiprocessing``'s
(loaded on first use: they need pickle and tempfile, a Channel does not)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .channel import Channel, ChannelStatistics

if TYPE_CHECKING:
    from .queue import JoinableQueue, Queue, SimpleQueue

__all__ = ["Channel", "ChannelStatistics", "JoinableQueue", "Queue", "SimpleQueue"]


def __getattr__(name: str) -> Any:
    if name in ("JoinableQueue", "Queue", "SimpleQueue"):
        from . import queue

        return getattr(queue, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
