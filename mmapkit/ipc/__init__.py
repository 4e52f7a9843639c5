"""Inter-process channels over shared memory: :class:`Channel` (re-exported as
``mmapkit.Channel``) and its :class:`ChannelStatistics`."""

from __future__ import annotations

from .channel import Channel, ChannelStatistics

__all__ = ["Channel", "ChannelStatistics"]
