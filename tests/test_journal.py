"""Journal in one process: records, batches, rolls, retention, readers, consumers, indexes."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest
from conftest import run_py

import mmapkit
from mmapkit import Journal
from mmapkit.errors import (
    ClosedError,
    ForeignFileError,
    FormatVersionError,
    MessageTooLargeError,
    OffsetOutOfRangeError,
    OutOfRangeError,
)


def values(j: Journal, start: str | int = "earliest") -> list[bytes]:
    return [r.value for r in j.reader(start)]


def test_append_and_read_back_every_field(tmp_path: Path) -> None:
    with Journal(tmp_path / "j", create=True) as j:
        assert (j.start_offset, j.end_offset) == (0, 0)
        assert j.append(b"a", key=b"k", headers={"h": b"1"}, timestamp_ms=7) == 0
        assert j.append(bytearray(b"b")) == 1
        assert j.append_many([b"c", (b"d", b"kd"), {"value": b"e", "headers": [("x", b"y")],
                                                      "timestamp_ms": 9}]) == 2
        recs = list(j.reader())
        assert [r.offset for r in recs] == [0, 1, 2, 3, 4]
        assert recs[0] == (0, 7, b"k", b"a", (("h", b"1"),))
        assert recs[1].key is None and recs[1].headers == ()
        assert recs[3].key == b"kd" and recs[4].headers == (("x", b"y"),)
        assert recs[4].timestamp_ms == 9
        assert j.end_offset == 5
    with Journal(tmp_path / "j") as j:  # reopen: same records
        assert values(j) == [b"a", b"b", b"c", b"d", b"e"]
        assert values(j, 3) == [b"d", b"e"]
        assert values(j, "latest") == []
        assert Journal.check(tmp_path / "j").ok


def test_bad_arguments_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="create=True"):
        Journal(tmp_path / "none")
    with Journal(tmp_path / "j", create=True, segment_bytes=4096) as j:
        with pytest.raises(TypeError, match="bytes-like"):
            j.append("text")  # type: ignore[arg-type]
        with pytest.raises(MessageTooLargeError):
            j.append(b"x" * 5000)
        with pytest.raises(MessageTooLargeError):  # all or nothing
            j.append_many([b"x"] * 10 + [b"y" * 5000])
        with pytest.raises(ValueError):
            j.append_many([])
        assert j.end_offset == 0
        with pytest.raises(OffsetOutOfRangeError):
            j.reader(5)
        with pytest.raises(ValueError):
            j.reader("middle")
    with pytest.raises(ClosedError):
        j.append(b"x")
    with pytest.raises(ValueError):
        Journal(tmp_path / "k", create=True, sync="sometimes")


def test_foreign_and_newer_files_say_so(tmp_path: Path) -> None:
    d = tmp_path / "j"
    Journal(d, create=True).close()
    meta = d / "journal.meta"
    raw = bytearray(meta.read_bytes())
    struct.pack_into("<H", raw, 8, 99)
    meta.write_bytes(raw)
    with pytest.raises(FormatVersionError, match="newer"):
        Journal(d)
    meta.write_bytes(b"hello" * 1000)
    with pytest.raises(ForeignFileError):
        Journal(d)
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "00000000000000000000.log").write_bytes(b"x")
    with pytest.raises(ForeignFileError):
        Journal(tmp_path / "k", create=True)


def test_segments_roll_by_size_and_offsets_stay_dense(tmp_path: Path) -> None:
    with Journal(tmp_path / "j", create=True, segment_bytes=1024, index_interval=128) as j:
        for i in range(500):
            assert j.append(b"%05d" % i + b"." * 30) == i
        logs = sorted(p.name for p in (tmp_path / "j").glob("*.log"))
        assert len(logs) > 10
        bases = [int(n[:20]) for n in logs]
        assert bases[0] == 0 and bases == sorted(bases)
        assert all(os.path.getsize(tmp_path / "j" / n) <= 1024 for n in logs)
        assert [int(v[:5]) for v in values(j)] == list(range(500))
        for start in (0, 1, 137, bases[3], bases[3] - 1, 499, 500):  # seek via the index
            got = [r.offset for r in j.reader(start)]
            assert got == list(range(start, 500))
        assert j.statistics().segments == len(logs)
        report = Journal.check(tmp_path / "j")
        assert report.ok, report.problems
        assert (report.records, report.end_offset) == (500, 500)


def test_segments_roll_by_age(tmp_path: Path) -> None:
    with Journal(tmp_path / "j", create=True, segment_ms=0) as j:
        for i in range(5):
            j.append(b"%d" % i)
        assert len(list((tmp_path / "j").glob("*.log"))) == 5
        assert values(j) == [b"0", b"1", b"2", b"3", b"4"]


def test_retention_by_bytes_and_age_deletes_whole_sealed_segments(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with Journal(d, create=True, segment_bytes=1024, retention_ms=10**9,
                 delete_delay_ms=0) as j:
        for _i in range(300):
            j.append(b"x" * 40)
        reader = j.reader(0)  # a reader in the middle of the oldest segment keeps reading
        assert next(reader).offset == 0
        j2 = Journal(d, retention_bytes=4096)  # an explicit setting changes the journal
        deleted = j2.retain()
        j2.close()
        assert deleted and deleted[0] == 0
        start = j.start_offset
        assert start > 0 and start == min(int(p.name[:20]) for p in d.glob("*.log"))
        assert sum(p.stat().st_size for p in d.glob("*.log")) <= 4096 + 1024
        seen = []
        with pytest.raises(OffsetOutOfRangeError):  # it reads its segment to the end,
            for r in reader:                        # then finds the next one deleted
                seen.append(r.offset)
        assert seen and seen == list(range(1, len(seen) + 1))
        with pytest.raises(OffsetOutOfRangeError) as info:
            j.reader(0)
        assert isinstance(info.value, OutOfRangeError) and info.value.start == start
        assert next(r.offset for r in j.reader()) == start
        assert not list(d.glob("*.deleted"))  # delete_delay_ms=0: unlinked at once
        assert Journal.check(d).ok
    with Journal(d, retention_ms=0, retention_bytes=10**9) as j:
        j.append(b"new")  # old segments are all older than 0 ms: only the active stays
        j.retain()
        assert len(list(d.glob("*.log"))) == 1
        (active,) = d.glob("*.log")
        assert j.start_offset == int(active.name[:20]) and j.end_offset == 301
        assert Journal.check(d).ok


def test_retention_keeps_deleted_files_for_the_delay(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with Journal(d, create=True, segment_bytes=512, retention_bytes=600) as j:
        for _ in range(40):
            j.append(b"y" * 40)
        j.retain()
        assert list(d.glob("*.log.deleted"))  # renamed, kept 60 s by default
        assert Journal.check(d).ok


def test_offset_for_time(tmp_path: Path) -> None:
    with Journal(tmp_path / "j", create=True, segment_bytes=2048, index_interval=100,
                 retention_ms=10**15) as j:  # 1970 timestamps: keep them
        for i in range(400):
            j.append(b"v" * 20, timestamp_ms=1000 + i * 10)
        assert j.offset_for_time(0) == 0
        assert j.offset_for_time(1000) == 0
        assert j.offset_for_time(1001) == 1
        assert j.offset_for_time(1000 + 250 * 10) == 250
        assert j.offset_for_time(1000 + 399 * 10) == 399
        assert j.offset_for_time(10**12) is None


def test_a_for_loop_mixed_with_position_poll_next_and_seek(tmp_path: Path) -> None:
    """``for rec in reader`` takes a batch's records through a list iterator: every
    other entry takes the rest back first, so no record comes twice or is skipped."""
    with Journal(tmp_path / "j", create=True) as j:
        for i in range(10):
            j.append_many([b"%d" % k for k in range(i * 10, i * 10 + 10)])
        r = j.reader()
        got = []
        for rec in r:
            got.append(rec.offset)
            if rec.offset == 14:
                break
        assert r.position == 15  # a loop left mid-batch: the position is exact
        assert [x.offset for x in r.poll(3)] == [15, 16, 17]
        assert next(r).offset == 18
        for rec in r:  # a new loop goes on from there
            got.append(rec.offset)
            assert r.position == rec.offset + 1
            if rec.offset == 25:
                assert [x.offset for x in r.poll(2)] == [26, 27]  # the loop skips them
            if rec.offset == 30:
                assert next(r).offset == 31
            if rec.offset == 40:
                r.seek(70)
        assert got == [*range(15), *range(19, 26), *range(28, 31), *range(32, 41),
                       *range(70, 100)]
        assert r.position == 100 and list(r) == []
        j.append(b"x")
        it = iter(r)
        inner = iter(r)  # two loops over one reader share its position
        assert next(it).offset == 100
        j.append_many([b"y", b"z"])
        assert next(inner).offset == 101
        assert next(it).offset == 102
        assert list(it) == list(inner) == []


def test_follow_reader_sees_records_across_rolls(tmp_path: Path) -> None:
    with Journal(tmp_path / "j", create=True, segment_bytes=512) as j:
        r = j.reader("latest", follow=True, timeout=0.2)
        assert r.poll(10, timeout=0.05) == []
        for i in range(50):
            j.append(b"%03d" % i + b"-" * 30)
        got = r.poll(1000, timeout=1)
        assert [x.value[:3] for x in got] == [b"%03d" % i for i in range(50)]
        assert list(r) == []  # timeout=0.2 of silence ends iteration


def test_a_poll_reading_a_sealed_segments_last_records_goes_on_to_the_next(
        tmp_path: Path) -> None:
    """A poll that reads through W arms the notify-word shortcut only when W's segment is
    still the active one: here the last record(s) of a segment and the roll past it were
    published before the poll looked (one plain record: the follower's one-record look;
    a batch of two: the general look), and the next poll must find the new segment's
    record, not answer "nothing new" from an unchanged N."""
    d = tmp_path / "j"
    with Journal(d, create=True, segment_bytes=4096) as j, Journal(d) as other:
        r = other.reader("earliest")
        j.append(b"f" * 100)
        for last, size in (([b"a" * 100], 160), ([b"b" * 100, b"c" * 100], 280)):
            while True:  # fill the active segment until `last` is the last that fits
                seg = j._active
                assert seg is not None and seg._w is not None
                if (seg._w[0] & 0xFFFFFFFF) + size + 160 > 4096:
                    break
                j.append(b"f" * 100)
            assert r.poll(1000, timeout=0)
            assert r.poll(1000, timeout=0) == []  # caught up: the shortcut is armed
            j.append_many(last) if len(last) > 1 else j.append(last[0])
            base = j._active.base
            j.append(b"next")  # does not fit: a roll, then the new segment's record
            assert j._active.base > base
            got = r.poll(1000, timeout=0)  # the sealed segment's last record(s), maybe
            while len(got) < len(last) + 1:
                more = r.poll(1000, timeout=0)
                assert more, f"the record past the roll was not seen after {got}"
                got += more
            assert [x.value for x in got] == [*last, b"next"]
    report = Journal.check(d)
    assert report.ok, report.problems


def test_consumer_position_commit_seek_lag(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with Journal(d, create=True) as j:
        j.append_many([b"%d" % i for i in range(10)])
        c = j.consumer("billing")
        assert (c.position, c.committed, c.lag) == (0, None, 10)
        got = c.poll(max_records=4, timeout=0)
        assert [r.offset for r in got] == [0, 1, 2, 3] and c.position == 4
        c.commit()
        assert c.committed == 4
        c.poll(max_records=3, timeout=0)
        assert c.lag == 3
        late = j.consumer("audit", reset="latest")
        assert late.position == 10 and late.poll(timeout=0.01) == []
    with Journal(d) as j:  # a restart resumes from the commit, re-delivering 4..6
        c = j.consumer("billing")
        assert c.position == 4
        assert [r.offset for r in c.poll(100, timeout=0)] == list(range(4, 10))
        c.seek(2)
        assert c.poll(1, timeout=0)[0].offset == 2
        c.commit(7)
        assert j.consumer("billing").position == 7
        c.seek("earliest")
        assert c.position == 0
        with pytest.raises(ValueError):
            j.consumer("")


def test_consumer_behind_retention_follows_reset(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with Journal(d, create=True, segment_bytes=512, delete_delay_ms=0) as j:
        c = j.consumer("slow")
        c.commit(0)
        strict = j.consumer("strict", reset="none")
        for _ in range(60):
            j.append(b"z" * 40)
        Journal(d, retention_bytes=1024).close()
        j.retain()
        assert j.start_offset > 0
        assert j.consumer("slow").poll(1, timeout=0)[0].offset == j.start_offset
        strict.seek(0)
        with pytest.raises(OffsetOutOfRangeError):
            strict.poll(1, timeout=0)


def test_statistics_and_sync(tmp_path: Path) -> None:
    with Journal(tmp_path / "j", create=True, sync="always") as j:
        j.append(b"x")
        j.sync()
        s = j.statistics()
        assert (s.start_offset, s.end_offset, s.records, s.appended) == (0, 1, 1, 1)
        with pytest.raises(AttributeError):
            s.records = 5  # type: ignore[misc]
    with Journal(tmp_path / "k", create=True, sync=0.01) as j:
        for _ in range(3):
            j.append(b"y")
            time.sleep(0.02)
        assert j.end_offset == 3


def test_async_iteration(tmp_path: Path) -> None:
    import asyncio
    with Journal(tmp_path / "j", create=True) as j:
        j.append_many([b"a", b"b"])

        async def collect() -> list[bytes]:
            return [r.value async for r in j.reader(follow=True, timeout=0.1)]

        assert asyncio.run(collect()) == [b"a", b"b"]


def test_import_is_exported() -> None:
    assert mmapkit.Journal is Journal
    assert issubclass(mmapkit.OffsetOutOfRangeError, mmapkit.OutOfRangeError)


def test_sync_flushes_only_what_changed(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def fdatasync(fd: int) -> None:  # counts, then does the real flush
        calls.append("fdatasync")
        real_fdatasync(fd)

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    d = str(tmp_path / "j")
    with Journal(d, create=True, segment_bytes=1024) as j:
        j.append(b"first")
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        monkeypatch.setattr(os, "fsync", fsync)
        j.sync()  # the first: the active segment (and the meta page, via msync)
        assert calls == ["fdatasync"]
        calls.clear()
        j.sync()  # nothing published since: nothing flushed
        assert calls == []
        j.append(b"second")
        j.sync()  # no roll: the active segment only, no directory fsync
        assert calls == ["fdatasync"]
        calls.clear()
        for i in range(40):  # rolls: the segments since the recovery point + directory
            j.append(b"%d" % i + b"." * 100)
        active = j.statistics().active_base
        assert active > 0
        j.sync()
        assert calls.count("fsync") == 1 and calls.count("fdatasync") >= 2
        calls.clear()
        monkeypatch.undo()
        p = run_py("""
import sys
from mmapkit import Journal
with Journal(sys.argv[1]) as j:
    j.append(b"elsewhere")
    j.sync()
""", d)
        assert p.returncode == 0, p.stderr
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        monkeypatch.setattr(os, "fsync", fsync)
        j.sync()  # the other process synced what it published: nothing left to flush
        assert calls == []
    assert Journal.check(d).ok


def test_interleaved_writers_index_what_the_others_appended(tmp_path: Path) -> None:
    # Two handles (two writers, each its own lock description) alternate: each learns the
    # other's batches only when it is due to write an index entry (A3b), and never writes
    # an index slot the other already filled.  Offsets and timestamps stay findable.
    d = str(tmp_path / "j")
    t0 = time.time_ns() // 1_000_000 - 10_000  # recent: retention keeps every segment
    with Journal(d, create=True, index_interval=256, segment_bytes=1 << 16) as a, \
            Journal(d) as b:
        for i in range(3000):
            w = a if i % 3 else b
            assert w.append(b"%d" % i + b"." * (i % 50), timestamp_ms=t0 + i) == i
        assert Journal.check(d).ok, Journal.check(d).problems
        assert a.statistics().segments > 1
        for probe in (0, 1, 257, 1499, 2998, 2999):
            assert a.offset_for_time(t0 + probe) == probe
            assert [r.offset for r in b.reader(probe)][:1] == [probe]
    report = Journal.check(d)
    assert report.ok and report.records == 3000, report.problems


def test_a_writer_catching_up_learns_the_newest_timestamp_from_the_others_entries(
        tmp_path: Path) -> None:
    # A3b: writer b appends a long run (many index entries) while a waits; a's catch-up
    # reads only the batches from b's last entry on and takes the newest timestamp
    # before it from b's time entry.  The spike (the newest timestamp) sits before b's
    # last entry in one round and after it in the other: a's next time entries must
    # carry it either way (check() finds a time index going backwards, offset_for_time
    # the record).
    d = str(tmp_path / "j")
    t0 = time.time_ns() // 1_000_000 - 100_000
    with Journal(d, create=True, index_interval=256) as a, Journal(d) as b:
        a.append(b"first", timestamp_ms=t0)
        spikes = []
        for spike_at in (100, 299):
            base = b.end_offset
            for i in range(300):
                ts = t0 + 50_000 + len(spikes) if i == spike_at else t0 + base + i
                b.append(b"b" * 30, timestamp_ms=ts)
            spikes.append((base + spike_at, t0 + 50_000 + len(spikes)))
            for i in range(60):  # a appends on, older timestamps: its entries carry the spike
                a.append(b"a" * 30, timestamp_ms=t0 + 1 + i)
            report = Journal.check(d)
            assert report.ok and not report.stale_indexes, report.problems
        for offset, ts in spikes:
            assert a.offset_for_time(ts) == offset
    report = Journal.check(d)
    assert report.ok, report.problems
