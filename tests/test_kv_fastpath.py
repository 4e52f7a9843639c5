"""The KV's hand-inlined write paths spell the record format again (for speed): every byte
they write must equal the codec's encoding.  Each value kind at the edges of the
precomputed tables, through each path: the single-process hot path, the multiprocess
path (lock taken inline, inside lock(), and update_with()'s own write), the general set(),
and a compaction image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mmapkit.kv import KV, codec

VALUES: list[Any] = [
    0, 1, -1, (1 << 63) - 1, -(1 << 63), 1 << 63, -(1 << 64),  # past 64 bits: general path
    0.0, -2.5, float("inf"), True, False, None,
    b"", b"x", b"y" * 255, b"z" * 256, b"w" * 257, b"v" * 1024, b"u" * 1025, b"t" * 5000,
    "", "a", "é" * 127, "é" * 128, "b" * 255, "c" * 256, "d" * 1025, "\ud800 lone",
    [1, "two", b"three"], {"k": (1, 2)},
]
KEYS = ["k", "ключ", "K" * 255, "L" * 1024, "\udcff key"]


def records(path: Path) -> list[tuple[int, bytes]]:
    """(offset, raw bytes) of every committed record of the file."""
    data = path.read_bytes()
    hdr = codec.parse_header(data)
    found = codec.scan(data, codec.DATA_START, hdr.end)
    assert not found.damaged and not found.tail
    return [(r.offset, data[r.offset : r.offset + r.size]) for r in found.records]


def expected(key: str, value: Any, offset: int) -> bytes:
    body = codec.encode_key(key) + codec.encode_value(value)
    return codec.encode_record(codec.KIND_SET, body, offset)


@pytest.mark.parametrize("mode", ["single", "multiprocess", "multiprocess-locked",
                                  "multiprocess-update-with", "set"])
def test_every_write_path_writes_the_codecs_bytes(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "fp.kv"
    written: list[tuple[str, Any]] = []
    with KV(path, multiprocess=mode.startswith("multiprocess"), capacity=1 << 20) as kv:
        for key in KEYS:
            for value in VALUES:
                if mode == "set":
                    kv.set(key, value)
                elif mode == "multiprocess-locked":
                    with kv.lock():
                        kv[key] = value
                elif mode == "multiprocess-update-with":
                    assert kv.update_with(key, lambda old, v=value: v) is value
                else:
                    kv[key] = value
                written.append((key, value))
        assert kv.statistics().compactions == 0
    recs = records(path)
    assert len(recs) == len(written)
    for (offset, raw), (key, value) in zip(recs, written, strict=True):
        assert raw == expected(key, value, offset), (mode, key, value)


def _imageable(key: str, value: Any) -> bool:
    """Whether a compaction puts ``key`` into an image record (plain int64/bytes/str values,
    strict UTF-8 keys and str values); everything else stays an ordinary set record."""
    try:
        key.encode()
        if type(value) is str:
            value.encode()
    except UnicodeEncodeError:
        return False
    return type(value) in (bytes, str) or (type(value) is int and -(1 << 63) <= value < 1 << 63)


def test_the_compaction_image_writes_the_codecs_bytes(tmp_path: Path) -> None:
    """A compacted file is image records (each exactly the codec's encode_image of the keys
    it holds, framed by encode_record) and then ordinary set records for every other key;
    every live key is in exactly one of them."""
    path = tmp_path / "img.kv"
    with KV(path, capacity=1 << 20) as kv:
        for i, value in enumerate(VALUES):
            kv[KEYS[i % len(KEYS)][:1000] + str(i)] = value
        kv.compact()
        live = {k: kv[k] for k in kv}
    data = path.read_bytes()
    assert codec.parse_header(data).version == codec.VERSION_PART
    seen: list[str] = []
    ordinary = False
    for offset, raw in records(path):
        kind = raw[2]
        if kind == codec.KIND_IMAGE:
            assert not ordinary, "image records come first"
            keys, values = codec.decode_image(raw[12 : 12 + int.from_bytes(raw[4:8], "little")])
            assert values == [live[k] for k in keys]
            assert {type(v) for v in values} in ({int}, {bytes}, {str})
            assert all(_imageable(k, v) for k, v in zip(keys, values, strict=True))
            body = codec.encode_image(keys, values)
            assert raw == codec.encode_record(codec.KIND_IMAGE, body, offset)
            seen += keys
        else:
            ordinary = True
            key = codec.iter_ops(kind, raw[12 : 12 + int.from_bytes(raw[4:8], "little")])
            (_, k, _, _), = key
            assert not _imageable(k, live[k])
            assert raw == expected(k, live[k], offset), (k, live[k])
            seen.append(k)
    assert sorted(seen) == sorted(live) and len(seen) == len(set(seen))
    assert any(not _imageable(k, v) for k, v in live.items())


def test_the_load_fast_path_gives_the_careful_paths_index(tmp_path: Path) -> None:
    """_load.read() decodes plain sets inline (replay_range); the careful path (analyse()
    + replay() per record) must give the same index, operation count and ttl flag."""
    from mmapkit.kv import _load

    path = tmp_path / "s.kv"
    with KV(path) as kv:
        for i, key in enumerate(KEYS):
            for value in VALUES:
                kv[key] = value
            kv.set(f"ttl{i}", i, ttl=3600)
        with kv.batch():
            kv["in-batch"] = b"b"
            del kv["k"]
        kv["after-clear?"] = 1
    data = memoryview(path.read_bytes())
    hdr = codec.parse_header(data)
    fast = _load.read(data, hdr, committed_only=True, cipher=None, ser=None)
    analysis = _load.analyse(data, hdr, committed_only=True)
    index: dict[str, Any] = {}
    nops, ttl = 0, False
    for rec in analysis.records:
        ops, t = _load.replay(rec, index, None, None, None)
        nops, ttl = nops + ops, ttl or t
    assert not fast.bad and not analysis.damaged

    plain = KV._plain  # the index forms compare by content (as a reload does)
    assert {k: plain(v) for k, v in fast.mapping.items()} == \
        {k: plain(v) for k, v in index.items()}
    assert (fast.nops, fast.has_ttl) == (nops, ttl) and ttl


def _careful(data: memoryview) -> dict[str, Any]:
    from mmapkit.kv import _load

    hdr = codec.parse_header(data)
    index: dict[str, Any] = {}
    for rec in _load.analyse(data, hdr, committed_only=True).records:
        _load.replay(rec, index, None, None, None)
    return index


@pytest.mark.parametrize("shape", ["ints", "bytes", "str", "surrogate-keys", "broken-runs",
                                   "one-key-ints", "one-key-bytes", "one-key-str",
                                   "one-key-then-another", "one-key-int-or-bytes",
                                   "one-key-surrogate"])
def test_the_bulk_decoder_of_record_runs_gives_the_same_index(tmp_path: Path,
                                                              shape: str) -> None:
    """Runs of one record size are decoded a window at a time (_bulk_sets; runs that set
    one key, as a contended counter writes, by _one_key_sets): the index, the operation
    count and where each run ends must be exactly what one at a time gives."""
    from mmapkit.kv import _load

    path = tmp_path / "runs.kv"
    with KV(path) as kv:
        for i in range(3000):
            key = f"{i % 1700:08d}"
            if shape.startswith("one-key"):
                # one key a run (another key of the same length every 700 records), and
                # values of one record size: an int and a 4-byte bytes value have bodies
                # of one length (tag + 8 bytes), so only the tag tells them apart
                key = "counter" if shape != "one-key-then-another" else f"c{i // 700:06d}"
                if shape == "one-key-surrogate":
                    key = "count\udcff" if i < 2000 else "countx"
                if shape in ("one-key-ints", "one-key-then-another", "one-key-surrogate"):
                    kv[key] = i * 7 - 500
                elif shape == "one-key-bytes":
                    kv[key] = bytes([i % 256]) * 30
                elif shape == "one-key-str":
                    kv[key] = "é" * 10 if i % 3 else "ab" * 5 + "c" * 10
                else:
                    kv[key] = i if (i // 100) % 2 else i.to_bytes(4, "little")
            elif shape == "ints":
                kv[key] = i - 1500
            elif shape == "bytes":
                kv[key] = bytes([i % 256]) * 40
            elif shape == "str":
                kv[key] = "é" * 10 if i % 2 else "ab" * 5 + "c" * 10  # same byte length
            elif shape == "surrogate-keys":
                kv[key if i % 97 else key[:-1] + "\udcff"] = i
            else:  # runs of 5..200 records of one size, then another size
                kv[key] = i if (i // (5 + i % 200)) % 2 else b"x" * (i % 3)
    data = memoryview(path.read_bytes())
    hdr = codec.parse_header(data)
    fast = _load.read(data, hdr, committed_only=True, cipher=None, ser=None)
    assert fast.nops == 3000 and not fast.bad
    assert fast.mapping == _careful(data)
    if shape.startswith("one-key"):  # (a replay of the whole range: one window a run)
        index: dict[str, Any] = {}
        assert _load.replay_range(data, codec.DATA_START, hdr.end, index, None) == \
            (3000, False)
        assert index == _careful(data)


@pytest.mark.parametrize("keys", ["distinct", "one"])
def test_a_damaged_record_inside_a_run_is_found(tmp_path: Path, keys: str) -> None:
    """A flipped byte in the middle of a long run (of distinct keys, or of one key): the
    bulk decoder must not apply it nor anything after it; the careful path then reports
    exactly that record."""
    from mmapkit.kv import _load

    path = tmp_path / "run.kv"
    with KV(path) as kv:
        for i in range(2000):
            kv[f"{i:08d}" if keys == "distinct" else "counter"] = i
    raw = bytearray(path.read_bytes())
    hdr = codec.parse_header(raw)
    recs = codec.scan(raw, codec.DATA_START, hdr.end).records
    victim = recs[1234]
    raw[victim.offset + 20] ^= 0x40
    index: dict[str, Any] = {}
    assert _load.replay_range(memoryview(bytes(raw)), codec.DATA_START, hdr.end, index,
                              None) is None  # the careful path takes over
    loaded = _load.read(memoryview(bytes(raw)), hdr, committed_only=True, cipher=None, ser=None)
    assert loaded.bad == [(victim.offset, victim.offset + victim.size)]
    if keys == "distinct":
        assert len(loaded.mapping) == 1999 and f"{1234:08d}" not in loaded.mapping
    else:  # the last good record wins; the damaged one is never applied
        assert loaded.mapping == {"counter": 1999}
