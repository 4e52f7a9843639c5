"""Reader: iterate a journal's records from an offset, and tail it (``follow=True``).

Design rules:

- A reader takes no lock and writes nothing of the journal (its only store is the meta
  page's waiters word, a hint that asks writers to wake it).
- It reads one segment at a time through a read-only mapping, up to the commit word W it
  read last; every byte below W is whole.  At W it reads A (the active base): if A has
  moved past its segment, it reads W once more (now final) and opens the segment at
  ``base + records(W)``.
- Damage (a batch that does not verify, a file cut short) raises CorruptFileError naming
  the offset range lost; the reader is then positioned after it, so iterating again goes
  on with the rest.  An offset retention removed raises OffsetOutOfRangeError.
- Tailing sleeps on the meta page's notify word (futex), never on the directory.  A
  ``poll(timeout=0)`` spin loads only that word N while it holds the value read before
  the last look that reached the end: found nothing, or read through the W it loaded
  (after N) of a segment that A still names.  A writer stores W (A6) before it bumps N
  (A7), so an unchanged N means nothing was published since (a roll and retention bump
  N too; a look that read a sealed segment's last records does not arm it: the next
  segment's may be published already).  Not with a doorbell: then every empty look must
  empty the FIFO first (B2).
- Batches of one record (appends) are decoded a run at a time where they are plain and of
  one length (``_format.decode_one_run``); where a try finds no run, the next tries come
  after 2, 4, ... 64 batches read one by one (a journal of keyed appends pays ~1/64 of a
  try per batch).
- A follower's look, when nothing is buffered: if the bytes between its position and W
  are exactly one plain one-record batch (an ``append``), in the mapping, it reads them
  with one unpack, one CRC and one slice (``_format.decode_one``); anything else --
  several batches, keys, headers, damage, a roll -- goes the general way.
- ``for rec in reader``: ``iter()`` returns a C iterator (``itertools.chain``) over list
  iterators of the decoded batches, so a record costs no Python call; the generator
  behind it runs once per batch (the same steps as ``__next__``).  The list iterator
  handed out (``_it``) is the truth about how much of the buffer was consumed while it is
  set: every other entry (position, poll, wait, next, seek, next_span) first reads its
  progress back (``_detach``) and exhausts it, so the loop's next step goes on from the
  reader's state (no record twice, none skipped).  The records of one batch die as the
  loop drops them: a loop keeps ~one batch alive, so the collector's young generation
  never fills (a poll of 4096 records keeps 4096 alive and pays for their collection).
- ``fileno()`` (selectors, asyncio): the reader's own doorbell, a FIFO
  ``journal.bell-<pid>-<token>`` in the journal directory, registered in a slot of the
  meta page (B1, under the writer lock).  Every append rings each registered doorbell
  after it published (A7); the reader empties its FIFO *before* it looks for records
  (B2), so a publish it did not see rings after the emptying and the FIFO stays
  readable.  One FIFO per reader: no reader can swallow another's wake-up.  ``close()``
  frees the slot (B3); a killed reader's slot is freed by the next registration.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import AsyncIterator, Iterator
from itertools import chain
from typing import TYPE_CHECKING

from ..errors import ClosedError, CorruptFileError, OffsetOutOfRangeError
from . import _format as F
from ._format import Record
from .segment import Segment, list_segments

if TYPE_CHECKING:
    from .journal import Journal

__all__ = ["Reader"]

_WAIT_SLICE = 0.1
_I_NOTIFY = F.OFF_NOTIFY // 4
_I_WAITERS = F.OFF_WAITERS // 4
_I_ACTIVE = F.OFF_ACTIVE // 8
_TAIL_PREAD = 1 << 16  # unread bytes past the mapping that a pread fetches (no remap)
_decode_one = F.decode_one
_decode_one_run = F.decode_one_run
_SPAN_HEAD = struct.Struct("<IQIB")  # a batch header's length, first offset, count, version


class Reader:
    """Records of a journal from an offset on; see :meth:`Journal.reader`."""

    def __init__(self, journal: Journal, from_offset: str | int = "earliest", *,
                 follow: bool = False, timeout: float | None = None) -> None:
        self._j = journal
        self._meta = journal._check_open()
        self._dir = journal.path
        self.follow = follow
        self.timeout = timeout
        self._seg: Segment | None = None
        self._pos = 0          # next batch position in _seg
        self._next = 0         # next offset to return
        self._buf: list[Record] = []
        self._bi = 0
        self._it: Iterator[Record] | None = None  # the for-loop's iterator over _buf
        # one-record batches to read one by one before trying a run again (decode_one_run)
        self._run_wait, self._run_backoff = 0, 1
        self._drained = False  # the last _fill read through W of the active segment
        self._closed = False
        self._bell = -1        # doorbell FIFO (read end), made by fileno()
        self._bell_slot = 0
        # N (the notify word) read before a look that found nothing: while N still has
        # that value nothing was published since (A6 before A7), so poll() answers
        # without looking (a spinning follower loads one word per spin)
        self._notify = self._meta.u32
        self._idle_n = -1
        self.seek(from_offset)

    # --- positioning --------------------------------------------------------------------

    @property
    def position(self) -> int:
        """The offset of the next record this reader returns."""
        self._detach()
        return self._next

    def seek(self, offset: str | int) -> None:
        """Go to ``offset`` ("earliest", "latest" or a number in [start, end])."""
        self._drop()
        if offset == "earliest":
            self._next = self._meta.get(F.OFF_START)
        elif offset == "latest":
            self._next = self._j.end_offset
        elif isinstance(offset, int) and not isinstance(offset, bool):
            self._next = offset
            start, end = self._meta.get(F.OFF_START), self._j.end_offset
            if not start <= offset <= end:
                raise OffsetOutOfRangeError(
                    f"offset {offset} is outside the journal's records [{start}, {end}); "
                    "seek to 'earliest' or 'latest'", offset=offset, start=start, end=end)
        else:
            raise ValueError(f"from_offset must be 'earliest', 'latest' or an int, got "
                             f"{offset!r}")

    def _detach(self) -> None:
        """Take back the buffer from the for-loop's iterator: how far it got becomes the
        position, and it is exhausted (the loop's next step resumes from the state)."""
        it, self._it = self._it, None
        if it is None:
            return  # (the hot entries, __next__ and _take, test _it before calling)
        buf = self._buf
        bi = len(buf) - it.__length_hint__()  # type: ignore[attr-defined]
        if bi > self._bi:
            self._bi = bi
            self._next = buf[bi - 1].offset + 1
        it.__setstate__(len(buf))  # type: ignore[attr-defined]

    def _drop(self) -> None:
        self._detach()
        self._idle_n = -1
        if self._seg is not None:
            self._seg.close()
            self._seg = None
        self._buf = []
        self._bi = 0

    def _open_for(self, offset: int) -> None:
        """Open the segment holding ``offset`` (or the one it will be appended to)."""
        meta = self._meta
        for _ in range(100):
            start, active = meta.get(F.OFF_START), meta.get(F.OFF_ACTIVE)
            if offset < start:
                raise self._out_of_range(offset)
            bases = [b for b in list_segments(self._dir) if b <= active]
            cands = [b for b in bases if b <= offset]
            if not cands:
                if meta.get(F.OFF_START) != start or meta.get(F.OFF_ACTIVE) != active:
                    continue  # retention or a roll moved on while we listed
                raise self._out_of_range(offset)
            seg = Segment.open(self._dir, cands[-1])
            if seg is None:
                continue  # retention removed it since we listed: look again
            rel, pos = seg.commit()
            if offset > seg.base + rel:
                nxt = meta.get(F.OFF_ACTIVE)
                seg.close()
                if nxt > cands[-1]:
                    continue  # it was sealed and the next one exists: list again
                raise self._out_of_range(offset)
            if not seg.cover(pos):
                pos = len(seg.view)
            p, _, trusted = seg.locate(offset, rel, pos)
            if not trusted and seg.base < active:
                seg.drop_indexes()
                self._j._repair_indexes(seg.base)
            self._seg, self._pos = seg, p
            return
        raise self._out_of_range(offset)

    def _out_of_range(self, offset: int) -> OffsetOutOfRangeError:
        start, end = self._meta.get(F.OFF_START), self._j.end_offset
        why = "retention deleted it" if offset < start else "it is past the end"
        return OffsetOutOfRangeError(
            f"offset {offset} is no longer in the journal ({why}; records now span "
            f"[{start}, {end})); seek to 'earliest' or 'latest'", offset=offset, start=start,
            end=end)

    # --- reading ------------------------------------------------------------------------

    def _fill(self) -> bool:
        """Load the next batch into the buffer; False when none is published yet."""
        meta = self._meta
        while True:
            if self._seg is None:
                self._open_for(self._next)
            seg = self._seg
            assert seg is not None
            word = seg._w[0]  # type: ignore[index]  # (seg.commit(), inlined: W once)
            rel, pos_end = word >> 32, word & 0xFFFFFFFF
            if self._pos < pos_end:
                view = seg._view
                assert view is not None
                if pos_end > len(view):
                    if pos_end - self._pos <= _TAIL_PREAD and \
                            not seg.cover_ahead(pos_end) and self._read_tail(seg, pos_end):
                        return True
                    limit = pos_end if seg.cover(pos_end) else len(seg.view)
                    view = seg.view
                else:
                    limit = pos_end
                try:
                    info = F.read_batch_header(view, self._pos, limit)
                    if info.first_offset + info.records <= self._next:
                        self._pos += info.length  # before the offset we look for
                        continue
                    if info.first_offset > self._next:
                        raise F.BatchError(f"offsets {self._next}..{info.first_offset} are "
                                           f"missing before the batch at {self._pos}")
                    run = None
                    if info.records == 1:
                        if self._run_wait:
                            self._run_wait -= 1
                        else:
                            run = _decode_one_run(seg.mm, view, self._pos, limit, info)
                            # (no run here: try again only after more batches each time,
                            # so batches that never form one pay for few tries)
                            self._run_backoff = 1 if run else min(self._run_backoff * 2, 64)
                            self._run_wait = 0 if run else self._run_backoff
                    if run is None:
                        recs, took = F.decode_records(seg.mm, self._pos, info), info.length
                    else:  # a run of plain one-record batches (appends), decoded at once
                        recs, took = run
                except F.BatchError as exc:
                    self._skip_damage(seg, rel, pos_end, limit, str(exc))
                self._pos += took
                k = self._next - info.first_offset
                self._buf, self._bi = recs, k
                # read through the W just read, in the active segment: nothing more to
                # look for in this _take (and an unchanged N says so from here on)
                self._drained = self._pos == pos_end and meta.u64[_I_ACTIVE] <= seg.base
                return True
            # At W: has the writer moved on to a newer segment?
            if meta.u64[_I_ACTIVE] <= seg.base:
                return False
            rel, pos_end = seg.commit()  # final now (A was read first)
            if self._pos < pos_end:
                continue
            nxt = seg.base + rel
            seg.close()
            self._seg = None
            if self._next < nxt:  # defensive: never skip offsets silently
                self._next = nxt
            self._open_for(self._next)

    def _read_tail(self, seg: Segment, pos_end: int) -> bool:
        """The few published bytes past the mapping (a follower at the end, the file
        grown by a few appends): one pread instead of mapping the file again (a remap
        and its page faults cost a follower ~100 us per record).  False when they are
        not whole, valid batches: the mapped path then reports the damage."""
        n = pos_end - self._pos
        data = os.pread(seg.fileno(), n, self._pos)
        if len(data) != n:
            return False
        recs: list[Record] = []
        p, nxt = 0, self._next
        try:
            while p < n:
                info = F.read_batch_header(data, p, n)
                if info.first_offset + info.records <= nxt and not recs:
                    p += info.length  # before the offset we look for
                    continue
                if info.first_offset > nxt or (recs and info.first_offset != nxt):
                    break
                got = F.decode_records(data, p, info)
                recs.extend(got[nxt - info.first_offset :] if not recs else got)
                nxt = info.first_offset + info.records
                p += info.length
        except F.BatchError:
            pass  # keep what verified; the mapped path meets the damage next time
        if not recs:
            return False
        self._pos += p
        self._buf, self._bi = recs, 0
        self._drained = False
        return True

    def next_span(self, max_bytes: int, *, trust_index: bool = False
                  ) -> tuple[Segment, int, int, int] | None:
        """Whole batches from the position on, as they lie in one segment file, for
        sending unchanged (the remote server): ``(segment, position, length, first offset
        of the first batch)``; None when nothing past the position is published.

        At least one batch even when it is larger than ``max_bytes``; the first may start
        before the position (the caller's peer skips those records).  Checks each batch's
        structure and offsets but not its CRC (the receiver does).  Moves the position
        past them.  Damage raises CorruptFileError as iteration does.

        ``trust_index``: for a receiver that checks every batch itself, the span after
        the first batch ends where the offset index says a batch starts (or at W) and
        only that batch's header is read, not every batch's: the bytes between are not
        touched, so their pages are not even mapped (on a cold mapping the walk's page
        faults cost more than sending the bytes).  Damage in between is then the
        receiver's to find."""
        self._detach()
        self._buf, self._bi = [], 0
        meta = self._meta
        while True:
            if self._seg is None:
                self._open_for(self._next)
            seg = self._seg
            assert seg is not None
            rel, pos_end = seg.commit()
            if self._pos < pos_end:
                limit = pos_end if seg.cover(pos_end) else len(seg.view)
                view = seg.view
                start = p = self._pos
                first = -1
                nxt = self._next
                try:
                    while p < limit and first < 0:  # the batch holding the offset
                        info = F.read_batch_header(view, p, limit, verify=False)
                        if info.first_offset + info.records <= nxt:
                            p += info.length  # before the offset asked for
                            start = self._pos = p
                            continue
                        if info.first_offset > nxt:
                            raise F.BatchError(f"offsets {nxt}..{info.first_offset} are "
                                               f"missing before the batch at {p}")
                        first = info.first_offset
                        p += info.length
                        nxt = first + info.records
                    stop = min(limit, start + max_bytes)
                    if trust_index and p < stop:
                        found = _indexed_end(seg, rel, pos_end, limit, p, nxt, stop)
                        if found is not None:
                            self._pos, self._next = found
                            return seg, start, found[0] - start, first
                    # then whole batches up to max_bytes: structure and offsets only (the
                    # receiver checks CRCs), with one unpack each
                    unpack = _SPAN_HEAD.unpack_from
                    while p + F.BATCH_HEADER <= stop:
                        length, boff, count, version = unpack(view, p + 4)
                        if p + length > stop:
                            if p + length > limit:
                                raise F.BatchError(f"the batch at {p} claims {length} "
                                                   f"bytes (end {limit})")
                            break
                        if boff != nxt or version != F.BATCH_VERSION or count == 0 or \
                                length < F.BATCH_HEADER:
                            F.read_batch_header(view, p, limit, verify=False)  # says why
                            raise F.BatchError(f"the batch at {p} starts at offset {boff}, "
                                               f"expected {nxt}")
                        p += length
                        nxt += count
                except F.BatchError as exc:
                    if first < 0:
                        self._pos = p
                        self._skip_damage(seg, rel, pos_end, limit, str(exc))
                    # else: send the good batches; the damage is met at the next call
                if first < 0:
                    continue
                self._pos, self._next = p, nxt
                return seg, start, p - start, first
            if meta.get(F.OFF_ACTIVE) <= seg.base:
                return None
            rel, pos_end = seg.commit()  # final now (A was read first)
            if self._pos < pos_end:
                continue
            nxt = seg.base + rel
            seg.close()
            self._seg = None
            if self._next < nxt:
                self._next = nxt
            self._open_for(self._next)

    def _skip_damage(self, seg: Segment, rel: int, pos_end: int, limit: int,
                     why: str) -> None:
        """Position after damaged bytes at ``self._pos`` and raise CorruptFileError."""
        first = self._next
        resume_pos, resume_off = pos_end, seg.base + rel
        idx, _ = seg.indexes()
        n = idx.count(rel, pos_end)
        for i in range(n):
            r, p = idx.entry(i)
            if p <= self._pos or seg.base + r <= first:
                continue
            try:
                info = F.read_batch_header(seg.view, p, limit)
            except F.BatchError:
                continue
            if info.first_offset == seg.base + r:
                resume_pos, resume_off = p, info.first_offset
                break
        self._pos, self._next = resume_pos, resume_off
        raise CorruptFileError(
            f"{seg.path}: records [{first}, {resume_off}) are damaged ({why}); the reader "
            f"goes on at offset {resume_off}; run Journal.check() for a report",
            path=seg.path, offset=first, lost=resume_off - first)

    def _look_one(self) -> Record | None:
        """A follower's look (nothing buffered, no doorbell): when the new bytes of its
        segment are one plain record -- what an append writes -- in the mapping, read it
        with one unpack, one CRC and one slice, and move the position past it (not the
        offset: the caller returns or buffers the record); None: look the general way."""
        seg = self._seg
        if seg is None:
            return None
        n = self._notify[_I_NOTIFY]
        end = seg._w[0] & 0xFFFFFFFF  # type: ignore[index]
        mm = seg._map
        if self._pos >= end or mm is None or end > len(mm):
            return None
        rec = _decode_one(mm, self._pos, end, self._next)
        if rec is not None:
            self._pos = end
            # read through W of the active segment, W read after N: as an empty look
            # (poll(timeout=0) then spins on N alone until the next publish)
            self._idle_n = n if self._meta.u64[_I_ACTIVE] <= seg.base else -1
        return rec

    def _take(self, max_records: int) -> list[Record]:
        if self._it is not None:
            self._detach()
        out: list[Record] = []
        self._drained = False
        while len(out) < max_records:
            if self._bi >= len(self._buf) and (self._drained or not self._fill()):
                break
            take = self._buf[self._bi : self._bi + max_records - len(out)]
            self._bi += len(take)
            out.extend(take)
            self._next = out[-1].offset + 1
        return out

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until a record past this reader's position is published (True) or
        ``timeout`` seconds pass (False)."""
        self._detach()
        return self._wait(timeout)

    def _wait(self, timeout: float | None) -> bool:
        """wait() once the loop's iterator is detached.  After a wake-up the reader runs
        cold (its CPU idled): the steps from the futex call's return to the record are
        few on purpose -- the sleep is the waiter's bare futex call, and a record found
        by the look is left in the buffer for the caller's iterator."""
        deadline = None if timeout is None else time.monotonic() + timeout
        sleep = self._j._get_waiter().sleeper
        words = self._notify
        while True:
            seen = words[_I_NOTIFY]
            if self._bi < len(self._buf):
                return True
            if self._bell < 0:
                rec = self._look_one()
                if rec is not None:
                    self._buf, self._bi = [rec], 0
                    return True
            if self._fill():
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            words[_I_WAITERS] = 1
            if words[_I_NOTIFY] != seen:
                continue
            sleep(seen, _WAIT_SLICE if remaining is None else min(remaining, _WAIT_SLICE))

    def poll(self, max_records: int = 500, timeout: float | None = 0.0) -> list[Record]:
        """Up to ``max_records`` records; waits up to ``timeout`` seconds (None: forever)
        for the first one when none is there yet."""
        if max_records <= 0:
            raise ValueError(f"max_records must be positive, got {max_records}")
        if self._closed or self._j._closed:
            self._check_open()  # raises
        self._detach()
        if self._bi >= len(self._buf):
            # (an unarmed reader's _idle_n is -1: never a value of the u32 N)
            if timeout == 0 and self._notify[_I_NOTIFY] == self._idle_n:
                return []  # nothing published since the last look reached the end
            if self._bell < 0:
                rec = self._look_one()
                if rec is not None:
                    self._next += 1
                    return [rec]
        out = self._take_or_arm(max_records)
        if out or timeout == 0:
            return out
        if self._wait(timeout):
            out = self._take(max_records)
        return out

    def _take_or_arm(self, max_records: int) -> list[Record]:
        n = self._notify[_I_NOTIFY] if self._bell < 0 else -1
        out = self._take(max_records)
        if not out and self._bell >= 0:
            self._drain_bell()  # B2: empty the doorbell, then look once more
            out = self._take(max_records)
        # (with a doorbell every empty look must empty it: no shortcut then).  A look
        # that returned records arms it too when it read through W of the active
        # segment (W was read after N: a later publish moves N)
        self._idle_n = n if not out or (self._drained and self._bi >= len(self._buf)) \
            else -1
        return out

    # --- doorbell (selectors, asyncio) --------------------------------------------------

    def fileno(self) -> int:
        """A descriptor that turns readable when records may have been appended (by any
        process): register it with ``select``/``selectors``/``loop.add_reader``, then call
        :meth:`poll` with ``timeout=0`` (which also re-arms it when it finds nothing).
        Readiness is a hint: poll may return nothing; an empty poll empties the
        descriptor, so it turns readable again only for a newer append."""
        self._check_open()
        if self._bell < 0:
            token = int.from_bytes(os.urandom(4), "little") or 1
            slot = (os.getpid() << 32) | token
            path = os.path.join(self._dir, F.bell_name(slot))
            os.mkfifo(path, 0o600)
            try:
                fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            except BaseException:
                os.unlink(path)
                raise
            try:
                self._j._register_bell(slot)
            except BaseException:
                os.close(fd)
                os.unlink(path)
                raise
            self._bell, self._bell_slot = fd, slot
        return self._bell

    def _drain_bell(self) -> None:
        try:
            while os.read(self._bell, 4096):
                pass
        except BlockingIOError:
            pass

    def _close_bell(self) -> None:
        if self._bell < 0:
            return
        fd, slot = self._bell, self._bell_slot
        self._bell, self._bell_slot = -1, 0
        if slot >> 32 != os.getpid():  # a fork child's copy: the doorbell is the parent's
            os.close(fd)
            return
        try:
            self._j._unregister_bell(slot)
        finally:
            os.close(fd)
            try:
                os.unlink(os.path.join(self._dir, F.bell_name(slot)))
            except FileNotFoundError:
                pass

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the reader is closed; open a new one with Journal.reader()")
        self._j._check_open()

    def __iter__(self) -> Iterator[Record]:
        return chain.from_iterable(self._runs())

    def _runs(self) -> Iterator[Iterator[Record]]:
        """What ``for rec in reader`` iterates, a run of records at a time: the rest of
        the buffer as a list iterator (the loop takes its records in C), or the one
        record ``__next__``'s way found after the end of the buffer."""
        while True:
            if self._it is not None:  # (the loop exhausted it; inline: after a wake-up
                self._detach()        # each step is ~1 us)
            buf = self._buf
            if self._bi < len(buf):
                it = iter(buf)
                if self._bi:
                    it.__setstate__(self._bi)  # type: ignore[attr-defined]
                self._it = it
                yield it
                continue
            got = self._take_or_arm(1)
            if got:
                yield iter(got)
            elif not self.follow or not self._wait(self.timeout):
                return
            # (woken with records: the loop's top hands out the buffer they are in)

    def __next__(self) -> Record:
        if self._it is not None:
            self._detach()
        bi = self._bi
        buf = self._buf
        if bi < len(buf):  # the common case: the next record of a decoded batch
            rec = buf[bi]
            self._bi = bi + 1
            self._next = rec.offset + 1
            return rec
        got = self._take_or_arm(1)
        if got:
            return got[0]
        if self.follow and self._wait(self.timeout):
            got = self._take(1)
            if got:
                return got[0]
        raise StopIteration

    def __aiter__(self) -> AsyncIterator[Record]:
        return self._async_iter()

    async def _async_iter(self) -> AsyncIterator[Record]:
        """Iterate in the event loop: at the end, wait on the doorbell (fileno()) with
        ``loop.add_reader``, never in a thread; the wait is re-armed every slice, so a
        lost wake-up (a writer of an older mmapkit rings no doorbell) costs one slice."""
        from .._aio import readable  # (asyncio: loaded on the first async read only)

        idle_since = time.monotonic()
        fd = self.fileno() if self.follow else -1
        while True:
            self._detach()
            got = self._take_or_arm(500) if fd >= 0 else self._take(500)
            for r in got:
                yield r
            if got:
                idle_since = time.monotonic()
                continue
            if not self.follow:
                return
            nap = _WAIT_SLICE * 5
            if self.timeout is not None:
                nap = min(nap, self.timeout - (time.monotonic() - idle_since))
                if nap <= 0:
                    return
            await readable(fd, nap)

    def close(self) -> None:
        self._drop()
        self._close_bell()
        self._closed = True

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _indexed_end(seg: Segment, rel: int, pos_end: int, limit: int, p: int, nxt: int,
                 stop: int) -> tuple[int, int] | None:
    """(position, offset) where a span of whole batches from ``p`` (a batch boundary at
    offset ``nxt``) ends by ``stop``, from the offset index, without walking: W when the
    span reaches it, else the last indexed batch starting at or before ``stop`` (its
    header is read and must be that batch: the index is only a hint).  None: walk instead
    (no trusted index, no indexed batch past ``p`` in reach, or the index disagrees)."""
    if stop >= pos_end:  # (limit == pos_end: the mapping covers W)
        return pos_end, seg.base + rel
    idx, _ = seg.indexes()
    n = idx.count(rel, pos_end)
    k = idx.last_at_or_below(stop, n)
    if k < 0:
        return None
    r, end = idx.entry(k)
    if end <= p or end + F.BATCH_HEADER > limit:
        return None
    length, boff, count, version = _SPAN_HEAD.unpack_from(seg.view, end + 4)
    if boff != seg.base + r or boff <= nxt or version != F.BATCH_VERSION or not count or \
            length < F.BATCH_HEADER:
        return None
    return end, boff
