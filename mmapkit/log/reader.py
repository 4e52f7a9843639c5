"""Reading logs back: log files, buffers of live or dead writers, following, checking.

Design rules:

- Readers never map and never lock: they ``read()`` files, so a writer that truncates or
  rewrites a buffer cannot kill them with SIGBUS, and they never block a writer.
- Every record is identified by (stream, sequence).  A crash between a flush's file write
  and its buffer update leaves a record in two places; the reader yields it once: per
  stream, anything at or below the highest sequence already yielded is a duplicate.
- Buffers are read after the log files, and the files again after the buffers: a flush
  (or a recovery of a dead writer's buffer) writes its records to a file before it moves
  the buffer's head and zeroes the ring, so a record that moved between the first two
  looks is in the third.  Read in one pass only, such a record was in neither look: a
  snapshot missed it, and a frame cut short by a killed writer whose records a recovery
  wrote again looked lost.  If a buffer still starts past what the files gave, both are
  read again (a follower then waits a little before believing the buffer).
- Damage is reported, never raised: ``on_damage(path, Damage)`` (default: a LogWarning).
  Only a file that is not ours at all, or is newer than this code, raises.
"""

from __future__ import annotations

import datetime as _dt
import heapq
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .._testhooks import PAUSES as _PAUSE
from .._testhooks import pause as _pause
from ..errors import CorruptFileError, FileFormatError, ForeignFileError
from . import _codec
from ._codec import BUF_HEADER, Damage, Record
from ._compress import decompress
from ._files import DAMAGED_MARK, is_buffer_file, parse_buffer_name, parse_log_name
from .writer import LogWarning

__all__ = ["LogCheck", "check", "read", "read_buffer", "tail"]


DamageHandler = Callable[[str, Damage], None]
TimeLike = float | int | _dt.datetime | None


def _warn_damage(path: str, damage: Damage) -> None:
    warnings.warn(f"mmapkit.log: {path}: {damage.describe()}", LogWarning, stacklevel=3)


def _seconds(t: TimeLike) -> float | None:
    if t is None:
        return None
    if isinstance(t, _dt.datetime):
        return t.timestamp()
    return float(t)


def _sources(path: Path, name: str | None) -> tuple[list[Path], list[Path]]:
    """(log files in order, buffer files) under a directory, or the one file given."""
    if path.is_dir():
        logs, bufs = [], []
        for entry in os.listdir(path):
            log = parse_log_name(entry)
            if log is not None and (name is None or log[0] == name):
                logs.append((log[1], log[2], log[0], path / entry))
                continue
            buf = parse_buffer_name(entry)
            if buf is not None and (name is None or buf[0] == name):
                bufs.append(path / entry)
        logs.sort()
        return [p for *_, p in logs], sorted(bufs)
    if not path.exists():
        raise FileNotFoundError(f"no log file or directory at {path}")
    if is_buffer_file(path.name):
        return [], [path]
    return [path], []


def read_buffer(path: str | os.PathLike[str]) -> tuple[int, list[Record], list[Damage]]:
    """``(stream, records, damages)`` of one buffer file, live or dead, without locking.

    A buffer whose header cannot be trusted (damaged, cut short, absurd head) still gives
    every record in it that verifies, found by scanning, with a :class:`Damage` saying so
    (the stream is the header's, as read).  So does a copy set aside by a writer
    (``NAME.N.mbuf.damaged-<ns>``), whose head is not trusted either.  Only a newer
    format, or a file that is not a buffer and holds no record, raises.
    """
    p = os.fspath(path)
    with open(p, "rb") as f:
        data = f.read()
    if _codec.blank_buffer(data):
        return 0, [], []  # being created (the magic is stored last), or its creator died
    try:
        hdr = _codec.decode_buffer_header(data, p)
        problem = _codec.buffer_size_problem(data, hdr.capacity)
        if problem is not None:
            raise CorruptFileError(f"log buffer {p}: {problem}", path=p,
                                   offset=min(len(data), BUF_HEADER + hdr.capacity))
    except (CorruptFileError, ForeignFileError) as exc:
        return _salvage(data, p, exc)
    if DAMAGED_MARK in os.path.basename(p):
        return _salvage(data, p, None)
    area = memoryview(data)[BUF_HEADER : BUF_HEADER + hdr.capacity]
    spans, _, _, damages = _codec.scan_ring(area, hdr.head, hdr.head_seq)
    records: list[Record] = []
    for start, length in spans:
        for item in _codec.iter_records(area[start : start + length], hdr.stream):
            if isinstance(item, Record):
                records.append(item)
            else:
                damages.append(item)
    return hdr.stream, records, damages


def _salvage(data: bytes, path: str, exc: FileFormatError | None
             ) -> tuple[int, list[Record], list[Damage]]:
    """Every record that verifies in a buffer whose header cannot be trusted (``exc``
    says why; None for a copy set aside, reported when it was made)."""
    area = memoryview(data)[BUF_HEADER : BUF_HEADER + (max(len(data) - BUF_HEADER, 0) & ~7)]
    found = _codec.find_records(area)
    if not found and isinstance(exc, ForeignFileError):
        raise exc
    stream = int.from_bytes(data[24:32].ljust(8, b"\0"), "little")
    records = []
    for off, _, _ in found:
        fields = _codec.decode_record(area, off)
        assert fields is not None
        records.append(_codec.record_of(fields, stream))
    if exc is None:
        return stream, records, []
    what = (f"{exc}; {len(records)} records that verify were found by scanning it (the "
            "next writer of this log copies it aside and writes them to the log)")
    return stream, records, [Damage(0, BUF_HEADER, what)]


class _Reader:
    def __init__(self, path: Path, name: str | None, private_key: object,
                 since: float | None, until: float | None, on_damage: DamageHandler) -> None:
        self.path = path
        self.name = name
        self.since = since
        self.until = until
        self.on_damage = on_damage
        self.decrypt: _codec.Transform | None = None
        if private_key is not None:
            from ._crypto import decryptor

            self.decrypt = decryptor(private_key)
        self.seen: dict[int, int] = {}
        # path: ((inode, first frame header), bytes consumed)
        self.offsets: dict[Path, tuple[tuple[int, bytes] | None, int]] = {}
        self.duplicates = 0
        self.frames = 0
        self.superseded = 0
        self.damages: list[tuple[str, Damage]] = []
        self.pending: list[tuple[str, Damage]] = []
        self.reported: set[tuple[str, int]] = set()
        self.runs: dict[int, list[list[int]]] = {}  # per stream: [first, last] yielded runs
        self.gap_since: dict[int, float] = {}
        self.gap_patience = 2.0

    def damage(self, path: Path | str, d: Damage) -> None:
        where = (str(path), d.offset)
        if where in self.reported:
            return  # a frame cut short at a file's end, seen again at the next look
        self.reported.add(where)
        if d.stream is not None and d.first_seq is not None and d.lost:
            # A frame cut short by a writer killed mid-append is written again from its
            # buffer: decide at the end whether its records were lost after all.
            self.pending.append((str(path), d))
            return
        self.damages.append((str(path), d))
        self.on_damage(str(path), d)

    def _yielded(self, stream: int, seq: int) -> None:
        runs = self.runs.setdefault(stream, [])
        if runs and runs[-1][1] + 1 == seq:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])

    def resolve(self) -> None:
        """Report pending damage whose records did not turn up elsewhere."""
        for path, d in self.pending:
            assert d.stream is not None and d.first_seq is not None and d.lost
            lo, hi = d.first_seq, d.first_seq + d.lost - 1
            found = sum(max(0, min(hi, b) - max(lo, a) + 1)
                        for a, b in self.runs.get(d.stream, []))
            if found >= d.lost:
                self.superseded += 1
                continue
            d = Damage(d.offset, d.length, d.reason, d.lost - found, d.first_time,
                       d.last_time, d.stream, d.first_seq)
            self.damages.append((path, d))
            self.on_damage(path, d)
        self.pending.clear()

    def _file_records(self, path: Path, final: bool) -> list[Record]:
        ident, start = self.offsets.get(path, (None, 0))
        try:
            with open(path, "rb") as f:
                # Which file this is: retention may delete it and a writer make another
                # under the same name (and inode number); then read that one from 0.
                now = (os.fstat(f.fileno()).st_ino, f.read(_codec.FRAME_HEADER))
                if now != ident:
                    ident, start = now, 0
                f.seek(start)
                data = f.read()
        except FileNotFoundError:  # deleted by retention meanwhile
            return []
        out: list[Record] = []
        consumed = 0
        tail: int | None = None
        sp = str(path)
        for item in _codec.decode_frames(data, path=sp, final=final):
            if isinstance(item, Damage):
                consumed = item.offset + item.length
                if consumed == len(data) and _codec.incomplete_at(data, item.offset):
                    # Reported (final), yet read again at the next look: a writer may
                    # still be appending this frame, and then it is whole by then.
                    tail = item.offset
                self.damage(path, _shift(item, start))
                continue
            consumed = item.offset + item.size
            self.frames += 1
            seen = self.seen.get(item.stream, 0)
            if item.first_seq + item.count - 1 <= seen:
                self.duplicates += item.count
                continue
            if self.since is not None and item.last_time_us / 1e6 < self.since:
                self.seen[item.stream] = max(seen, item.first_seq + item.count - 1)
                continue
            try:
                raw = _codec.open_frame(item, path=sp, decompress=decompress,
                                        decrypt=self.decrypt)
            except CorruptFileError:
                self.damage(path, Damage(start + item.offset, item.size,
                                         "frame does not decompress", lost=item.count,
                                         first_time=item.first_time_us / 1e6,
                                         last_time=item.last_time_us / 1e6,
                                         stream=item.stream, first_seq=item.first_seq))
                continue
            for rec in _codec.iter_records(raw, item.stream):
                if isinstance(rec, Damage):
                    self.damage(path, Damage(start + item.offset, item.size,
                                             f"inside frame: {rec.reason}", lost=rec.lost,
                                             stream=item.stream))
                    continue
                if rec.sequence <= seen:
                    self.duplicates += 1
                    continue
                seen = rec.sequence
                self._yielded(rec.stream, seen)
                out.append(rec)
            self.seen[item.stream] = seen
        if tail is None:
            tail = consumed if not final else len(data)
        self.offsets[path] = (ident, start + tail)
        return out

    def _logs(self, final: bool) -> list[Record]:
        logs, _ = _sources(self.path, self.name)
        out: list[Record] = []
        for path in logs:
            out.extend(_merge(self._file_records(path, final)))
        return out

    def _look(self, out: list[Record]) -> dict[int, list[Record]]:
        """The buffers' records (returned), then what the files gained meanwhile (into
        ``out``).

        A flush or a recovery writes its records to a file *before* it moves the buffer's
        head and zeroes the ring, so whatever a buffer no longer held when we read it is in
        a file by the time we look at the files again: reading them after the buffers is
        what makes the two looks one snapshot (read before, a record that moved in between
        was in neither look).  Not final: a frame still being appended after the buffers
        were read holds records newer than this look; it is read whole next time, never
        reported."""
        found = self._buffers()
        out.extend(self._logs(False))
        return found

    def _buffers(self) -> dict[int, list[Record]]:
        _, bufs = _sources(self.path, self.name)
        found: dict[int, list[Record]] = {}
        for path in bufs:
            try:
                stream, recs, damages = read_buffer(path)
            except FileNotFoundError:
                continue
            except FileFormatError as exc:
                self.damage(path, Damage(0, 0, str(exc)))
                continue
            for d in damages:
                self.damage(path, d)
            if recs:
                found.setdefault(stream, []).extend(recs)
        return found

    def poll(self, final: bool) -> list[Record]:
        """Records not yielded yet: new ones from the files, then from the buffers."""
        out = self._logs(final)
        if _PAUSE:
            _pause("log.files-read")
        bufs = self._look(out)
        if self._gaps(bufs):
            bufs = self._look(out)  # a flush moved records meanwhile
        gaps = self._gaps(bufs)
        now = time.monotonic()
        live: list[list[Record]] = []
        for stream, recs in bufs.items():
            if stream in gaps and not final:
                # The records between are on their way into a file (or lost): wait a
                # little before believing the buffer, so following never skips them.
                first_seen = self.gap_since.setdefault(stream, now)
                if now - first_seen < self.gap_patience:
                    continue
            self.gap_since.pop(stream, None)
            fresh: list[Record] = []
            live.append(fresh)
            seen = self.seen.get(stream, 0)
            for rec in recs:
                if rec.sequence > seen:
                    fresh.append(rec)
                    seen = rec.sequence
                    self._yielded(stream, seen)
                else:
                    self.duplicates += 1
            self.seen[stream] = seen
        out.extend(heapq.merge(*live, key=_time_key))
        self.resolve()
        if self.since is not None or self.until is not None:
            lo = self.since if self.since is not None else float("-inf")
            hi = self.until if self.until is not None else float("inf")
            out = [r for r in out if lo <= r.time <= hi]
        return out

    def _gaps(self, bufs: dict[int, list[Record]]) -> set[int]:
        """Streams whose buffer starts past the next sequence expected from the files."""
        return {s for s, recs in bufs.items() if recs[0].sequence > self.seen.get(s, 0) + 1}


def _time_key(r: Record) -> float:
    return r.time


def _merge(records: list[Record]) -> list[Record]:
    """Interleave streams by time; each stream keeps its sequence order (threads of one
    process may stamp times slightly out of sequence)."""
    streams: dict[int, list[Record]] = {}
    for r in records:
        streams.setdefault(r.stream, []).append(r)
    if len(streams) <= 1:
        return records
    return list(heapq.merge(*streams.values(), key=_time_key))


def _shift(d: Damage, by: int) -> Damage:
    if not by:
        return d
    return Damage(d.offset + by, d.length, d.reason, d.lost, d.first_time, d.last_time,
                  d.stream, d.first_seq)


def read(path_or_directory: str | os.PathLike[str], *, name: str | None = None,
         private_key: object = None, since: TimeLike = None, until: TimeLike = None,
         follow: bool = False, poll_interval: float = 0.25,
         on_damage: DamageHandler | None = None) -> Iterator[Record]:
    """Yield the records of a log directory (or one log or buffer file), oldest first.

    Covers the log files and every buffer, including buffers of running processes and of
    processes that died before their records were flushed.  ``name`` selects one log of a
    shared directory.  ``since``/``until`` (epoch seconds or datetime) bound the times.
    ``follow=True`` keeps polling for new records, like ``tail -f``.  Damage is passed to
    ``on_damage(path, damage)`` (default: a LogWarning) and reading goes on after it.
    ``private_key`` (X25519, raw 32 bytes or a cryptography key) reads encrypted logs.
    """
    reader = _Reader(Path(path_or_directory), name, private_key, _seconds(since),
                     _seconds(until), on_damage or _warn_damage)
    yield from reader.poll(final=not follow)
    while follow:
        time.sleep(poll_interval)
        yield from reader.poll(final=False)


def tail(path_or_directory: str | os.PathLike[str], lines: int = 10, *,
         follow: bool = False, poll_interval: float = 0.25, **options: object
         ) -> Iterator[Record]:
    """The last ``lines`` records (as :func:`read` orders them), then with ``follow=True``
    every new one.  Other options as for :func:`read`."""
    reader = _Reader(Path(path_or_directory), options.get("name"),  # type: ignore[arg-type]
                     options.get("private_key"), _seconds(options.get("since")),  # type: ignore[arg-type]
                     _seconds(options.get("until")),  # type: ignore[arg-type]
                     options.get("on_damage") or _warn_damage)  # type: ignore[arg-type]
    first = reader.poll(final=not follow)
    yield from first[-lines:] if lines > 0 else []
    while follow:
        time.sleep(poll_interval)
        yield from reader.poll(final=False)


@dataclass(frozen=True)
class LogCheck:
    """What :func:`check` found: counts, and every damage with where it was."""

    files: int
    buffers: int
    frames: int
    records: int
    duplicates: int
    superseded: int         # damaged frames whose records were all found elsewhere
    first_time: float | None
    last_time: float | None
    damages: tuple[tuple[str, Damage], ...]

    @property
    def ok(self) -> bool:
        return not self.damages


def check(path_or_directory: str | os.PathLike[str], *, name: str | None = None,
          private_key: object = None) -> LogCheck:
    """Read everything once and report; changes nothing.  Encrypted frames are counted
    but not opened unless ``private_key`` is given."""
    path = Path(path_or_directory)
    reader = _Reader(path, name, private_key, None, None, lambda p, d: None)
    records = reader.poll(final=True)
    logs, bufs = _sources(path, name)
    times = [r.time for r in records]
    return LogCheck(len(logs), len(bufs), reader.frames, len(records), reader.duplicates,
                    reader.superseded, min(times, default=None), max(times, default=None),
                    tuple(reader.damages))
