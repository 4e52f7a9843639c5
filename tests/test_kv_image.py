"""Image records (kind 6): the columnar compaction image.

Byte level (codec.encode_image/decode_image): every form round-trips, a body cut at any
offset or with any byte flipped raises CorruptFileError or decodes to something (never
another exception), and hypothesis round-trips arbitrary keys and values.  File level:
a compaction or backup writes images and version 2, the fast loader and the careful
replay agree, a damaged image record costs exactly its own keys (found by load and
check(), the rest loaded), a kill -9 at random moments of compactions that write images
loses no acknowledged write, and the CLI reads image files.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmapkit import cli
from mmapkit.errors import CorruptFileError, FormatVersionError
from mmapkit.kv import KV, _load, codec

FORMS: list[tuple[list[str], list[Any]]] = [
    (["a", "b", "c"], [1, -(1 << 63), (1 << 63) - 1]),
    (["a", "b\0x", "c"], [0, 1, 2]),  # a key with a NUL: key lengths
    (["k1", "k2"], [b"xy", b"zw"]),  # one width
    (["k1", "k2", "k3"], [b"", b"", b""]),  # width 0
    (["k1", "k2", "k3"], [b"a", b"", b"\0\0\0"]),  # lengths
    (["é", "ключ", "鍵"], ["v", "", "ü" * 300]),  # NUL-joined str
    (["x", "y"], ["a\0b", ""]),  # a str with a NUL: lengths
    (["only"], [""]),
    ([""], [b""]),
    (["", "\0"], [7, 8]),
]


def image_records(path: Path) -> list[codec.Record]:
    data = path.read_bytes()
    hdr = codec.parse_header(data)
    return [r for r in codec.scan(data, codec.DATA_START, hdr.end).records
            if r.kind == codec.KIND_IMAGE]


# --- codec ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("keys", "values"), FORMS)
def test_every_form_round_trips(keys: list[str], values: list[Any]) -> None:
    body = codec.encode_image(keys, values)
    assert codec.decode_image(body) == (keys, values)
    assert codec.decode_image(memoryview(body)) == (keys, values)
    assert codec.decode_image(bytearray(body)) == (keys, values)
    got = list(codec.iter_ops(codec.KIND_IMAGE, body))
    assert got == [(codec.KIND_SET, k, codec.encode_value(v), 0.0)
                   for k, v in zip(keys, values, strict=True)]


def test_the_head_spells_the_documented_layout() -> None:
    body = codec.encode_image(["ab", "c"], [5, -1])
    assert body[:16] == struct.pack("<BBHIII", codec.IM_INT, 0, 0, 2, 4, 16)
    assert body[16:20] == b"ab\0c"
    assert body[20:] == struct.pack("<qq", 5, -1)
    body = codec.encode_image(["a\0", "b"], [b"xyz", b""])
    assert body[:16] == struct.pack("<BBHIII", codec.IM_BYTES, 1, 0, 2, 3, 3)
    assert body[16:] == struct.pack("<II", 2, 1) + b"a\0b" + struct.pack("<II", 3, 0) + b"xyz"
    body = codec.encode_image(["k"], [b"vv"])
    assert body == struct.pack("<BBHIII", codec.IM_BYTES_FIXED, 0, 0, 1, 1, 2) + b"kvv"
    body = codec.encode_image(["k", "l"], ["é", "x"])
    assert body == struct.pack("<BBHIII", codec.IM_STR_NUL, 0, 0, 2, 3, 4) + b"k\0l" + \
        "é\0x".encode()
    body = codec.encode_image(["k"], ["a\0"])
    assert body == struct.pack("<BBHIII", codec.IM_STR, 0, 0, 1, 1, 2) + b"k" + \
        struct.pack("<I", 2) + b"a\0"


@pytest.mark.parametrize(("keys", "values"), [
    ([], []),
    (["a"], [1, 2]),
    (["a", "b"], [1, b"x"]),  # one type per image
    (["a"], [True]),  # bool is not int here
    (["a"], [1 << 63]),
    (["a"], [1.5]),
    (["\udcff"], [1]),  # lone surrogate key: an ordinary record keeps it
    (["a"], ["\ud800"]),
    (["a"], [None]),
])
def test_what_an_image_cannot_hold_is_refused(keys: list[str], values: list[Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        codec.encode_image(keys, values)


def _decodes_or_corrupt(body: bytes) -> None:
    try:
        keys, values = codec.decode_image(body)
    except CorruptFileError:
        return
    assert len(keys) == len(values) >= 1


@pytest.mark.parametrize(("keys", "values"), FORMS)
def test_cut_at_every_offset_or_lengthened_is_corrupt(keys: list[str], values: list[Any]
                                                      ) -> None:
    body = codec.encode_image(keys, values)
    for cut in range(len(body)):
        with pytest.raises(CorruptFileError):
            codec.decode_image(body[:cut])
    for extra in (b"\0", b"x" * 8):
        with pytest.raises(CorruptFileError):
            codec.decode_image(body + extra)


@pytest.mark.parametrize(("keys", "values"), FORMS)
def test_every_flipped_byte_is_corrupt_or_decodes(keys: list[str], values: list[Any]) -> None:
    body = codec.encode_image(keys, values)
    for i in range(len(body)):
        for bit in (0x01, 0x80, 0xFF):
            bad = bytearray(body)
            bad[i] ^= bit
            _decodes_or_corrupt(bytes(bad))
    for value in (0, 0xFF, 0x7F):  # every head field at its extremes
        for i in range(16):
            bad = bytearray(body)
            bad[i] = value
            _decodes_or_corrupt(bytes(bad))


@given(st.binary(max_size=200))
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_garbage_bodies(data: bytes) -> None:
    _decodes_or_corrupt(data)
    try:
        list(codec.iter_ops(codec.KIND_IMAGE, data))
    except CorruptFileError:
        pass


_keys = st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
                 min_size=1, max_size=40, unique=True)
_columns = st.one_of(
    st.lists(st.integers(-(1 << 63), (1 << 63) - 1), min_size=40, max_size=40),
    st.lists(st.binary(max_size=20), min_size=40, max_size=40),
    st.integers(0, 9).flatmap(lambda w: st.lists(st.binary(min_size=w, max_size=w),
                                                 min_size=40, max_size=40)),
    st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=10),
             min_size=40, max_size=40),
)


@given(_keys, _columns)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_round_trip(keys: list[str], column: list[Any]) -> None:
    values = column[: len(keys)]
    body = codec.encode_image(keys, values)
    assert codec.decode_image(body) == (keys, values)
    rec = codec.encode_record(codec.KIND_IMAGE, body, 136)
    (found,) = codec.scan(b"\0" * 136 + rec, 136).records
    assert (found.kind, found.body) == (codec.KIND_IMAGE, body)


def test_image_records_are_not_batch_entries() -> None:
    body = codec.encode_image(["a"], [1])
    with pytest.raises(CorruptFileError):
        list(codec.iter_ops(codec.KIND_BATCH, codec.batch_body([(codec.KIND_IMAGE, body)])))


def test_header_versions() -> None:
    def head(version: int) -> bytes:
        return codec.build_header(flags=0, salt=1, created_ns=2, keycheck=b"", end=128,
                                  version=version)

    assert codec.parse_header(head(1)).version == 1
    assert codec.parse_header(head(2)).version == 2
    assert codec.parse_header(head(3)).version == 3
    assert head(1)[8:10] == b"\x01\x00" and head(2)[8:10] == b"\x02\x00"
    assert head(3)[8:10] == b"\x03\x00"
    newer = bytearray(head(3))
    struct.pack_into("<H", newer, 8, 4)
    with pytest.raises(FormatVersionError):
        codec.parse_header(bytes(newer))
    with pytest.raises(ValueError):
        head(4)


# --- files ---------------------------------------------------------------------------------


def mixed(i: int) -> Any:
    """A value of every kind an image takes or leaves to ordinary records."""
    return (i, b"b" * (i % 5), b"w" * 8, f"s{i}", 1.5 * i, None, [i], 1 << 70, True,
            "a\0b", "\ud800")[i % 11]


def fill(kv: KV, n: int) -> dict[str, Any]:
    model = {}
    for i in range(n):
        key = f"key{i:07d}" if i % 97 else f"odd\0{i}" if i % 2 else f"sur\udcff{i}"
        kv[key] = model[key] = mixed(i)
    return model


def test_compaction_writes_images_and_version_3(tmp_path: Path) -> None:
    path = tmp_path / "s.kv"
    with KV(path) as kv:
        model = fill(kv, 3000)
        kv.set("ttl", 1, ttl=3600)
        kv.compact()
        assert dict(kv.items()) == {**model, "ttl": 1}
    assert codec.parse_header(path.read_bytes()).version == codec.VERSION_PART
    kinds = {type(v) for r in image_records(path) for v in codec.decode_image(r.body)[1]}
    assert kinds == {int, bytes, str}
    with KV(path) as kv:
        assert dict(kv.items()) == {**model, "ttl": 1}
        assert kv.statistics().keys == len(model) + 1
    report = KV.check(path)
    assert report.ok and report.keys == len(model) + 1 and report.version == 3


def test_a_store_without_images_stays_version_1(tmp_path: Path) -> None:
    path = tmp_path / "f.kv"
    with KV(path) as kv:
        for i in range(100):
            kv[f"k{i}"] = i + 0.5
        kv.compact()
    assert codec.parse_header(path.read_bytes()).version == codec.VERSION_PLAIN
    assert not image_records(path)
    with KV(path) as kv:
        assert kv["k3"] == 3.5


def test_version_1_files_open_and_compact_to_version_3(tmp_path: Path) -> None:
    path = tmp_path / "old.kv"
    with KV(path) as kv:  # appended records only: a version 1 file, as older mmapkit wrote
        for i in range(500):
            kv[f"k{i}"] = i
    assert codec.parse_header(path.read_bytes()).version == 1
    with KV(path) as kv:
        assert len(kv) == 500
        kv.compact()
        kv["after"] = 1  # appended to the version 3 file as an ordinary record
    assert codec.parse_header(path.read_bytes()).version == 3
    with KV(path) as kv:
        assert len(kv) == 501 and kv["k499"] == 499


def test_chunks_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "c.kv"
    n = codec.IMAGE_KEYS + 1000
    with KV(path) as kv:
        for i in range(n):
            kv[f"{i}"] = i
        for i in range(200):
            kv[f"big{i}"] = bytes([i]) * 50_000  # 10 MB of bytes values: cut by size
        kv.compact()
    recs = image_records(path)
    counts = [struct.unpack_from("<I", r.body, 4)[0] for r in recs]
    assert max(counts) <= codec.IMAGE_KEYS and sum(counts) == n + 200
    assert max(len(r.body) for r in recs) <= codec.IMAGE_BYTES + 50_000 + 200
    assert len(recs) >= 2 + 10 * 1000 * 1000 // codec.IMAGE_BYTES
    with KV(path) as kv:
        assert len(kv) == n + 200 and kv["big7"] == b"\x07" * 50_000


def test_the_fast_loader_and_the_careful_replay_agree(tmp_path: Path) -> None:
    """An image file with records appended after the images (overrides, deletes, a
    batch): _load.read() (replay_range, images in place) gives the careful path's index,
    operation count and ttl flag, and the model."""
    path = tmp_path / "s.kv"
    with KV(path) as kv:
        model = fill(kv, 5000)
        kv.compact()
        for i in range(0, 5000, 7):
            key = f"key{i:07d}"
            if i % 2:
                kv.pop(key, None)
                model.pop(key, None)
            else:
                kv[key] = model[key] = f"over{i}"
        with kv.batch():
            kv["key0000001"] = model["key0000001"] = b"batched"
            del kv["key0000002"]
            del model["key0000002"]
        kv.set("t", 9, ttl=3600)
    data = memoryview(path.read_bytes())
    hdr = codec.parse_header(data)
    fast = _load.read(data, hdr, committed_only=True, cipher=None, ser=None)
    assert _load.replay_range(data, codec.DATA_START, hdr.end, {}, None) is not None
    index: dict[str, Any] = {}
    nops, ttl = 0, False
    for rec in _load.analyse(data, hdr, committed_only=True).records:
        ops, t = _load.replay(rec, index, None, None, None)
        nops, ttl = nops + ops, ttl or t
    assert not fast.bad
    assert (fast.nops, fast.has_ttl) == (nops, ttl) and ttl

    plain = KV._plain  # the index forms compare by content (as a reload does)
    # A version 3 file's image parts are left encoded (kv/_lazy.py): loaded afterwards,
    # in any order, they give the same index (the deletes and overrides after the image
    # stay in force).
    assert fast.lazy is not None
    for part in reversed(range(len(fast.lazy.spans))):
        fast.lazy.load(part, fast.mapping)
    assert {k: plain(v) for k, v in fast.mapping.items()} == \
        {k: plain(v) for k, v in index.items()}
    eager = _load.read(data, hdr, committed_only=True, cipher=None, ser=None, lazy_ok=False)
    assert eager.lazy is None and (eager.nops, eager.has_ttl) == (nops, ttl)
    assert {k: plain(v) for k, v in eager.mapping.items()} == \
        {k: plain(v) for k, v in index.items()}
    with KV(path) as kv:
        assert dict(kv.items()) == {**model, "t": 9}
    changes: set[str] = set()
    index2: dict[str, Any] = {}
    for rec in _load.analyse(data, hdr, committed_only=True).records[:1]:
        _load.replay(rec, index2, changes, None, None)
    assert changes == set(index2) and index2


def test_backup_writes_images_and_restores(tmp_path: Path) -> None:
    src, dst = tmp_path / "s.kv", tmp_path / "b.kv"
    with KV(src) as kv:
        model = fill(kv, 2000)
        kv.backup(dst)
    assert codec.parse_header(dst.read_bytes()).version == 3 and image_records(dst)
    assert KV.check(dst).ok
    KV.restore(dst, tmp_path / "r.kv")
    with KV(tmp_path / "r.kv") as kv:
        assert dict(kv.items()) == model


def test_an_encrypted_store_writes_no_images(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    path = tmp_path / "e.kv"
    key = b"k" * 32
    with KV(path, key=key) as kv:
        for i in range(300):
            kv[f"k{i}"] = i
        kv.compact()
    assert not image_records(path)
    assert codec.parse_header(path.read_bytes()).version == 1
    with KV(path, key=key) as kv:
        assert kv["k299"] == 299
        kv.rekey(None)  # decrypted by a compaction: now images
    assert image_records(path)
    with KV(path) as kv:
        assert len(kv) == 300


# --- damage ---------------------------------------------------------------------------------


def _three_chunks(path: Path) -> tuple[dict[str, int], list[codec.Record]]:
    n = 2 * codec.IMAGE_KEYS + 5000
    with KV(path) as kv:
        for i in range(n):
            kv[f"k{i}"] = i
        kv["f"] = 0.5
        kv.compact()
    recs = image_records(path)
    assert len(recs) >= 3  # (cut by part too: format version 3)
    return {f"k{i}": i for i in range(n)} | {"f": 0.5}, recs


@pytest.mark.parametrize("where", ["body", "length", "crc", "magic"])
def test_a_damaged_chunk_costs_its_own_keys(tmp_path: Path, where: str) -> None:
    path = tmp_path / "d.kv"
    model, recs = _three_chunks(path)
    victim = recs[1]
    lost = set(codec.decode_image(victim.body)[0])
    raw = bytearray(path.read_bytes())
    at = {"body": victim.offset + 12 + len(victim.body) // 2, "length": victim.offset + 6,
          "crc": victim.offset + 9, "magic": victim.offset}[where]
    raw[at] ^= 0x5A
    path.write_bytes(bytes(raw))
    report = KV.check(path)
    assert not report.ok and report.keys == len(model) - len(lost)
    assert report.damaged == ((victim.offset, victim.offset + victim.size),)
    with pytest.raises(CorruptFileError):
        KV(path, recover=False)
    assert path.read_bytes() == bytes(raw)
    with pytest.warns(RuntimeWarning, match="damaged"):
        kv = KV(path, recover=True)
    with kv:
        assert dict(kv.items()) == {k: v for k, v in model.items() if k not in lost}
    assert (tmp_path / "d.kv.damaged").read_bytes() == bytes(raw)  # nothing silently wiped
    assert KV.check(path).ok


def test_a_verified_image_that_does_not_decode_is_reported(tmp_path: Path) -> None:
    """A body whose checksum verifies but whose columns are garbage (a bug, a hostile
    file): that record is reported, the rest loads."""
    path = tmp_path / "g.kv"
    model, recs = _three_chunks(path)
    victim = recs[0]
    body = bytearray(victim.body)
    struct.pack_into("<I", body, 4, 7)  # a count the columns do not hold
    raw = bytearray(path.read_bytes())
    raw[victim.offset : victim.offset + victim.size] = codec.encode_record(
        codec.KIND_IMAGE, bytes(body), victim.offset)
    path.write_bytes(bytes(raw))
    data = memoryview(bytes(raw))
    # (lazy_ok=False: decoded now; a lazy open finds it when the part is first used,
    # tests/test_kv_lazy.py)
    loaded = _load.read(data, codec.parse_header(data), committed_only=True, cipher=None,
                        ser=None, lazy_ok=False)
    assert loaded.bad == [(victim.offset, victim.offset + victim.size)]
    lost = set(codec.decode_image(victim.body)[0])
    assert loaded.mapping == {k: v for k, v in model.items() if k not in lost}
    report = KV.check(path)
    assert not report.ok and report.damaged == ((victim.offset, victim.offset + victim.size),)
    assert any("image record does not decode" in p for p in report.problems)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with KV(path, recover=True) as kv:
            assert len(kv) == len(model) - len(lost)


def test_an_encrypted_flag_on_an_image_is_damage(tmp_path: Path) -> None:
    body = codec.encode_image(["a"], [1])
    rec = codec.Record(128, codec.KIND_IMAGE, codec.REC_FLAG_ENCRYPTED, body)
    with pytest.raises(CorruptFileError):
        _load.replay(rec, {}, None, None, None)


# --- crash ----------------------------------------------------------------------------------

_KEYS = 6000


def _op(i: int) -> tuple[str, Any]:
    return f"k{(i * 7919) % _KEYS:05d}", (i, b"%06d" % i, f"v{i}", b"x" * (i % 9))[i % 4]


def _writer(path: Path, start: int, ack: int) -> None:
    try:
        with KV(path, capacity=1 << 16) as kv:
            i = start
            while True:
                key, value = _op(i)
                kv[key] = value
                if i % 40 == 0:
                    kv.compact()  # most of the writer's time: kills land inside
                os.write(ack, struct.pack("<Q", i))
                i += 1
    except BaseException:  # pragma: no cover - only reached on a bug; the parent sees it
        import traceback

        traceback.print_exc()
    finally:
        os._exit(1)


def test_kill9_during_compactions_that_write_images(tmp_path: Path) -> None:
    image_crash_rounds(tmp_path / "crash.kv", 40, seed=16)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_kill9_during_compactions_that_write_images_soak(tmp_path: Path) -> None:
    image_crash_rounds(tmp_path / "soak.kv", 500, seed=17)


def image_crash_rounds(path: Path, rounds: int, seed: int) -> None:
    """A writer overwriting 6000 keys (int, bytes of one width, str, bytes of varying
    width) and compacting every 40 writes, SIGKILLed at random moments; after each kill
    the store verifies and holds every acknowledged write."""
    with KV(path) as kv:  # every key present from the start: images of thousands of keys
        for i in range(_KEYS):
            key, value = _op(i)
            kv[key] = value
        model = dict(kv.items())
    rng = random.Random(seed)
    done = _KEYS
    mid_compaction = 0
    for _ in range(rounds):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _writer(path, done, w)
        os.close(w)
        time.sleep(rng.uniform(0.005, 0.08))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status), "the writer died on its own: it hit an error"
        data = b""
        while chunk := os.read(r, 1 << 16):
            data += chunk
        os.close(r)
        for o in range(0, len(data) - 7, 8):
            i = struct.unpack_from("<Q", data, o)[0]
            assert i == done
            key, value = _op(i)
            model[key] = value
            done += 1
        mid_compaction += path.with_name(path.name + ".compact~").exists()
        report = KV.check(path)
        assert report.ok, report
        with KV(path) as kv:
            state = dict(kv.items())
        if state != model:  # the operation in flight may have landed
            key, value = _op(done)
            model[key] = value
            done += 1
            assert state == model, "lost acknowledged writes"
    assert codec.parse_header(path.read_bytes()).version == 3 and image_records(path)
    assert mid_compaction > 0  # some kills landed while a compaction was writing its file
    assert KV.check(path).ok


# --- multiprocess and CLI -----------------------------------------------------------------------


def test_a_process_follows_another_ones_compaction_into_images(tmp_path: Path) -> None:
    from conftest import run_py

    path = tmp_path / "m.kv"
    with KV(path, multiprocess=True) as kv:
        for i in range(20_000):
            kv[f"k{i}"] = i
        assert kv["k5"] == 5
        out = run_py("""
            import sys
            from mmapkit.kv import KV
            with KV(sys.argv[1], multiprocess=True) as kv:
                for i in range(0, 20_000, 2):
                    kv[f"k{i}"] = b"e%d" % i
                kv.compact()
                kv["after"] = "x"
            print("ok")
            """, str(path))
        assert out.stdout.strip() == "ok", out.stderr
        assert image_records(path)
        assert kv["after"] == "x"  # reloaded through the image file
        assert kv["k4"] == b"e4" and kv["k5"] == 5 and len(kv) == 20_001
    assert KV.check(path).ok


def test_cli_reads_image_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    f = tmp_path / "c.kv"
    with KV(f) as kv:
        for i in range(100):
            kv[f"k{i}"] = i if i % 2 else b"b%d" % i
        kv["s"] = "text"
        kv.compact()
    assert image_records(f)
    assert cli.main(["kv", str(f), "check"]) == 0
    assert "ok" in capsys.readouterr().out
    assert cli.main(["kv", str(f), "dump", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["items"]["k3"] == 3 and doc["items"]["s"] == "text" and len(doc["items"]) == 101
    assert cli.main(["kv", str(f), "get", "k4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"$bytes": "YjQ="}
    assert cli.main(["inspect", str(f)]) == 0
