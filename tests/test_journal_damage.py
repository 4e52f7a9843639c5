"""Journal damage, full disks and power loss: our errors or a report, never a crash; the
rest stays readable; indexes are rebuilt; a reopen reads nothing it does not need."""

from __future__ import annotations

import shutil
import struct
import warnings
from pathlib import Path

import pytest
from conftest import tiny_tmpfs

from mmapkit import Journal, JournalRecoveryWarning
from mmapkit.errors import CorruptFileError, DiskFullError, MmapkitError
from mmapkit.journal import _format as F


def build(d: Path, n: int = 400) -> list[Path]:
    with Journal(d, create=True, segment_bytes=2048, index_interval=200,
                 retention_ms=10**15) as j:
        for i in range(n):
            j.append(b"%05d" % i + b"-" * 30)
    return sorted(d.glob("*.log"))


def read_all(j: Journal) -> tuple[list[int], list[CorruptFileError]]:
    """Read to the end, collecting damage reports and going on after each."""
    offsets: list[int] = []
    errors: list[CorruptFileError] = []
    r = j.reader()
    while True:
        try:
            for rec in r:
                offsets.append(rec.offset)
            return offsets, errors
        except CorruptFileError as exc:
            errors.append(exc)
            assert len(errors) < 50


def test_flipped_bytes_report_the_damaged_range_and_the_rest_reads(tmp_path: Path) -> None:
    d = tmp_path / "j"
    logs = build(d)
    seg = logs[2]
    base = int(seg.name[:20])
    raw = bytearray(seg.read_bytes())
    raw[F.SEGMENT_HEADER + 300] ^= 0xFF  # inside a record of the third segment
    seg.write_bytes(raw)
    report = Journal.check(d)
    assert not report.ok and report.damaged and report.damaged[0][0] >= base
    with Journal(d) as j:
        offsets, errors = read_all(j)
        assert len(errors) == 1
        lo, lost = errors[0].offset, errors[0].lost
        assert lo is not None and lost > 0 and base <= lo
        assert offsets == [o for o in range(400) if not lo <= o < lo + lost]
        j.append(b"still writable")


@pytest.mark.parametrize("how", ["garbage", "deleted", "wrong entries"])
def test_bad_indexes_are_detected_and_rebuilt(tmp_path: Path, how: str) -> None:
    d = tmp_path / "j"
    logs = build(d)
    idx = Path(str(logs[1])[:-4] + ".index")
    if how == "garbage":
        idx.write_bytes(b"\x17" * 300)
    elif how == "deleted":
        idx.unlink()
        Path(str(logs[1])[:-4] + ".timeindex").unlink()
    else:
        raw = bytearray(idx.read_bytes())
        struct.pack_into("<II", raw, F.INDEX_HEADER, 3, 1999)  # a position that is no batch
        idx.write_bytes(raw)
    report = Journal.check(d)
    assert not report.ok and report.stale_indexes
    base = int(logs[1].name[:20])
    with Journal(d) as j:
        assert [r.offset for r in j.reader(base + 3)][:3] == [base + 3, base + 4, base + 5]
        assert [r.offset for r in j.reader()] == list(range(400))
    report = Journal.check(d)
    assert report.ok, report.problems  # the lookup had a writer rebuild it


def test_truncated_sealed_segment(tmp_path: Path) -> None:
    d = tmp_path / "j"
    logs = build(d)
    with open(logs[1], "rb") as f:  # the data ends at W (the file may be allocated past it)
        f.seek(F.OFF_COMMIT)
        size = int.from_bytes(f.read(8), "little") & 0xFFFFFFFF
    with open(logs[1], "r+b") as f:
        f.truncate(size - 100)
    assert not Journal.check(d).ok
    with Journal(d) as j:
        offsets, errors = read_all(j)
        assert len(errors) == 1
        nxt = int(logs[2].name[:20])
        assert errors[0].offset is not None and errors[0].offset + errors[0].lost == nxt
        assert offsets[-1] == 399 and nxt in offsets


@pytest.mark.parametrize("damage", [b"", b"\0" * 10, b"MMKJSEG\0" + b"\xff" * 100])
def test_garbage_segment_files_raise_our_errors(tmp_path: Path, damage: bytes) -> None:
    d = tmp_path / "j"
    logs = build(d)
    logs[0].write_bytes(damage)
    assert not Journal.check(d).ok
    with Journal(d) as j:
        with pytest.raises(MmapkitError):
            list(j.reader())
        assert [r.offset for r in j.reader(int(logs[1].name[:20]))][-1] == 399


def test_reopen_reads_only_the_active_segment(tmp_path: Path) -> None:
    """A writer that reopens never reads sealed segments: with every sealed segment
    scrambled, it still opens and appends (the cost is O(active tail), not O(journal))."""
    d = tmp_path / "j"
    logs = build(d, 2000)
    for seg in logs[:-1]:
        raw = bytearray(seg.read_bytes())
        raw[F.SEGMENT_HEADER:] = b"\xaa" * (len(raw) - F.SEGMENT_HEADER)
        seg.write_bytes(raw)
    with Journal(d) as j:
        assert j.append(b"next") == 2000
        assert [r.value for r in j.reader(2000)] == [b"next"]


def test_disk_full_loses_nothing_acknowledged() -> None:
    with tiny_tmpfs("320k") as mnt:
        d = mnt / "j"
        acked = []
        with Journal(d, create=True, segment_bytes=16384, index_interval=1024) as j:
            with pytest.raises(DiskFullError):
                for i in range(100000):
                    j.append(b"%06d" % i + b"z" * 200)
                    acked.append(i)
            assert acked and j.end_offset == len(acked)
            with pytest.raises(DiskFullError):
                j.append_many([b"q" * 100] * 50)
            assert j.end_offset == len(acked)
            assert [int(r.value[:6]) for r in j.reader()] == acked
        report = Journal.check(d)
        assert report.ok and report.records == len(acked), report.problems


def test_power_loss_keeps_synced_records_and_cuts_at_the_first_bad_batch(
        tmp_path: Path) -> None:
    d = tmp_path / "j"
    with Journal(d, create=True, segment_bytes=4096, retention_ms=10**15) as j:
        for i in range(100):
            j.append(b"%04d" % i + b"s" * 40)
        j.sync()
        synced = j.end_offset
        for i in range(100, 150):
            j.append(b"%04d" % i + b"u" * 40)  # never synced
    # "Power loss" on a copy: scramble the bytes after the last sync, change the boot.
    c = tmp_path / "copy"
    shutil.copytree(d, c)
    meta = bytearray((c / "journal.meta").read_bytes())
    rp_base, rp_word = struct.unpack_from("<QQ", meta, F.OFF_RECOVERY)
    seg = c / F.segment_name(rp_base)
    raw = bytearray(seg.read_bytes())
    cut_at = (rp_word & 0xFFFFFFFF) + 100
    raw[cut_at : cut_at + 8] = b"\x99" * 8
    seg.write_bytes(raw)
    meta[F.OFF_BOOT : F.OFF_BOOT + 16] = b"\x01" * 16
    (c / "journal.meta").write_bytes(meta)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        j2 = Journal(c)
    with j2:
        assert any(issubclass(w.category, JournalRecoveryWarning) for w in caught)
        rec = j2.recovery
        assert rec is not None and rec.cut_records > 0
        values = [int(r.value[:4]) for r in j2.reader()]
        assert values == list(range(len(values))) and len(values) >= synced
        assert j2.end_offset == rec.kept_end_offset == len(values)
        assert j2.append(b"after") == len(values)
    assert Journal.check(c).ok
    with Journal(c) as j3:  # the stamp is the new boot's now: no second recovery
        assert j3.recovery is None


@pytest.mark.parametrize("chunk", [4096, 1 << 20])
def test_power_loss_walk_in_chunks_cuts_at_the_damaged_batch(
        tmp_path: Path, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """P1 reads the unsynced bytes a chunk at a time (journal._check_file): batches cut by
    a chunk's end, a batch larger than a chunk and long runs of one-record batches are all
    walked; a byte flipped in one late one-record batch cuts there -- every record before
    it kept, the reason naming its position in the file -- whatever the chunk size."""
    from mmapkit.journal import journal as J

    monkeypatch.setattr(J, "_CHECK_CHUNK", chunk)
    d = tmp_path / "j"
    positions: list[tuple[int, int]] = []  # (offset, end position) of each batch
    with Journal(d, create=True) as j:
        j.append(b"synced")
        j.sync()
        for i in range(3):
            j.append_many([b"%06d" % i + b"big" * 3000] * 40)  # ~360 KB batches
            for k in range(2000):
                j.append(b"%06d" % k + b"x" * 93)
        end = j.end_offset
    with Journal(d) as j:
        r = j.reader(0)
        span = r.next_span(1 << 30)
        assert span is not None
        _, pos, length, _ = span
        r.close()
    seg = d / F.segment_name(0)
    raw = bytearray(seg.read_bytes())
    p = pos
    while p < pos + length:
        info = F.read_batch_header(raw, p, pos + length)
        positions.append((info.first_offset, p))
        p += info.length
    victim_offset, victim_pos = positions[-1500]  # a one-record batch past 1 MiB
    assert victim_pos > (1 << 20)
    raw[victim_pos + 70] ^= 0x04  # a value byte: only its CRC tells
    seg.write_bytes(raw)
    meta = bytearray((d / "journal.meta").read_bytes())
    meta[F.OFF_BOOT : F.OFF_BOOT + 16] = b"\x02" * 16
    (d / "journal.meta").write_bytes(meta)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        j2 = Journal(d)
    with j2:
        rec = j2.recovery
        assert rec is not None and rec.kept_end_offset == victim_offset
        assert rec.cut_records == end - victim_offset
        assert f"the batch at {victim_pos} fails its checksum" in rec.reason
        assert [r.offset for r in j2.reader()] == list(range(victim_offset))
    assert Journal.check(d).ok
