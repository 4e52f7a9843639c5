"""Codecs of mmapkit.log: records, buffer header, ring scan, frames (pure functions)."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmapkit.errors import (
    CorruptFileError,
    FileFormatError,
    ForeignFileError,
    FormatVersionError,
)
from mmapkit.log import _codec
from mmapkit.log._codec import Damage, Frame, Record
from mmapkit.log._compress import compressor, decompress


def rec(seq: int, msg: bytes = b"hello", t: int = 1_700_000_000_000_000) -> bytes:
    return _codec.encode_record(seq, t + seq, 4242, 20, msg)


def frame(first: int, n: int, *, stream: int = 7, code: str = "zlib") -> bytes:
    raw = b"".join(rec(first + i, f"message {first + i}".encode()) for i in range(n))
    c, fn = compressor(code)
    return _codec.encode_frame(raw, stream=stream, first_seq=first, count=n, pid=4242,
                               first_time_us=1, last_time_us=2, compression=c, compress=fn)


def records_of(data: bytes, final: bool = True) -> tuple[list[Record], list[Damage]]:
    recs: list[Record] = []
    damages: list[Damage] = []
    for item in _codec.decode_frames(data, final=final):
        if isinstance(item, Damage):
            damages.append(item)
            continue
        assert isinstance(item, Frame)
        raw = _codec.open_frame(item, decompress=decompress)
        for r in _codec.iter_records(raw, item.stream):
            (recs if isinstance(r, Record) else damages).append(r)  # type: ignore[arg-type]
    return recs, damages


# --- records ---------------------------------------------------------------------------


def test_record_round_trip_and_padding() -> None:
    for n in range(0, 20):
        data = rec(5, b"x" * n)
        assert len(data) % 8 == 0
        fields = _codec.decode_record(data)
        assert fields is not None
        size, seq, _t, pid, level, msg = fields
        assert (size, seq, pid, level, msg) == (32 + n, 5, 4242, 20, b"x" * n)


def test_record_with_trailing_bytes() -> None:
    data = rec(1, b"abc") + b"garbage!"
    assert _codec.decode_record(data) is not None


def test_record_cut_at_every_offset() -> None:
    data = rec(1, b"some message text")
    size = 32 + len(b"some message text")
    for cut in range(len(data)):
        got = _codec.decode_record(data[:cut])
        assert (got is not None) == (cut >= size)


def test_record_every_flipped_byte_is_caught() -> None:
    data = rec(9, b"flip me")
    for i in range(4, 32 + 7):  # the size word itself is checked by bounds, the rest by crc
        bad = bytearray(data)
        bad[i] ^= 0x40
        assert _codec.decode_record(bad) is None


def test_records_byte_by_byte_scan() -> None:
    blob = b"".join(rec(i, f"m{i}".encode()) for i in range(1, 6))
    seen = []
    for end in range(len(blob) + 1):
        seen.append(sum(isinstance(r, Record) for r in _codec.iter_records(blob[:end])))
    assert seen[-1] == 5
    assert seen == sorted(seen)  # growing input never yields fewer records


def test_iter_records_skips_one_damaged_record() -> None:
    recs = [rec(i, b"payload %d" % i) for i in range(1, 5)]
    bad = bytearray(recs[1])
    bad[40] ^= 1
    out = list(_codec.iter_records(recs[0] + bytes(bad) + recs[2] + recs[3]))
    assert [r.sequence for r in out if isinstance(r, Record)] == [1, 3, 4]
    assert [d.lost for d in out if isinstance(d, Damage)] == [1]


# --- buffer header and ring --------------------------------------------------------------


def test_buffer_header_round_trip_and_errors() -> None:
    raw = _codec.encode_buffer_header(8192, 99, 64, 3, 1234, 77)
    assert len(raw) == _codec.BUF_HEADER
    h = _codec.decode_buffer_header(raw)
    assert (h.capacity, h.stream, h.head, h.head_seq, h.created_us, h.pid) == \
        (8192, 99, 64, 3, 1234, 77)
    with pytest.raises(ForeignFileError):
        _codec.decode_buffer_header(b"NOTMAGIC" + raw[8:])
    newer = bytearray(raw)
    newer[8] = 9
    # A version flipped by damage (the header checksum fails) is damage...
    with pytest.raises(CorruptFileError):
        _codec.decode_buffer_header(bytes(newer))
    # ...a newer writer's header (checksum kept) says "upgrade".
    struct.pack_into("<I", newer, 60, zlib.crc32(bytes(newer[48:60]),
                                                 zlib.crc32(bytes(newer[:32]))))
    with pytest.raises(FormatVersionError):
        _codec.decode_buffer_header(bytes(newer))
    for head, seq in ((2**64 - 8, 3), (65, 3), (64, 0), (64, 2**64 - 1)):
        absurd = bytearray(raw)
        struct.pack_into("<QQ", absurd, _codec.HEAD_OFFSET, head, seq)
        with pytest.raises(CorruptFileError, match="damaged head"):
            _codec.decode_buffer_header(bytes(absurd))
    flipped = bytearray(raw)
    flipped[17] ^= 1
    with pytest.raises(CorruptFileError):
        _codec.decode_buffer_header(bytes(flipped))
    for cut in range(0, 64):
        with pytest.raises(FileFormatError):
            _codec.decode_buffer_header(raw[:cut])


def ring(cap: int, head: int, records: list[bytes]) -> bytearray:
    area = bytearray(cap)
    pos = head
    for r in records:
        off = pos % cap
        if off + len(r) > cap:
            struct.pack_into("<I", area, off, _codec.PAD_BIT | (cap - off))
            pos += cap - off
            off = 0
        area[off : off + len(r)] = r
        pos += len(r)
    return area


def test_scan_ring_finds_records_across_the_wrap() -> None:
    records = [rec(10 + i, b"r" * 20) for i in range(3)]  # 56 bytes each
    area = ring(256, 1024 + 160, records)
    spans, tail, nxt, damages = _codec.scan_ring(area, 1024 + 160)
    assert not damages and nxt == 13 and len(spans) == 2
    got = b"".join(bytes(area[a : a + n]) for a, n in spans)
    assert got == b"".join(records)
    assert tail - (1024 + 160) == sum(len(r) for r in records) + (256 - 160 - 56)


def test_scan_ring_stops_at_stale_lap() -> None:
    area = ring(256, 0, [rec(1), rec(2), rec(3)])
    area[0 : 40] = rec(40)  # newer record over the first slot: seq 40, then stale 2, 3
    spans, _, nxt, _ = _codec.scan_ring(area, 0)
    assert nxt == 41 and spans == [(0, 40)]


def test_scan_ring_cut_at_every_offset() -> None:
    records = [rec(i, b"abcdefgh" * i) for i in range(1, 5)]
    full = ring(512, 0, records)
    total = sum(len(r) for r in records)
    for cut in range(total + 1):
        area = bytearray(full[:cut]) + bytearray(512 - cut)
        _, tail, _, damages = _codec.scan_ring(area, 0)
        whole = [len(r) for r in records]
        expect = 0
        for n in whole:
            if expect + n <= cut:
                expect += n
            else:
                break
        assert tail == expect
        assert all(d.length > 0 for d in damages)


# --- frames -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["zlib", "zstd", "none"])
def test_frames_round_trip(code: str) -> None:
    data = frame(1, 10, code=code) + frame(11, 5, code=code)
    recs, damages = records_of(data)
    assert not damages
    assert [r.sequence for r in recs] == list(range(1, 16))
    assert recs[3].message == "message 4" and recs[3].pid == 4242 and recs[3].level == 20


def test_frames_with_trailing_garbage() -> None:
    data = frame(1, 3) + b"\x00garbage-tail"
    recs, damages = records_of(data)
    assert len(recs) == 3
    assert len(damages) == 1 and damages[0].offset == len(frame(1, 3))


def test_frames_byte_by_byte_when_not_final() -> None:
    data = frame(1, 4) + frame(5, 4)
    counts = []
    for end in range(len(data) + 1):
        recs, damages = records_of(data[:end], final=False)
        assert not damages
        counts.append(len(recs))
    assert counts[-1] == 8 and counts == sorted(counts)


def test_frames_cut_at_every_offset() -> None:
    first = frame(1, 4)
    data = first + frame(5, 4)
    for cut in range(len(data)):
        try:
            recs, damages = records_of(data[:cut])
        except ForeignFileError:
            assert cut < 4 + 1 or cut < len(first)  # nothing of ours in the bytes
            continue
        assert len(recs) == (4 if cut >= len(first) else 0)
        if cut not in (0, len(first)):
            assert damages and damages[-1].offset + damages[-1].length == cut


def test_one_bad_byte_costs_one_frame_and_says_so() -> None:
    frames = [frame(1 + 10 * i, 10) for i in range(3)]
    data = bytearray(b"".join(frames))
    data[len(frames[0]) + 70] ^= 0xFF  # inside the second frame's payload
    recs, damages = records_of(bytes(data))
    assert [r.sequence for r in recs] == list(range(1, 11)) + list(range(21, 31))
    assert len(damages) == 1 and damages[0].lost == 10 and damages[0].first_seq == 11


def test_damaged_header_resyncs_at_next_frame() -> None:
    frames = [frame(1 + 10 * i, 10) for i in range(3)]
    data = bytearray(b"".join(frames))
    data[len(frames[0]) + 5] ^= 0xFF  # second frame's header
    recs, damages = records_of(bytes(data))
    assert len(recs) == 20 and len(damages) == 1
    assert damages[0].length == len(frames[1])


def test_newer_frame_version_is_refused() -> None:
    data = bytearray(frame(1, 2))
    data[4] = 2
    struct.pack_into("<I", data, 60, zlib.crc32(bytes(data[:60])))
    with pytest.raises(FormatVersionError):
        list(_codec.decode_frames(bytes(data)))


def test_foreign_file() -> None:
    with pytest.raises(ForeignFileError):
        list(_codec.decode_frames(b"just a text log line\n" * 10))


# --- fuzz -------------------------------------------------------------------------------


def _consume(data: bytes) -> None:
    try:
        records_of(data)
    except FileFormatError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_garbage_never_crashes(data: bytes) -> None:
    _consume(data)
    _consume(_codec.FRAME_MAGIC + data)
    _codec.scan_ring(bytearray(data) + bytearray(-len(data) % 8 or 8), 0)
    list(_codec.iter_records(data))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6),
       st.integers(0, 2000))
def test_fuzz_damaged_frames(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(frame(1, 5) + frame(6, 5) + frame(11, 5))
    for pos, val in flips:
        data[pos % len(data)] ^= val or 1
    if cut % 3 == 0:
        del data[len(data) - cut % 64 :]
    try:
        recs, _ = records_of(bytes(data))
    except FileFormatError:
        return
    seqs = [r.sequence for r in recs]
    assert all(1 <= s <= 15 for s in seqs)
    for r in recs:  # whatever survives is exactly what was written
        assert r.message == f"message {r.sequence}"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4095), st.integers(1, 255)), max_size=5))
def test_fuzz_damaged_ring(flips: list[tuple[int, int]]) -> None:
    records = [rec(i, b"ring %d" % i) for i in range(1, 40)]
    area = ring(2048, 512, records[:30])
    for pos, val in flips:
        area[pos % len(area)] ^= val
    spans, _, _, _ = _codec.scan_ring(area, 512)
    for a, n in spans:
        for r in _codec.iter_records(area[a : a + n]):
            if isinstance(r, Record):
                assert r.message == f"ring {r.sequence}"


def test_scan_ring_record_ending_exactly_at_the_end() -> None:
    records = [rec(1, b"e" * 24), rec(2, b"e" * 24), rec(3, b"f" * 24)]  # 56 bytes each
    area = ring(112, 56, records[:2])
    spans, tail, nxt, damages = _codec.scan_ring(area, 56)
    assert spans == [(56, 56), (0, 56)] and tail == 168 and nxt == 3 and not damages
