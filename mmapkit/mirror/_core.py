"""Mirror: a named Journal consumer that carries every record to a sink, exactly once.

The loop, as a state table.  "Target" is the sink's server; the mirror keeps no state of
its own that it trusts: where to resume is read back from the target at every (re)open.

    ====  ==================================  ===============  ============================
    #     step                                held             a kill (or a lost
                                                               connection) here leaves
    ====  ==================================  ===============  ============================
    M1    sink.open(source_id): take          target lease     nothing written; the lease
          writership, read the target's                        runs out, or the next mirror
          next offset N                                        of this host sees us dead
    M2    N < journal start: records were     lease            nothing written (on_gap=
          deleted unmirrored: error (or                        "error": the error says what
          on_gap="skip": N = start); N >                       to do)
          journal end: a foreign target
    M3    consumer.seek(N)                    lease            nothing written
    M4    poll up to `batch` records (and     lease            nothing written
          up to `linger_ms` for more)
    M5    sink.send(records): one atomic      lease            all of the batch or none of
          step on the target; returns on                       it in the target; the next
          the server's acknowledgement                         M1 reads which
    M6    consumer.commit(position)           lease            a commit behind the target:
          (informational: lag tools, not                       harmless, M1 never reads it
          trusted at M1)
    R     SinkUnavailableError in M1/M5:      --               sink closed, backoff
          close, back off (doubling, capped),                  (doubling), then M1: a batch
          then M1 again                                        that landed before the error
                                                               is not sent again
    ====  ==================================  ===============  ============================

Why the target never holds a duplicate: every record carries its journal offset into the
target (Redis: the entry ID), the target refuses an offset not above its last one, and
M1 resumes after the last one it holds.  In order: one writer (the lease) sends offsets
in ascending order.  Nothing is skipped silently: M2 refuses a gap unless asked.

Test pause points (``mmapkit._testhooks``): mirror.opened (M3 done), mirror.sent (M5 done,
before M6).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from .._testhooks import PAUSES, pause
from ..errors import (
    MirrorError,
    OffsetOutOfRangeError,
    SinkUnavailableError,
    TargetMismatchError,
)
from ._runner import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    MAX_BATCH_BYTES,
    Runner,
    chunks,
    target_name,
)

if TYPE_CHECKING:
    from ..journal import Journal
    from ._sink import Sink

__all__ = ["Mirror"]

_IDLE_SLICE = 0.1  # seconds a poll waits before looking at stop() and the lease again


class Mirror(Runner):
    """Carry ``journal`` to ``sink``: every record exactly once and in order, while this
    mirror is the target's only writer (see the module comment).

    ``name`` names the mirror's consumer in the journal (default ``"mirror"``); it is
    part of the source id the target remembers, so keep it when restarting.  ``batch``:
    most records per send; ``linger_ms``: how long to wait for a fuller batch once one
    record is there; ``max_batch_bytes`` cuts a batch into several sends.  ``on_gap``:
    ``"error"`` (default) when retention deleted records before they were mirrored, or
    ``"skip"`` to go on from the oldest kept record.
    """

    _kind = "mirror"
    sink: Sink

    def __init__(self, journal: Journal | str | os.PathLike[str], sink: Sink, *,
                 name: str | None = None, batch: int = 1000, linger_ms: float = 0.0,
                 on_gap: str = "error", max_backoff: float = BACKOFF_MAX,
                 max_batch_bytes: int = MAX_BATCH_BYTES) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        if linger_ms < 0:
            raise ValueError(f"linger_ms must be >= 0, got {linger_ms}")
        if on_gap not in ("error", "skip"):
            raise ValueError(f"on_gap must be 'error' or 'skip', got {on_gap!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError("a mirror name must be a non-empty str")
        from ..journal import Journal
        super().__init__(sink, max_backoff=max_backoff)
        self._journal = journal if isinstance(journal, Journal) else Journal(journal)
        self._owns_journal = not isinstance(journal, Journal)
        self.name = name or "mirror"
        self.batch = batch
        self.linger = linger_ms / 1000
        self.on_gap = on_gap
        self.max_batch_bytes = max_batch_bytes
        self.source_id = f"journal:{self._journal.path}#{self.name}"

    # --- running (start/stop/request_stop: Runner) -----------------------------------

    def _thread_name(self) -> str:
        return f"mmapkit-mirror-{self.name}"

    def _stopped(self) -> None:
        if self._owns_journal:
            self._journal.close()

    def run(self, *, until_caught_up: bool = False) -> int:
        """Mirror in this thread until :meth:`request_stop` / :meth:`stop` (or, with
        ``until_caught_up``, until the target holds every record published when a poll
        finds nothing new).  Returns the records sent.  Reconnects by itself when the
        target is unavailable; any other error stops it and is raised."""
        from ..journal import Journal
        # A handle of its own: run() is usually the runner's thread (start()), and a
        # Journal's tail view is not shared between threads (as the journal server's
        # connections each open theirs); the caller's handle stays the caller's.
        j = Journal(self._journal.path)
        consumer = j.consumer(self.name, reset="none")
        opened = False
        backoff = BACKOFF_MIN
        last_send = 0.0
        keepalive = getattr(self.sink, "lease_ms", 15_000) / 3000
        self._set_state("running")
        try:
            while not self._stop.is_set():
                try:
                    if not opened:
                        self._open(j, consumer)
                        opened = True
                        backoff = BACKOFF_MIN
                        last_send = time.monotonic()
                        self._set_state("running")
                    if until_caught_up and self._position is not None and (
                            self._position >= j.end_offset):
                        break
                    recs = self._poll(j, consumer)
                    for part in chunks(recs, self.max_batch_bytes):
                        self.sink.send(part)
                        if PAUSES:
                            pause("mirror.sent")
                        last_send = time.monotonic()
                        consumer.commit(part[-1].offset + 1)
                        self._advance(part[-1].offset + 1, len(part))
                    if not recs and time.monotonic() - last_send > keepalive:
                        self.sink.send([])  # renew the lease while idle
                        last_send = time.monotonic()
                except SinkUnavailableError as exc:
                    opened = False
                    backoff = self._reconnect(exc, backoff)
        except BaseException as exc:
            self._failed(exc)
            raise
        finally:
            try:
                self.sink.close()
            finally:
                consumer.close()
                j.close()
                self._ended()
        return self._sent

    def _open(self, j: Journal, consumer: Any) -> None:
        """M1-M3."""
        nxt = self.sink.open(self.source_id)
        start, end = j.start_offset, j.end_offset
        if nxt > end:
            self.sink.close()
            raise TargetMismatchError(
                f"{target_name(self.sink)} holds offsets up to {nxt - 1}, but journal "
                f"{j.path} ends at {end}: the target mirrors an older journal of the same "
                f"path; mirror to a new target (or delete the old one)")
        if nxt < start:
            if self.on_gap != "skip":
                self.sink.close()
                raise TargetMismatchError(
                    f"retention deleted records {nxt}..{start - 1} of {j.path} before "
                    f"mirror {self.name!r} sent them: the target cannot be complete; pass "
                    f"on_gap='skip' (CLI: --on-gap skip) to go on from {start} and leave "
                    f"that gap, or mirror to a new target")
            self._skipped += start - nxt
            nxt = start
        consumer.seek(nxt)
        if PAUSES:
            pause("mirror.opened")
        with self._progress:
            self._position = nxt
            self._progress.notify_all()

    def _poll(self, j: Journal, consumer: Any) -> list[Any]:
        """M4: a batch (lingering for a fuller one when asked)."""
        try:
            recs: list[Any] = consumer.poll(self.batch, _IDLE_SLICE)
            if recs and self.linger and len(recs) < self.batch:
                deadline = time.monotonic() + self.linger
                while len(recs) < self.batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    more = consumer.poll(self.batch - len(recs), left)
                    if not more:
                        break
                    recs += more
        except OffsetOutOfRangeError:
            if self.on_gap == "skip":  # retention passed us while we ran: say so, go on
                start = j.start_offset
                self._skipped += max(0, start - consumer.position)
                consumer.seek(start)
                return []
            raise TargetMismatchError(
                f"retention deleted records of {j.path} at offset {consumer.position} "
                f"before mirror {self.name!r} sent them: keep records longer than the "
                f"mirror's lag, or restart with on_gap='skip'") from None
        return recs

    def wait(self, offset: int | None = None, timeout: float | None = None) -> bool:
        """Block until the target holds every offset below ``offset`` (default: the
        journal's end now).  False on timeout; raises the error that stopped the mirror."""
        if offset is None:
            offset = self._journal.end_offset
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._progress:
            while self._position is None or self._position < offset:
                if self._error is not None:
                    raise self._error
                if self._state == "stopped":
                    raise MirrorError("the mirror is stopped: start() it first")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._progress.wait(0.1 if left is None else min(left, 0.1))
        return True

    # --- reporting -------------------------------------------------------------------

    def _lag(self) -> int | None:
        if self._position is None or self._journal.closed:
            return None
        return max(0, self._journal.end_offset - self._position)

    def __enter__(self) -> Mirror:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Mirror({self._journal.path!r} -> {target_name(self.sink)}, name={self.name!r})"

