"""What a mirror target must do: the contract between :class:`Mirror` and its sinks.

A sink is the far side of a mirror (a Redis stream, a Kafka partition).  The mirror owns
the order of work; the sink owns what "delivered" and "only one writer" mean on its
server.  The contract, in the order the mirror uses it:

1. ``open(source_id)``: become the target's only writer (a lock, a Kafka fence) or raise
   ``TargetOwnedError``.  Return the next journal offset the target does not hold (0 if
   empty), read back from the target itself, never from local state.
   ``TargetMismatchError`` if the target holds records that do not come from
   ``source_id``.
2. ``send(records)``: deliver the records in order, each at most once in the target even
   when the same offsets are sent again after a crash (the offset travels with the record
   and the target refuses or ignores a repeat).  Return only when the server acknowledged
   all of them.  ``SinkUnavailableError`` if it could not; a prefix may have landed, and
   the next ``open`` says where to resume.
   ``send([])`` is a keep-alive: the mirror calls it every ``lease_ms / 3`` ms (default
   5 s) while the journal is idle, so a sink whose writership expires can renew it; a sink
   without one does nothing.
3. ``close()``: give up writership; idempotent.

Optional attributes the mirror reads with ``getattr``: ``target`` (a str naming the target
for messages and ``statistics()``; default ``repr(sink)``) and ``lease_ms`` (how long
writership outlives a silent writer; default 15000).  A sink that can store resume marks
with its records (what the log Shipper needs) offers ``marks() -> dict[str, int]`` and
``send(records, *, marks=...)``; RedisStreamSink does.

``source_id`` names the source (the journal's directory and its mirror name), so that two
journals are never mixed in one target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..journal import Record

__all__ = ["Sink"]


class Sink(Protocol):
    """A mirror target; see the module comment for the contract."""

    def open(self, source_id: str) -> int:
        """Take writership; return the next journal offset the target lacks."""
        ...

    def send(self, records: Sequence[Record]) -> None:
        """Deliver ``records`` (ascending offsets) and wait for the acknowledgement."""
        ...

    def close(self) -> None:
        """Give up writership and the connection (idempotent)."""
        ...
