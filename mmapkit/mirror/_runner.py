"""What the Mirror and the log Shipper share: a worker that carries records to a sink.

A worker (a :class:`Runner` subclass) writes one loop, ``run(until_caught_up=...)``, and
gets the rest from here: running that loop on a background thread (``start`` / ``stop``),
or in the foreground until SIGTERM/SIGINT with a progress line (``run_foreground``, what
the ``journal mirror`` and ``log ship`` commands do), the reconnect step with its capped
doubling backoff, and ``statistics()``.

Rules:

- ``run`` returns soon after ``request_stop()`` (an Event; safe from a signal handler or
  another thread): every wait in the loop is a slice of at most ~0.1 s or waits on it.
- State changes go through ``_set_state`` (under ``_progress``, a Condition), because
  ``statistics()`` and ``Mirror.wait`` read them from other threads.
- An error that stops ``run`` is kept (``_error``) and raised again by ``stop()``: the
  background thread itself never reports anything.
- ``SinkUnavailableError`` is the one error a worker survives: ``_reconnect`` gives the
  target up and waits; the loop opens it again (the target says where to resume).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, TextIO

from ..errors import ClosedError, SinkUnavailableError

__all__ = ["BACKOFF_MAX", "BACKOFF_MIN", "MAX_BATCH_BYTES", "MirrorStatistics", "Runner",
           "chunks", "run_foreground", "target_name"]

BACKOFF_MIN = 0.05  # seconds: the first wait after a lost target, doubled up to max_backoff
BACKOFF_MAX = 5.0
MAX_BATCH_BYTES = 8 << 20  # one send stays well under Redis's 512 MB request limits


@dataclass(frozen=True)
class MirrorStatistics:
    """A snapshot of what a mirror (or shipper) has done (``statistics()``)."""

    name: str
    target: str
    state: str             # "idle", "running", "reconnecting", "stopped", "failed"
    position: int | None   # next journal offset to send (None before the first open)
    lag: int | None        # journal records not yet in the target (None: unknown yet)
    sent: int              # records acknowledged by the target, this run
    batches: int
    reconnects: int
    skipped: int           # records deleted by retention and skipped (on_gap="skip")
    last_error: str | None


class Runner:
    """The shared half of a worker; subclasses define ``run`` and set ``name``."""

    name: str
    _kind = "worker"  # "mirror", "shipper": in messages and the thread's name

    def __init__(self, sink: Any, *, max_backoff: float) -> None:
        self.sink = sink
        self.max_backoff = max_backoff
        self._state = "idle"
        self._position: int | None = None
        self._sent = self._batches = self._reconnects = self._skipped = 0
        self._last_error: str | None = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def run(self, *, until_caught_up: bool = False) -> int:
        raise NotImplementedError

    # --- on a background thread -------------------------------------------------------

    def start(self) -> None:
        """Run the worker in a background thread until :meth:`stop`."""
        if self._closed:
            raise ClosedError(f"this {self._kind} was stopped; make a new "
                              f"{type(self).__name__}")
        if self._thread is not None:
            raise RuntimeError(f"this {self._kind} is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._thread_main, daemon=True,
                                        name=self._thread_name())
        self._thread.start()

    def _thread_name(self) -> str:
        return f"mmapkit-{self._kind}"

    def _thread_main(self) -> None:
        try:
            self.run()
        except BaseException:  # kept in _error: stop() (and Mirror.wait) raise it
            pass

    def request_stop(self) -> None:
        """Ask :meth:`run` (in any thread, or a signal handler) to return soon."""
        self._stop.set()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the background thread (it finishes the batch in flight) and give up the
        target.  Raises the error that stopped the worker, if one did."""
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(timeout)
            if t.is_alive():
                raise TimeoutError(f"the {self._kind} did not stop within {timeout} s")
            self._thread = None
        self._closed = True
        self._stopped()
        if self._error is not None:
            raise self._error

    def _stopped(self) -> None:
        """What a subclass releases once stopped (before the error is raised)."""

    # --- steps of run() ---------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        with self._progress:
            self._state = state
            self._progress.notify_all()

    def _advance(self, position: int, records: int) -> None:
        """A batch of ``records`` is in the target, up to ``position``: count it and wake
        wait()ers (under ``_progress``, as every state change)."""
        with self._progress:
            self._position = position
            self._sent += records
            self._batches += 1
            self._progress.notify_all()

    def _reconnect(self, exc: SinkUnavailableError, backoff: float) -> float:
        """R: note the error, give the target up, wait ``backoff`` s (less when asked to
        stop); returns the next backoff.  The loop opens the target again."""
        self._last_error = str(exc)
        self.sink.close()
        self._reconnects += 1
        self._set_state("reconnecting")
        self._stop.wait(backoff)
        return min(backoff * 2, self.max_backoff)

    def _failed(self, exc: BaseException) -> None:
        """Keep the error that stops run(), for stop() to raise."""
        self._error = exc
        self._last_error = str(exc) or type(exc).__name__
        self._set_state("failed")

    def _ended(self) -> None:
        """The last step of run(), failed or not."""
        if self._state != "failed":
            self._set_state("stopped")

    # --- reporting --------------------------------------------------------------------

    def _lag(self) -> int | None:
        return None

    def statistics(self) -> MirrorStatistics:
        return MirrorStatistics(self.name, target_name(self.sink), self._state,
                                self._position, self._lag(), self._sent, self._batches,
                                self._reconnects, self._skipped, self._last_error)


def chunks(records: list[Any], max_bytes: int) -> list[list[Any]]:
    """``records`` cut, in order, into runs of at most ``max_bytes`` of keys and values
    (a record larger than that goes alone)."""
    out: list[list[Any]] = []
    run: list[Any] = []
    size = 0
    for rec in records:
        n = len(rec.value) + len(rec.key or b"") + 64
        if run and size + n > max_bytes:
            out.append(run)
            run, size = [], 0
        run.append(rec)
        size += n
    if run:
        out.append(run)
    return out


def target_name(sink: object) -> str:
    """How messages name a sink's target (its ``target`` attribute, else its repr)."""
    return str(getattr(sink, "target", None) or repr(sink))


def run_foreground(worker: Runner, *, progress: float = 1.0, once: bool = False,
                   out: TextIO | None = None) -> int:
    """Run ``worker`` (a Mirror or Shipper) until SIGTERM/SIGINT (or, with ``once``, until
    it has caught up), printing a progress line every ``progress`` seconds (0: none) to
    ``out`` (stderr); what the ``mirror`` and ``ship`` commands do.  Returns 0 after a
    clean stop; raises the error that stopped the worker."""
    import signal
    import sys
    out = sys.stderr if out is None else out
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    def body() -> None:
        try:
            worker.run(until_caught_up=once)
        except BaseException:  # kept by the worker: stop() below raises it
            pass

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        t = threading.Thread(target=body, daemon=True, name="mmapkit-mirror")
        t.start()
        last = ""
        while t.is_alive():
            if stop.wait(progress or 0.5):
                worker.request_stop()  # finish the batch in flight, give the target up
                t.join()
                break
            st = worker.statistics()
            if progress:
                line = (f"{st.name} -> {st.target}: {st.state}, sent {st.sent}, position "
                        f"{st.position}, lag {st.lag}"
                        + (f", last error: {st.last_error}" if st.last_error else ""))
                if line != last:
                    print(line, file=out, flush=True)
                    last = line
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    worker.stop()  # raises what stopped it, if anything did
    st = worker.statistics()
    print(f"{st.name}: stopped, sent {st.sent}, position {st.position}", file=out, flush=True)
    return 0
