"""Consumer: a named reader whose committed position survives restarts (Kafka semantics).

Design rules:

- The committed position is *the next offset to read*, stored under ``consumer/<name>``
  in the journal's ``consumers.kv`` (an ``mmapkit.KV(..., multiprocess=True)``, used only
  through its public API): a commit is acknowledged once ``commit()`` returns, and
  survives a crash of any process like every KV write.
- ``poll()`` moves the in-memory position only; ``commit()`` stores it.  Commit after
  processing gives at-least-once delivery (a crash re-delivers what came after the last
  commit); commit before processing gives at-most-once.
- A position that retention removed follows ``reset``: ``"earliest"`` (the oldest record
  kept), ``"latest"`` (the end) or ``"none"`` (raise OffsetOutOfRangeError).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import OffsetOutOfRangeError
from ._format import Record

if TYPE_CHECKING:
    from .journal import Journal
    from .reader import Reader

__all__ = ["Consumer"]


class Consumer:
    """A named consumer of a journal; see :meth:`Journal.consumer`."""

    def __init__(self, journal: Journal, name: str, *, reset: str = "earliest") -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a consumer needs a non-empty str name")
        if reset not in ("earliest", "latest", "none"):
            raise ValueError(f"reset must be 'earliest', 'latest' or 'none', got {reset!r}")
        self._j = journal
        self.name = name
        self.reset = reset
        self._key = f"consumer/{name}"
        self._kv = journal._offsets()
        self._reader: Reader | None = None
        committed = self.committed
        if committed is None:
            self._position = journal.start_offset if reset != "latest" else journal.end_offset
        else:
            self._position = committed

    @property
    def committed(self) -> int | None:
        """The committed position (next offset to read), or None before the first commit."""
        value = self._kv.get(self._key)
        return None if value is None else int(value)

    @property
    def position(self) -> int:
        """The next offset poll() returns."""
        return self._position

    @property
    def lag(self) -> int:
        """Records published but not yet returned by poll()."""
        return max(0, self._j.end_offset - self._position)

    def seek(self, offset: str | int) -> None:
        """Move the position ("earliest", "latest" or an offset); commit() stores it."""
        if offset == "earliest":
            self._position = self._j.start_offset
        elif offset == "latest":
            self._position = self._j.end_offset
        elif isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0:
            self._position = offset
        else:
            raise ValueError(f"seek() takes 'earliest', 'latest' or an offset >= 0, got "
                             f"{offset!r}")
        self._close_reader()

    def _open_reader(self) -> Reader:
        from .reader import Reader
        try:
            return Reader(self._j, self._position)
        except OffsetOutOfRangeError as exc:
            if self.reset == "none" or exc.offset > exc.end:
                raise
            self._position = exc.start if self.reset == "earliest" else exc.end
            return Reader(self._j, self._position)

    def poll(self, max_records: int = 500, timeout: float | None = 1.0) -> list[Record]:
        """Up to ``max_records`` records from the position on, waiting up to ``timeout``
        seconds for the first (None: forever); moves the position past them."""
        self._j._check_open()
        for _ in range(3):
            if self._reader is None:
                self._reader = self._open_reader()
            try:
                recs = self._reader.poll(max_records, timeout)
            except OffsetOutOfRangeError:
                self._close_reader()  # retention passed us while we read: apply reset
                if self.reset == "none":
                    raise
                continue
            except BaseException:
                self._position = self._reader.position  # damage: we resume after it
                raise
            self._position = self._reader.position
            return recs
        return []

    def commit(self, offset: int | None = None) -> None:
        """Store ``offset`` (default: the position) as the next offset to read after a
        restart.  Survives a crash of any process once it returns."""
        if offset is None:
            offset = self._position
        elif (type(offset) is not int or offset < 0) and (  # (one test when it is an int)
                not isinstance(offset, int) or isinstance(offset, bool) or offset < 0):
            raise ValueError(f"commit() takes an offset >= 0, got {offset!r}")
        self._kv[self._key] = offset

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def close(self) -> None:
        self._close_reader()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
