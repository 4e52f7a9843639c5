"""Shipper: every record of a crash-safe log directory sent to a target exactly once.

Logan and xlog upload whole files; the shipper streams records.  A log record is known by
(stream, sequence): each writing process has its own random stream id and numbers its
records in ascending order  ``mmapkit.log.read`` yields them once each, ascending per stream, but
the merge of streams is by time, so a dead process's buffer can surface records older than
ones already shipped.  The resume point is therefore one mark per stream (the last
sequence shipped), kept in the target and written in the same atomic step as the entries
(RedisStreamSink ``send(..., marks=...)``), plus the target's next entry offset.

    ====  =================================  ===========  ==============================
    #     step                               held         a kill here leaves
    ====  =================================  ===========  ==============================
    H1    sink.open(source_id) -> next       lease        nothing written
          offset N; sink.marks() -> marks
    H2    read the log (mmapkit.log.read);   lease        nothing written
          drop records with sequence <=
          marks[stream]
    H3    number the rest N, N+1, ...; send  lease        all of the batch and its marks,
          with the batch's new marks                      or neither: H1 reads which
    R     SinkUnavailableError: back off,    --           records taken but unsent are
          H1 again, re-filter what was                    filtered by the new marks and
          taken and not acknowledged                      renumbered: none twice, none
                                                          lost
    ====  =================================  ===========  ==============================

Each log record travels as a journal Record: value = the message (UTF-8), timestamp_ms,
headers ``stream``, ``seq``, ``pid``, ``level``, ``time_us`` (decimal), so the far side
reads it with the same consumer API as a mirrored journal.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..errors import MirrorError, SinkUnavailableError
from ..journal import Record
from ._runner import BACKOFF_MAX, BACKOFF_MIN, MAX_BATCH_BYTES, Runner, chunks, target_name

__all__ = ["Shipper", "log_record"]

_SLICE = 0.1


def log_record(offset: int, rec: Any) -> Record:
    """The journal Record that carries log record ``rec`` at target offset ``offset``."""
    return Record(offset, rec.time_us // 1000, None,
                  rec.message.encode("utf-8", "surrogateescape"),
                  (("stream", b"%d" % rec.stream), ("seq", b"%d" % rec.sequence),
                   ("pid", b"%d" % rec.pid), ("level", b"%d" % rec.level),
                   ("time_us", b"%d" % rec.time_us)))


class Shipper(Runner):
    """Ship the log in ``directory`` (optionally only log ``name``) to ``sink`` (a sink
    that keeps marks: RedisStreamSink).  ``run(until_caught_up=True)`` ships what is there
    and returns; ``start()``/``stop()`` follow the log in a thread."""

    _kind = "shipper"

    def __init__(self, directory: str | os.PathLike[str], sink: Any, *,
                 name: str | None = None, private_key: object = None, batch: int = 1000,
                 poll_interval: float = 0.25, max_backoff: float = BACKOFF_MAX) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        if not callable(getattr(sink, "marks", None)):
            raise MirrorError(f"{target_name(sink)} cannot keep a log's resume marks with its "
                              f"records: ship to Redis (RedisStreamSink), or append the log "
                              f"to a Journal and mirror that")
        self.directory = os.path.abspath(os.fspath(directory))
        if not os.path.isdir(self.directory):
            raise FileNotFoundError(f"no log directory at {self.directory}")
        super().__init__(sink, max_backoff=max_backoff)
        self.log_name = name
        self.name = f"ship:{name or '*'}"
        self.private_key = private_key
        self.batch = batch
        self.poll_interval = poll_interval
        self.source_id = f"log:{self.directory}#{name or '*'}"

    def _records(self, follow: bool) -> Iterator[Any]:
        from ..log import read
        return read(self.directory, name=self.log_name, private_key=self.private_key,
                    follow=follow, poll_interval=self.poll_interval)

    def run(self, *, until_caught_up: bool = False) -> int:
        """Ship until :meth:`request_stop` (or, with ``until_caught_up``, until every
        record there now is in the target).  Returns the records sent."""
        feed: queue.Queue[Any] = queue.Queue(maxsize=self.batch * 4)
        done = object()
        quit_reading = threading.Event()

        def reader() -> None:
            try:
                for rec in self._records(follow=not until_caught_up):
                    while not quit_reading.is_set():
                        try:
                            feed.put(rec, timeout=_SLICE)
                            break
                        except queue.Full:
                            continue
                    if quit_reading.is_set():
                        return
                feed.put(done)
            except BaseException as exc:
                feed.put(exc)

        t = threading.Thread(target=reader, daemon=True, name="mmapkit-ship-reader")
        t.start()
        taken: list[Any] = []  # log records taken from the feed and not acknowledged
        marks: dict[str, int] = {}
        nxt = 0
        opened = False
        finished = False
        backoff = BACKOFF_MIN
        last_send = time.monotonic()
        keepalive = getattr(self.sink, "lease_ms", 15_000) / 3000
        self._set_state("running")
        try:
            while not self._stop.is_set():
                try:
                    if not opened:
                        nxt = self.sink.open(self.source_id)
                        marks = self.sink.marks()
                        opened = True
                        backoff = BACKOFF_MIN
                        self._position = nxt
                        self._set_state("running")
                    while len(taken) < self.batch and not finished:
                        try:
                            item = feed.get(timeout=0 if taken else _SLICE)
                        except queue.Empty:
                            break
                        if item is done:
                            finished = True
                        elif isinstance(item, BaseException):
                            raise item
                        else:
                            taken.append(item)
                    fresh = [r for r in taken if r.sequence > marks.get(str(r.stream), -1)]
                    base = nxt
                    batch = [log_record(base + i, r) for i, r in enumerate(fresh)]
                    for part in chunks(batch, MAX_BATCH_BYTES):
                        # the marks of the part's source records (ascending per stream)
                        new_marks = {str(r.stream): r.sequence for r in
                                     fresh[part[0].offset - base : part[-1].offset + 1 - base]}
                        self.sink.send(part, marks=new_marks)
                        marks.update(new_marks)
                        nxt = part[-1].offset + 1
                        self._advance(nxt, len(part))
                        last_send = time.monotonic()
                    taken = []
                    if finished:
                        break
                    if time.monotonic() - last_send > keepalive:
                        self.sink.send([])
                        last_send = time.monotonic()
                except SinkUnavailableError as exc:
                    opened = False
                    backoff = self._reconnect(exc, backoff)
        except BaseException as exc:
            self._failed(exc)
            raise
        finally:
            quit_reading.set()  # the reader thread ends at its next record or poll
            self.sink.close()
            self._ended()
        return self._sent

    def __repr__(self) -> str:
        return f"Shipper({self.directory!r} -> {target_name(self.sink)})"
