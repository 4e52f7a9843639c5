"""The KV file format as pure functions: whole, byte by byte, trailing bytes, every cut, fuzz."""

from __future__ import annotations

import math
import pickle
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmapkit.errors import CorruptFileError, ForeignFileError, FormatVersionError
from mmapkit.kv import codec

VALUES = [None, True, False, 0, 1, -1, 2**63 - 1, -(2**63), 2**63, -(2**200), 10**100,
          0.0, -0.0, 1.5, math.inf, "", "héllo \udc80", b"", b"\0\xff" * 10,
          [], (), {}, [1, "a", b"b", None], (1, (2, (3,))), {"a": 1, 2: [3], (4, 5): {"x": b""}},
          [[[]]], {"nested": {"deep": [1.25, True, None]}}]

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
           | st.text() | st.binary())
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=5),
    max_leaves=20)


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_value_roundtrip_keeps_type(value: object) -> None:
    data = codec.encode_value(value)
    back = codec.decode_value(data)
    assert back == value and type(back) is type(value)


def test_nan_roundtrips() -> None:
    assert math.isnan(codec.decode_value(codec.encode_value(math.nan)))


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_value_cut_at_every_offset_and_trailing_bytes(value: object) -> None:
    data = codec.encode_value(value)
    for cut in range(len(data)):
        with pytest.raises(CorruptFileError):
            codec.decode_value(data[:cut])
    with pytest.raises(CorruptFileError):
        codec.decode_value(data + b"\0")


def test_unsupported_types_need_a_serializer() -> None:
    with pytest.raises(TypeError, match="serializer"):
        codec.encode_value({1, 2})
    data = codec.encode_value({1, 2}, pickle)
    assert codec.decode_value(data, pickle) == {1, 2}
    with pytest.raises(CorruptFileError, match="serializer"):
        codec.decode_value(data)


def test_cycles_and_depth_are_refused() -> None:
    a: list[object] = []
    a.append(a)
    with pytest.raises(ValueError, match="contains itself"):
        codec.encode_value(a)
    deep: list[object] = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(ValueError, match="deeper"):
        codec.encode_value(deep)


def test_key_limits() -> None:
    assert codec.encode_key("a") == b"\x01\x00a"
    codec.encode_key("x" * codec.KEY_MAX)
    with pytest.raises(ValueError, match="limit"):
        codec.encode_key("x" * (codec.KEY_MAX + 1))
    with pytest.raises(TypeError):
        codec.encode_key(b"a")  # type: ignore[arg-type]


def _stream(n: int = 6) -> tuple[bytes, list[tuple[int, bytes]]]:
    pos = codec.DATA_START
    out = bytearray(b"\0" * codec.DATA_START)
    recs = []
    for i in range(n):
        kind, body = codec.set_body(codec.encode_key(f"k{i}"), codec.encode_value("v" * i * 3))
        rec = codec.encode_record(kind, body, pos)
        recs.append((pos, body))
        out += rec
        pos += len(rec)
    return bytes(out), recs


def test_scan_whole() -> None:
    data, recs = _stream()
    s = codec.scan(data, codec.DATA_START)
    assert [(r.offset, r.body) for r in s.records] == recs
    assert s.next == len(data) and s.tail == 0 and not s.damaged
    ops = [op for r in s.records for op in codec.iter_ops(r.kind, r.body)]
    assert [o[1] for o in ops] == [f"k{i}" for i in range(6)]


def test_scan_byte_by_byte_resumes_like_a_follower() -> None:
    data, recs = _stream()
    pos, got = codec.DATA_START, []
    for end in range(codec.DATA_START, len(data) + 1):
        s = codec.scan(data[:end], pos, resync=False)
        got += [(r.offset, r.body) for r in s.records]
        pos = s.next
    assert got == recs


def test_scan_cut_at_every_offset_gives_the_whole_records_before_the_cut() -> None:
    data, recs = _stream()
    for cut in range(codec.DATA_START, len(data) + 1):
        s = codec.scan(data[:cut], codec.DATA_START)
        whole = [r for r in recs if r[0] + codec.record_size(len(r[1])) <= cut]
        assert [(r.offset, r.body) for r in s.records] == whole
        assert not s.damaged
        assert s.next + s.tail == cut


def test_scan_trailing_zeros_and_garbage() -> None:
    data, recs = _stream()
    s = codec.scan(data + bytes(100), codec.DATA_START)
    assert len(s.records) == len(recs) and s.tail == 100 and not s.damaged
    s = codec.scan(data + b"\x56\x4b" + b"\xee" * 40, codec.DATA_START)
    assert len(s.records) == len(recs) and s.tail == 42


def test_flipped_byte_costs_only_that_record() -> None:
    data, recs = _stream()
    for i, (off, body) in enumerate(recs):
        for delta in (0, 4, 9, 12 + len(body) // 2):
            bad = bytearray(data)
            bad[off + delta] ^= 0x40
            s = codec.scan(bytes(bad), codec.DATA_START)
            kept = [r.offset for r in s.records]
            assert off not in kept
            if i < len(recs) - 1:
                assert kept == [o for o, _ in recs if o != off]
                assert s.damaged == ((off, recs[i + 1][0]),)


def test_record_moved_to_another_offset_does_not_verify() -> None:
    rec = codec.encode_record(codec.KIND_DEL, codec.encode_key("a"), 128)
    data = bytes(136) + rec
    assert codec.scan(data, 136).records == ()


def test_crc32_masks_its_seed() -> None:
    # The store's inline writers pass the record seed unmasked (offset * constant can
    # pass 32 bits) and rely on zlib.crc32 taking its low 32 bits, as codec._seed does.
    seed = (1 << 40) * 0x9E3779B1 ^ (123 << 16) ^ 1
    assert zlib.crc32(b"body", seed) == zlib.crc32(b"body", seed & 0xFFFFFFFF)
    rec = codec.encode_record(codec.KIND_SET, b"body", 1 << 40)
    assert struct.unpack_from("<I", rec, 8)[0] == zlib.crc32(b"body", (1 << 40) * 0x9E3779B1
                                                             ^ (4 << 16) ^ codec.KIND_SET)


def test_batch_ops() -> None:
    entries = [codec.set_body(codec.encode_key("a"), codec.encode_value(1)),
               (codec.KIND_DEL, codec.encode_key("b")), (codec.KIND_CLEAR, b""),
               codec.set_body(codec.encode_key("c"), codec.encode_value(2), 5.0)]
    ops = list(codec.iter_ops(codec.KIND_BATCH, codec.batch_body(entries)))
    assert [(o[0], o[1], o[3]) for o in ops] == [(1, "a", 0.0), (3, "b", 0.0), (4, "", 0.0),
                                                 (2, "c", 5.0)]
    body = codec.batch_body(entries)
    for cut in range(len(body)):
        try:
            list(codec.iter_ops(codec.KIND_BATCH, body[:cut]))
        except CorruptFileError:
            pass


def test_header_roundtrip_and_errors() -> None:
    h = codec.build_header(flags=1, salt=7, created_ns=9, keycheck=b"k" * 28, end=256, seq=3,
                           compactions=2)
    assert len(h) == codec.HEADER_SIZE
    p = codec.parse_header(h)
    assert (p.end, p.seq, p.compactions, p.salt, p.encrypted, p.crc_ok) == (256, 3, 2, 7, True,
                                                                            True)
    for cut in range(codec.HEADER_SIZE):
        with pytest.raises((CorruptFileError, ForeignFileError)):
            codec.parse_header(h[:cut])
    with pytest.raises(ForeignFileError):
        codec.parse_header(b"x" * 200)
    newer = bytearray(h)
    struct.pack_into("<H", newer, 8, codec.VERSION + 1)
    with pytest.raises(FormatVersionError):
        codec.parse_header(bytes(newer))
    flipped = bytearray(h)
    flipped[20] ^= 1
    assert not codec.parse_header(bytes(flipped)).crc_ok


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_json_form_roundtrips(value: object) -> None:
    assert codec.from_json_value(codec.to_json_value(value)) == value


@given(values)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_roundtrip(value: object) -> None:
    assert codec.decode_value(codec.encode_value(value)) == value


@given(st.binary(max_size=64))
@settings(max_examples=300)
def test_fuzz_garbage_values(data: bytes) -> None:
    try:
        codec.decode_value(data)
    except CorruptFileError:
        pass


@given(st.binary(max_size=600), st.integers(min_value=0, max_value=200))
@settings(max_examples=300)
def test_fuzz_garbage_scan_and_ops(data: bytes, start: int) -> None:
    s = codec.scan(data, start)
    assert s.next <= max(len(data), start)
    for r in s.records:
        try:
            list(codec.iter_ops(r.kind, r.body))
        except CorruptFileError:
            pass


@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8))
@settings(max_examples=200)
def test_fuzz_damage_keeps_every_untouched_record(flips: list[tuple[int, int]]) -> None:
    data, recs = _stream(10)
    bad = bytearray(data)
    hit = set()
    for where, xor in flips:
        where = codec.DATA_START + where % (len(data) - codec.DATA_START)
        bad[where] ^= xor or 1
        hit.add(where)
    s = codec.scan(bytes(bad), codec.DATA_START)
    got = {r.offset: r.body for r in s.records}
    for off, body in recs:
        size = codec.record_size(len(body))
        if not any(off <= h < off + size for h in hit):
            assert got.get(off) == body
