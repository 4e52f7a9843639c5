"""Crash-safe logging through a memory-mapped buffer (the xlog / Logan technique).

``Writer`` frames records into a per-process mapped buffer file; a flush thread writes
them to log files as compressed (optionally encrypted) frames; ``read`` gives them back
from files and buffers, exactly once and in order, even after ``kill -9``.  ``Handler``
is a ``logging.Handler`` (and loguru sink) on top.  Formats: docs/formats.md ``## log``;
guarantees: docs/guarantees.md ``## log``.
"""

from __future__ import annotations

from ._codec import Damage, Record
from ._crypto import generate_keypair
from .handler import Handler
from .reader import LogCheck, check, read, read_buffer
from .writer import LogWarning, Writer, WriterStatistics

__all__ = [
    "Damage",
    "Handler",
    "LogCheck",
    "LogWarning",
    "Record",
    "Writer",
    "WriterStatistics",
    "check",
    "generate_keypair",
    "read",
    "read_buffer",
]


def __getattr__(name: str) -> object:  # Shipper (mmapkit.mirror) loads only when asked for
    if name == "Shipper":
        from ..mirror._ship import Shipper
        return Shipper
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
