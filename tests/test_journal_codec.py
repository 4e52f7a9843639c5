"""The journal's batch codec: the fast encoders give the general encoder's bytes, and
decoding returns what was encoded (from bytes and from a mapping)."""

from __future__ import annotations

import mmap
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmapkit.journal import Journal
from mmapkit.journal import _format as F

values = st.binary(max_size=300)
keys = st.none() | st.binary(max_size=20)
headers = st.none() | st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=10)),
                               max_size=3)
records = st.lists(st.tuples(st.integers(-(1 << 40), 1 << 40), keys, values, headers),
                   min_size=1, max_size=20)


@settings(max_examples=150, deadline=None)
@given(records, st.integers(0, 1 << 50))
def test_round_trip(recs: list[tuple[int, bytes | None, bytes, list[tuple[str, bytes]] | None]],
                    first: int) -> None:
    batch = F.encode_batch(first, recs)
    info = F.read_batch_header(batch, 0, len(batch))
    assert info.first_offset == first and info.records == len(recs)
    got = F.decode_records(batch, 0, info)
    assert got == list(F.decode_batch(memoryview(batch), 0, info))
    for i, (r, (ts, key, value, hs)) in enumerate(zip(got, recs, strict=True)):
        assert r == F.Record(first + i, ts, key, value, tuple(hs or ()))
        assert type(r.value) is bytes


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 1 << 45), keys, values, st.lists(values, min_size=1, max_size=30))
def test_fast_encoders_match_the_general_one(ts: int, key: bytes | None, value: bytes,
                                             many: list[bytes]) -> None:
    tail, crc, *_ = F.encode_batch_tail([(ts, key, value, None)])
    assert F.encode_one_tail(ts, key, value) == (tail, crc)
    assert F.encode_one(ts, key, value) == F.encode_batch(0, [(ts, key, value, None)])
    tail, crc, *_ = F.encode_batch_tail([(ts, None, v, None) for v in many])
    assert F.encode_values_tail(ts, many) == (tail, crc)


def test_decode_from_a_mapping_and_damage(tmp_path: object) -> None:
    batch = F.encode_batch(7, [(1, b"k", b"v" * 50, [("h", b"x")]), (2, None, b"w", None)])
    buf = bytearray(4096)
    buf[100 : 100 + len(batch)] = batch
    m = mmap.mmap(-1, 4096)
    m[:] = bytes(buf)
    info = F.read_batch_header(m, 100, 4096)
    got = F.decode_records(m, 100, info)
    assert [(r.offset, r.key, r.value, r.headers) for r in got] == [
        (7, b"k", b"v" * 50, (("h", b"x"),)), (8, None, b"w", ())]
    assert all(type(r.value) is bytes for r in got)
    bad = bytearray(batch)
    bad[F.BATCH_HEADER + 12] = 200  # the first record's value length: past the batch
    try:
        F.decode_records(bytes(bad), 0, info)
    except F.BatchError as exc:
        assert "past its batch" in str(exc)
    else:
        raise AssertionError("a record running past its batch was decoded")


def test_two_writers_interleaving_keep_indexes_and_times(tmp_path: object) -> None:
    # each writer catches up on the other's batches (not a rescan) before it appends
    path = str(tmp_path) + "/j"
    with Journal(path, create=True, index_interval=200) as a, Journal(path) as b:
        for i in range(600):
            (a if i % 3 else b).append(b"x" * 30, timestamp_ms=1000 + i)
            if i % 50 == 0:
                (b if i % 2 else a).append_many([b"m"] * 5, )
        assert a.offset_for_time(1300) == b.offset_for_time(1300)
        rec = next(iter(a.reader(a.offset_for_time(1300) or 0)))
        assert rec.timestamp_ms >= 1300
    report = Journal.check(path)
    assert report.ok, report.problems
    assert not report.stale_indexes


@settings(max_examples=300, deadline=None)
@given(records, st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1,
                         max_size=4))
def test_garbage_records_raise_batch_error_only(
        recs: list[tuple[int, bytes | None, bytes, list[tuple[str, bytes]] | None]],
        flips: list[tuple[int, int]]) -> None:
    bad = bytearray(F.encode_batch(0, recs))
    for at, x in flips:
        if at >= F.BATCH_HEADER and at < len(bad):
            bad[at] ^= x
    data = bytes(bad)
    try:
        info = F.read_batch_header(data, 0, len(data), verify=False)
        F.decode_records(data, 0, info)
    except F.BatchError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=3, max_size=3), min_size=5, max_size=40),
       st.integers(0, 1 << 40), st.integers(0, 200))
def test_uniform_batches_take_the_fast_path_with_the_same_result(
        vals: list[bytes], ts: int, odd: int) -> None:
    tail, crc = F.encode_values_tail(ts, vals)
    batch = F.batch_prefix(crc, len(tail), 9) + tail
    info = F.read_batch_header(batch, 0, len(batch))
    fast = F._decode_uniform(batch, 0, info)
    assert fast is not None and fast == F._decode_general(batch, 0, info)
    assert F.decode_records(batch, 0, info) == fast
    # one record of another length, a key or a header: not uniform, the general loop
    for recs in ([(ts, None, v, None) for v in vals[:-1]] + [(ts, None, b"x" * (odd + 4),
                                                               None)],
                 [(ts, b"k", vals[0], None)] + [(ts, None, v, None) for v in vals[1:]],
                 [(ts, None, v, [("h", b"")] if i == 2 else None)
                  for i, v in enumerate(vals)]):
        batch = F.encode_batch(0, recs)
        info = F.read_batch_header(batch, 0, len(batch))
        assert F._decode_uniform(batch, 0, info) is None
        assert [r.value for r in F.decode_records(batch, 0, info)] == [r[2] for r in recs]


def test_a_follower_reads_new_tail_bytes_without_remapping(tmp_path: object) -> None:
    from mmapkit.errors import CorruptFileError

    path = str(tmp_path) + "/j"
    with Journal(path, create=True) as j, j.reader("latest") as r:
        j.append(b"first")
        assert [x.value for x in r.poll(10)] == [b"first"]
        assert r._seg is not None
        mapped = len(r._seg.view)
        j.append(b"a")
        j.append_many([b"b", b"c"])
        j.append(b"d", key=b"k", headers={"h": b"v"})
        got = r.poll(10)
        assert [(x.offset, x.value) for x in got] == [(1, b"a"), (2, b"b"), (3, b"c"),
                                                      (4, b"d")]
        assert got[-1].headers == (("h", b"v"),) and got[-1].key == b"k"
        assert len(r._seg.view) == mapped  # read with pread: no remap per append
        j.append(b"damaged later")
        seg = path + "/00000000000000000000.log"
        with open(seg, "r+b") as f:  # flip a value byte of the newest batch (the file
            f.seek(F.OFF_COMMIT)     # may be allocated past W: the data ends at W)
            size = int.from_bytes(f.read(8), "little") & 0xFFFFFFFF
            f.seek(size - 3)
            b = f.read(1)
            f.seek(size - 3)
            f.write(bytes([b[0] ^ 0xFF]))
        try:
            r.poll(10)
        except CorruptFileError as exc:
            assert exc.offset == 5
        else:
            raise AssertionError("a damaged tail batch was returned")


def test_uniform_batches_of_every_layout_and_length() -> None:
    # strides that are a multiple of 8 (strided word views: 4 and 100-byte values) and
    # that are not (3, 13), batches of one compiled run (<= 256 records) and of several,
    # one shared timestamp and one per record; a stray key, header or length anywhere
    # (also past the first run) sends the batch to the general loop
    for vlen in (3, 4, 13, 100):
        for count in (5, 256, 257, 600):
            vals = [(b"%08d" % i * 13)[:vlen] for i in range(count)]
            for stamps in ([77] * count, [77 + i % 3 for i in range(count)]):
                recs = [(t, None, v, None) for t, v in zip(stamps, vals, strict=True)]
                batch = F.encode_batch(1 << 40, recs)
                info = F.read_batch_header(batch, 0, len(batch))
                fast = F._decode_uniform(batch, 0, info)
                assert fast is not None and fast == F._decode_general(batch, 0, info)
                assert [(r.offset, r.timestamp_ms, r.value) for r in fast] == [
                    ((1 << 40) + i, t, v) for i, (t, v) in enumerate(zip(stamps, vals,
                                                                         strict=True))]
                assert all(type(r) is F.Record and type(r.value) is bytes for r in fast)
                odd = count - 2
                longer, shorter = (77, None, vals[odd] + b"!", None), (77, None, vals[-1][1:],
                                                                       None)
                for changed in ([(77, b"k", vals[odd], None), recs[-1]], [longer, recs[-1]],
                                [(77, None, vals[odd], [("h", b"")]), recs[-1]],
                                [longer, shorter]):  # (the same total length)
                    other = [*recs[:odd], changed[0], recs[odd + 1], changed[1]]
                    bad = F.encode_batch(0, other)
                    info = F.read_batch_header(bad, 0, len(bad))
                    assert F._decode_uniform(bad, 0, info) is None
                    assert [r.value for r in F.decode_records(bad, 0, info)] == [
                        r[2] for r in other]


def test_a_crafted_batch_that_looks_uniform_at_every_stride_is_not() -> None:
    # record 2 carries 8 header bytes, record 3 is 8 bytes shorter: every record still
    # starts on a 120-byte stride except record 3, whose timestamp sits where a uniform
    # record's key and value lengths would be (and says -1, 100).  Only the headers'
    # length at that stride (record 3's key length, -1) tells: the general loop decodes it
    import zlib

    ts_like_lengths = struct.unpack("<q", struct.pack("<ii", -1, 100))[0]
    heads = b"\0\0" + struct.pack("<I", 2) + b"hv"  # one header: name "", value b"hv"
    body = b"".join([F.REC.pack(5, -1, 100, 0) + b"a" * 100] * 2
                    + [F.REC.pack(5, -1, 100, 8) + b"b" * 100 + heads,
                       F.REC.pack(ts_like_lengths, -1, 92, 0) + b"c" * 92]
                    + [F.REC.pack(5, -1, 100, 0) + b"d" * 100] * 2)
    tail = F._BODY_HEAD.pack(6, F.BATCH_VERSION, 0, 0, 5, ts_like_lengths) + body
    batch = F.batch_prefix(zlib.crc32(tail), len(tail), 0) + tail
    info = F.read_batch_header(batch, 0, len(batch))
    assert info.length == F.BATCH_HEADER + 6 * 120
    assert F._decode_uniform(batch, 0, info) is None
    got = F.decode_records(batch, 0, info)
    assert got[2].headers == (("", b"hv"),) and got[3].value == b"c" * 92


def test_decode_one_takes_exactly_one_plain_record_and_nothing_else() -> None:
    one = F.encode_batch(41, [(9, None, b"v" * 30, None)])
    buf = b"\0" * 8 + one + b"\0" * 8  # (a position inside a larger buffer)
    info = F.read_batch_header(one, 0, len(one))
    assert F.decode_one(buf, 8, 8 + len(one), 41) == F.decode_records(one, 0, info)[0]
    bad = bytearray(buf)
    bad[8 + len(one) - 1] ^= 1
    for data, pos, end, offset in ((buf, 8, 8 + len(one), 40),  # another offset
                                   (buf, 8, 8 + len(one) + 8, 41),  # more bytes than it
                                   (buf, 8, 8 + len(one) - 1, 41),  # cut
                                   (bytes(bad), 8, 8 + len(one), 41)):  # fails its CRC
        assert F.decode_one(data, pos, end, offset) is None
    for recs in ([(9, b"k", b"v", None)], [(9, None, b"v", [("h", b"x")])],
                 [(9, None, b"v", None), (9, None, b"w", None)]):
        other = F.encode_batch(41, recs)
        assert F.decode_one(other, 0, len(other), 41) is None


def _walk_one_by_one(view: bytes, pos: int, got: int, limit: int,
                     first: int) -> tuple[int, int, bool]:
    """check_batches's contract spelled out batch by batch with read_batch_header: the
    reference the run-at-a-time walk must agree with (position, next offset, damaged?)."""
    p, nxt = pos, first
    while p < got:
        if p + F.BATCH_HEADER > got:
            return p, nxt, p + F.BATCH_HEADER > limit
        try:
            info = F.read_batch_header(view, p, limit, verify=False)
        except F.BatchError:
            return p, nxt, True
        if info.first_offset != nxt:
            return p, nxt, True
        if p + info.length > got:
            break
        try:
            F.read_batch_header(view, p, limit)
        except F.BatchError:
            return p, nxt, True
        nxt += info.records
        p += info.length
    return p, nxt, False


# runs of one shape (what check_batches checks a run at a time) and shapes whose lengths
# collide with another count (2 records of 10 bytes and 1 of 40: both 100-byte batches)
shapes = st.lists(st.tuples(st.sampled_from([(1, 10), (1, 40), (2, 10), (1, 1100),
                                               (3, 500)]), st.integers(1, 90)),
                  min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(shapes, st.integers(0, 1 << 40), st.data(), st.booleans())
def test_check_batches_runs_agree_with_one_batch_at_a_time(
        runs: list[tuple[tuple[int, int], int]], first: int, data: st.DataObject,
        with_zlib: bool) -> None:
    """Runs of equal batches are checked in C loops (_format._check_run); whatever the
    damage -- a flipped byte anywhere (a CRC, a length, an offset, a count, a version, a
    value), a batch of the same length but another record count, bytes still arriving --
    the walk stops where the batch-by-batch reference stops and says the same, with
    ISA-L's CRC and with zlib's (a client without the isal extra)."""
    with pytest.MonkeyPatch.context() as mp:
        if with_zlib:
            mp.setattr(F, "crc32", zlib.crc32)
        _runs_agree(runs, first, data)


def _runs_agree(runs: list[tuple[tuple[int, int], int]], first: int,
                data: st.DataObject) -> None:
    parts, off = [], first
    for (count, vlen), times in runs:
        for _ in range(times):
            parts.append(F.encode_batch(off, [(7, None, bytes([off % 251]) * vlen, None)
                                              for _ in range(count)]))
            off += count
    raw = bytearray(b"".join(parts))
    for _ in range(data.draw(st.integers(0, 2))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] ^= 1 << data.draw(st.integers(0, 7))
    view = bytes(raw)
    limit = len(view)
    for got in {limit, data.draw(st.integers(0, limit))}:
        p, nxt, problem = F.check_batches(memoryview(view), 0, got, limit, first)
        assert (p, nxt, problem is not None) == _walk_one_by_one(view, 0, got, limit, first)
    if view == b"".join(parts):
        assert F.check_batches(view, 0, limit, limit, first) == (limit, off, None)


def test_check_batches_reports_damage_inside_a_long_run() -> None:
    """A run of 3000 one-record batches (a writer's plain appends) with one byte flipped
    in batch 2500's value: the walk keeps the 2500 before it and says which batch."""
    batches = [F.encode_batch(i, [(7, None, b"v" * 100, None)]) for i in range(3000)]
    size = len(batches[0])
    raw = bytearray(b"".join(batches))
    raw[2500 * size + 90] ^= 0x10
    p, nxt, problem = F.check_batches(memoryview(raw), 0, len(raw), len(raw), 0)
    assert (p, nxt) == (2500 * size, 2500)
    assert problem is not None and "checksum" in str(problem) and str(p) in str(problem)


def _one_batches(first: int, recs: list[tuple[int, bytes | None, bytes, object]]
                 ) -> tuple[bytes, list[int]]:
    """One-record batches, one after another from offset ``first``, and their lengths."""
    parts = [F.encode_batch(first + i, [r]) for i, r in enumerate(recs)]  # type: ignore[list-item]
    return b"".join(parts), [len(p) for p in parts]


def _decode_each(data: bytes, lengths: list[int]) -> list[F.Record]:
    out, p = [], 0
    for n in lengths:
        out += F.decode_records(data, p, F.read_batch_header(data, p, len(data)))
        p += n
    return out


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 300), st.integers(F._RUN_MIN, 300), st.integers(0, 1 << 40),
       st.integers(0, 1 << 40), st.integers(0, 400), st.sampled_from(["key", "crc", "len"]))
def test_a_run_of_appends_decodes_as_each_batch_alone(vlen: int, n: int, first: int,
                                                      ts: int, at: int, odd: str) -> None:
    recs = [(ts + i % 3, None, bytes([i % 251]) * vlen, None) for i in range(n)]
    data, lengths = _one_batches(first, recs)
    info = F.read_batch_header(data, 0, len(data))
    got = F.decode_one_run(data, memoryview(data), 0, len(data), info)
    assert got is not None
    recs_out, took = got
    want = _decode_each(data, lengths)
    assert took == len(data) or len(recs_out) == F._RUN_MAX
    assert recs_out == want[: len(recs_out)] and type(recs_out[0]) is F.Record
    # a batch of the same length that is not a plain record, or fails its CRC, or one of
    # another length: the run ends before it (what comes before is decoded), or there is
    # no run when it is among the first _RUN_MIN
    i = at % n
    if odd == "key":
        recs[i] = (ts, b"", recs[i][2], None)  # (an empty key: the same batch length)
    elif odd == "len":
        recs[i] = (ts, None, recs[i][2] + b"+", None)
    data, lengths = _one_batches(first, recs)
    if odd == "crc":
        p = sum(lengths[:i])
        bad = bytearray(data)
        bad[p + lengths[i] - 1 if vlen else p + 40] ^= 0xFF
        data = bytes(bad)
    view = memoryview(data)
    got = F.decode_one_run(data, view, 0, len(data), F.read_batch_header(data, 0, len(data))) \
        if i else None
    if got is not None:
        recs_out, took = got
        assert recs_out == _decode_each(data, lengths[: len(recs_out)])
        assert took == sum(lengths[: len(recs_out)])
        assert len(recs_out) <= i
    elif i >= F._RUN_MIN and odd != "len":
        raise AssertionError("a run of at least _RUN_MIN plain batches was not decoded")


def test_a_journal_of_appends_reads_back_by_runs(tmp_path: object) -> None:
    from pathlib import Path

    d = Path(str(tmp_path)) / "j"
    want = []
    with Journal(d, create=True) as j:
        for i in range(3000):
            if i % 997 == 500:
                j.append(b"k%d" % i, key=b"key")
                want.append((b"key", b"k%d" % i))
            elif i % 1500 == 700:
                j.append_many([b"m%d" % i, b"n%d" % i])
                want += [(None, b"m%d" % i), (None, b"n%d" % i)]
            else:
                v = b"v%06d" % i if i % 1000 < 600 else b"w%07d" % i  # two value lengths
                j.append(v)
                want.append((None, v))
        got = [(r.key, r.value) for r in j.reader()]
        assert got == want
        assert [r.offset for r in j.reader(1234)] == list(range(1234, len(want)))
        with j.reader() as r:
            assert [x.offset for x in r.poll(10)] == list(range(10))
            assert sum(1 for _ in r) == len(want) - 10


def test_runs_of_keyed_or_mixed_appends_are_left_to_the_general_decoder() -> None:
    keyed, _ = _one_batches(0, [(1, b"k", b"v" * 10, None)] * 50)
    info = F.read_batch_header(keyed, 0, len(keyed))
    assert F.decode_one_run(keyed, keyed, 0, len(keyed), info) is None  # (one unpack)
    # plain and keyed (of the same length) in turn: each call takes the one plain record
    # and checks at most one window more (no rework of the whole run at every call)
    mixed, lengths = _one_batches(0, [(1, None if i % 2 else b"", b"v" * 10, None)
                                      for i in range(64)])
    p = lengths[0]
    info = F.read_batch_header(mixed, p, len(mixed))
    got = F.decode_one_run(mixed, mixed, p, len(mixed), info)
    assert got is not None and [r.offset for r in got[0]] == [1] and got[1] == lengths[1]
