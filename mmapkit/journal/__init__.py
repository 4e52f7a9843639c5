"""Journal: a Kafka-class persistent log on one machine (see journal.py for the protocol)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._format import Record
from .consumer import Consumer
from .journal import CheckReport, Journal, JournalStatistics, RecoveryReport
from .reader import Reader

if TYPE_CHECKING:
    from .remote import JournalServer, ProtocolError, RemoteReader, serve

__all__ = ["CheckReport", "Consumer", "Journal", "JournalServer", "JournalStatistics",
           "ProtocolError", "Reader", "Record", "RecoveryReport", "RemoteReader", "serve"]

_REMOTE = ("JournalServer", "ProtocolError", "RemoteReader", "serve")


def __getattr__(name: str) -> object:
    # the remote side (sockets, transfer) loads on first use: `import mmapkit` stays light
    if name in _REMOTE:
        from . import remote
        return getattr(remote, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
