"""KV single-process behaviour: the mapping API, types, ttl, batches, compaction, damage."""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from mmapkit.errors import (
    ClosedError,
    CorruptFileError,
    DecryptionError,
    ForeignFileError,
    FormatVersionError,
    ModeConflictError,
    ReadOnlyError,
)
from mmapkit.kv import KV, KVStatistics, codec
from mmapkit.kv import store as kv_store


@pytest.fixture
def eager_compaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compact as soon as a file is full and at most a third live, however young it is
    (without it a file filled within 250 ms of being made doubles instead: see
    test_a_young_file_doubles_instead_of_compacting)."""
    monkeypatch.setattr(kv_store, "_CHURN_NS", 0)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.kv"


def test_mapping_api(path: Path) -> None:
    with KV(path) as kv:
        kv["a"] = 1
        kv.update({"b": 2, "c": 3}, d=4)
        assert kv["a"] == 1 and kv.get("zz") is None and kv.get("zz", 5) == 5
        assert "b" in kv and "zz" not in kv and len(kv) == 4
        assert sorted(kv) == ["a", "b", "c", "d"] and sorted(kv.keys()) == ["a", "b", "c", "d"]
        assert dict(kv.items()) == {"a": 1, "b": 2, "c": 3, "d": 4}
        del kv["a"]
        with pytest.raises(KeyError):
            del kv["a"]
        with pytest.raises(KeyError):
            kv["a"]
        assert kv.pop("b") == 2 and kv.setdefault("e", 9) == 9 and kv["e"] == 9
        kv.clear()
        assert len(kv) == 0 and list(kv) == []
        kv["again"] = "yes"
    with KV(path) as kv:
        assert dict(kv) == {"again": "yes"}


def test_values_keep_their_type_across_reopen(path: Path) -> None:
    values = {"none": None, "t": True, "f": False, "i": -5, "big": 3**100, "fl": 2.5,
              "s": "snow ☃", "b": b"\0\1", "l": [1, [2, (3,)]], "t2": (1, "x"),
              "d": {"k": {1: b"v"}}}
    with KV(path) as kv:
        kv.update(values)
        for k, v in values.items():
            assert kv[k] == v and type(kv[k]) is type(v)
    with KV(path) as kv:
        for k, v in values.items():
            assert kv[k] == v and type(kv[k]) is type(v)


def test_container_values_are_copies(path: Path) -> None:
    with KV(path) as kv:
        kv["l"] = [1]
        kv["l"].append(2)
        assert kv["l"] == [1]


def test_bad_keys_and_values(path: Path) -> None:
    with KV(path) as kv:
        with pytest.raises(TypeError):
            kv[1] = 2  # type: ignore[index]
        with pytest.raises(ValueError, match="limit"):
            kv["x" * (KV.KEY_MAX + 1)] = 1
        with pytest.raises(TypeError, match="serializer"):
            kv["s"] = {1, 2}
        with pytest.raises(ValueError):
            kv.set("t", 1, ttl=0)
        assert len(kv) == 0


def test_serializer(path: Path) -> None:
    with KV(path, serializer=pickle) as kv:
        kv["s"] = {1, 2}
    with KV(path, serializer=pickle) as kv:
        assert kv["s"] == {1, 2}
    with KV(path) as kv, pytest.raises(CorruptFileError, match="serializer"):
        kv["s"]


def test_ttl(path: Path) -> None:
    with KV(path) as kv:
        kv.set("short", "x", ttl=0.2)
        kv.set("long", [1], ttl=100)
        assert kv["short"] == "x" and kv["long"] == [1] and len(kv) == 2
    time.sleep(0.3)
    with KV(path) as kv:
        assert "short" not in kv and kv.get("short") is None and len(kv) == 1
        with pytest.raises(KeyError):
            kv["short"]
        kv.compact()
        assert kv.statistics().keys == 1
    assert KV.check(path).keys == 1


def test_batch_all_or_nothing(path: Path) -> None:
    with KV(path) as kv:
        kv["keep"] = 1
        with pytest.raises(RuntimeError):
            with kv.batch():
                kv["keep"] = 2
                kv["new"] = 3
                del kv["keep"]
                kv.clear()
                kv["after"] = 1
                raise RuntimeError
        assert dict(kv) == {"keep": 1}
        with kv.batch():
            kv["a"] = 1
            kv["b"] = 2
            assert kv["a"] == 1  # reads see the pending writes
            del kv["keep"]
        assert kv.statistics().sequence == 4  # operations
    with KV(path) as kv:
        assert dict(kv) == {"a": 1, "b": 2}
    assert KV.check(path).records == 2  # one record for "keep", one for the whole batch


def test_closed(path: Path) -> None:
    kv = KV(path)
    kv.close()
    kv.close()
    with pytest.raises(ClosedError):
        kv["a"]
    with pytest.raises(ClosedError):
        kv["a"] = 1
    with pytest.raises(ClosedError):
        len(kv)


def test_two_single_process_opens_conflict(path: Path) -> None:
    with KV(path):
        with pytest.raises(ModeConflictError, match="single-process"):
            KV(path)
        with pytest.raises(ModeConflictError):
            KV(path, multiprocess=True)
    with KV(path, multiprocess=True):
        with pytest.raises(ModeConflictError, match="multiprocess"):
            KV(path)


def test_readonly(path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        KV(path, readonly=True)
    with KV(path) as kv:
        kv["a"] = 1
    with KV(path, readonly=True) as kv:
        assert kv["a"] == 1
        with pytest.raises(ReadOnlyError):
            kv["a"] = 2


@pytest.mark.usefixtures("eager_compaction")
def test_growth_and_compaction_keep_everything(path: Path) -> None:
    with KV(path, capacity=8192) as kv:
        for i in range(3000):
            kv[f"k{i % 150}"] = b"x" * (i % 97)
        stats = kv.statistics()
        assert isinstance(stats, KVStatistics) and stats.compactions > 0
    with KV(path) as kv:
        assert len(kv) == 150
        for j in range(150):
            last = max(i for i in range(3000) if i % 150 == j)
            assert kv[f"k{j}"] == b"x" * (last % 97)
    assert KV.check(path).ok


def test_no_bloat_after_overwrites_and_deletes(path: Path) -> None:
    with KV(path, capacity=4096) as kv:
        for rnd in range(20):
            for i in range(500):
                kv[f"key{i:05d}"] = os.urandom(100) if rnd < 19 else b"v" * 100
        for i in range(450):
            del kv[f"key{i:05d}"]
        kv.compact()
        st = kv.statistics()
        page = os.sysconf("SC_PAGE_SIZE")
        assert st.file_bytes <= -(-2 * st.live_bytes // page) * page + page
        assert os.path.getsize(path) == st.file_bytes
        assert len(kv) == 50
    assert KV.check(path).ok


@pytest.mark.usefixtures("eager_compaction")
def test_steady_overwrites_keep_the_file_within_three_times_live(path: Path) -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    with KV(path, capacity=4096) as kv:
        for rnd in range(30):
            for i in range(300):
                kv[f"key{i:05d}"] = bytes([rnd]) * 60
            st = kv.statistics()
            assert st.file_bytes <= 3 * st.live_bytes + 2 * page
        assert st.compactions > 5
        kv.compact()
        st = kv.statistics()
        assert st.file_bytes <= -(-2 * st.live_bytes // page) * page + page
    with KV(path) as kv:
        assert dict(kv) == {f"key{i:05d}": bytes([29]) * 60 for i in range(300)}


def test_a_young_file_doubles_instead_of_compacting(path: Path) -> None:
    """A compaction fsyncs a new file: a store overwritten at full speed doubles its file
    (up to 4 MiB) while the file is younger than 250 ms, then compacts again."""
    page = os.sysconf("SC_PAGE_SIZE")
    with KV(path, capacity=4096) as kv:
        t0 = time.monotonic()
        for i in range(2000):
            kv["n"] = i
        if time.monotonic() - t0 < 0.2:  # (a very slow machine: the window passed)
            st = kv.statistics()
            assert st.compactions == 0 and st.file_bytes >= 2000 * 24
        time.sleep(0.3)
        for i in range(200_000):
            kv["n"] = i
        st = kv.statistics()
        assert st.compactions > 0 and st.file_bytes <= kv_store._CHURN_MAX + page
        assert kv["n"] == 199_999


def test_a_first_write_larger_than_the_file_grows_it(path: Path) -> None:
    with KV(path, capacity=4096) as kv:
        kv["big"] = b"x" * 100_000
        st = kv.statistics()
        assert st.compactions == 0 and st.file_bytes >= 100_000
    with KV(path) as kv:
        assert kv["big"] == b"x" * 100_000


def test_plain_writes_at_their_limits(path: Path) -> None:
    # The inline write path hands anything it does not encode itself to set().
    values = {"lo": -(1 << 63), "hi": (1 << 63) - 1, "past": 1 << 63, "big": -(3**90),
              "t": True, "f": False, "fl": -0.0, "s": "", "b": b"", "n": None,
              "lone \ud800": b"x", "k" * KV.KEY_MAX: 1, "sur": "\udcff",
              # record bodies of 256 and 257 bytes (written by a cached Struct or in two
              # steps), and a long one
              "b256": b"a" * 245, "b257": b"b" * 246, "long": "é" * 5000,
              # values on either side of the tag-and-length table (encoded str bytes count)
              "v255": b"c" * 255, "v256": b"d" * 256, "s255": "e" * 255, "s256": "é" * 128}
    with KV(path, capacity=4096) as kv:
        for k, v in values.items():
            kv[k] = v
        for k, v in values.items():
            assert kv[k] == v and type(kv[k]) is type(v)
        with pytest.raises(ValueError, match="limit"):
            kv["é" * KV.KEY_MAX] = 1
        with pytest.raises(TypeError):
            kv[b"k"] = 1  # type: ignore[index]
    with KV(path) as kv:
        assert {k: (type(v), v) for k, v in kv.items()} == \
            {k: (type(v), v) for k, v in values.items()}


@pytest.mark.usefixtures("eager_compaction")
def test_compaction_writes_every_kind_of_entry(path: Path) -> None:
    values = {"i": 7, "big": 3**80, "b": b"\0" * 50, "s": "snow ☃", "fl": 1.5, "t": True,
              "n": None, "l": [1, (2, b"3")], "d": {"a": {"b": None}}, "\ud800k": b"lone",
              "\udcffi": 1 << 64, "long": b"L" * 3000, "long s": "é" * 700,
              "v255": b"c" * 255, "v256": b"d" * 256, "s255": "e" * 255, "s256": "é" * 128}
    with KV(path, capacity=4096) as kv:
        kv.update(values)
        kv.set("ttl", [1, 2], ttl=100)
        kv.set("ttl \ud800", 5, ttl=100)
        kv.set("gone", b"x", ttl=0.05)
        kv.set("gone \ud800", 5, ttl=0.05)
        time.sleep(0.1)
        kv.compact()
        for rnd in range(40):  # automatic compactions too
            for i in range(50):
                kv[f"churn{i}"] = rnd
        assert kv.statistics().compactions > 2
        expect = {**values, "ttl": [1, 2], "ttl \ud800": 5,
                  **{f"churn{i}": 39 for i in range(50)}}
        assert dict(kv) == expect
    with KV(path) as kv:
        assert dict(kv) == expect
    report = KV.check(path)
    assert report.ok and report.keys == len(expect)


def test_empty_file_becomes_a_store(tmp_path: Path) -> None:
    empty = tmp_path / "empty.kv"
    empty.touch()
    with pytest.raises(CorruptFileError):
        KV(empty, readonly=True)
    with KV(empty) as kv:
        kv["a"] = 1
    with KV(empty) as kv:
        assert kv["a"] == 1
    short = tmp_path / "short.kv"
    short.write_bytes(codec.MAGIC + b"\0" * 10)
    with pytest.raises(CorruptFileError, match="truncated"):
        KV(short)
    assert short.stat().st_size == 18  # never wiped


def test_foreign_and_newer_files(tmp_path: Path) -> None:
    foreign = tmp_path / "f"
    foreign.write_bytes(b"hello world" * 50)
    with pytest.raises(ForeignFileError):
        KV(foreign)
    with pytest.raises(ForeignFileError):
        KV.check(foreign)
    newer = tmp_path / "n"
    with KV(newer) as kv:
        kv["a"] = 1
    data = bytearray(newer.read_bytes())
    data[8] = 9
    newer.write_bytes(bytes(data))
    with pytest.raises(FormatVersionError, match="Upgrade"):
        KV(newer)


def _record_offsets(path: Path) -> list[tuple[int, int]]:
    data = path.read_bytes()
    hdr = codec.parse_header(data)
    return [(r.offset, r.size) for r in codec.scan(data, codec.DATA_START, hdr.end).records]


def test_flipped_byte_costs_one_record_and_is_reported(path: Path) -> None:
    with KV(path) as kv:
        for i in range(20):
            kv[f"k{i}"] = i
    offsets = _record_offsets(path)
    off, _ = offsets[7]
    data = bytearray(path.read_bytes())
    data[off + 14] ^= 0x10
    path.write_bytes(bytes(data))
    report = KV.check(path)
    assert not report.ok and report.damaged and report.records == 19
    with pytest.raises(CorruptFileError) as info:
        KV(path, recover=False)
    assert info.value.salvaged == 19 and info.value.lost == 1
    with pytest.warns(RuntimeWarning, match="damaged"):
        kv = KV(path)
    with kv:
        assert "k7" not in kv and len(kv) == 19 and kv["k19"] == 19
        kv["new"] = 1
    assert os.path.exists(str(path) + ".damaged")  # the original is kept, never wiped
    report = KV.repair(path)
    assert report.ok and report.keys == 20


def test_truncated_tail_costs_only_the_cut_records(path: Path) -> None:
    with KV(path) as kv:
        for i in range(30):
            kv[f"k{i}"] = "v" * 10
    offsets = _record_offsets(path)
    cut = offsets[25][0] + 5
    with open(path, "r+b") as f:
        f.truncate(cut)
    report = KV.check(path)
    assert not report.ok and report.records == 25
    with pytest.warns(RuntimeWarning, match="cut"):
        kv = KV(path)
    with kv:
        assert len(kv) == 25 and kv["k24"] == "v" * 10
        kv["more"] = 1  # appending after a cut works
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with KV(path) as kv:
            assert len(kv) == 26


def test_torn_tail_is_not_damage(path: Path) -> None:
    with KV(path) as kv:
        kv["a"] = 1
        end = kv.statistics().committed_bytes
    data = bytearray(path.read_bytes())
    data[end : end + 20] = b"\x56\x4b\x01\x00" + b"\xaa" * 16  # a write cut before its commit
    path.write_bytes(bytes(data))
    report = KV.check(path)
    assert report.ok and report.uncommitted_tail_bytes > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with KV(path) as kv:
            kv["b"] = 2
    with KV(path) as kv:
        assert dict(kv) == {"a": 1, "b": 2}
    assert KV.check(path).ok


def test_header_damage_is_salvaged(path: Path) -> None:
    with KV(path) as kv:
        for i in range(10):
            kv[f"k{i}"] = i
    data = bytearray(path.read_bytes())
    data[64:72] = b"\xff" * 8  # the commit word
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning):
        kv = KV(path)
    with kv:
        assert len(kv) == 10


def test_encryption(path: Path) -> None:
    key = b"k" * 32
    with KV(path, key=key) as kv:
        kv["secret"] = "plans"
        kv["n"] = [1, 2]
    assert b"plans" not in path.read_bytes()
    with KV(path, key=key) as kv:
        assert kv["secret"] == "plans" and kv["n"] == [1, 2]
    with pytest.raises(DecryptionError, match="wrong key"):
        KV(path, key=b"x" * 32)
    with pytest.raises(DecryptionError, match="encrypted"):
        KV(path)
    assert KV.check(path).ok and KV.check(path, key=key).ok
    with KV(path, key=key) as kv:
        kv.rekey(b"n" * 16)
    with KV(path, key=b"n" * 16) as kv:
        assert kv["secret"] == "plans"
        kv.rekey(None)
    with KV(path) as kv:
        assert kv["secret"] == "plans"
        kv.rekey(key)
    with KV(path, key=key) as kv:
        assert kv["n"] == [1, 2]
    with pytest.raises(ValueError, match="16, 24 or 32"):
        KV(path, key=b"short")


def test_encrypted_damage_never_gives_garbage(path: Path) -> None:
    key = b"q" * 16
    with KV(path, key=key) as kv:
        for i in range(5):
            kv[f"k{i}"] = f"value{i}"
    off, _ = _record_offsets(path)[2]
    data = bytearray(path.read_bytes())
    data[off + 20] ^= 1
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning):
        kv = KV(path, key=key)
    with kv:
        assert dict(kv) == {f"k{i}": f"value{i}" for i in (0, 1, 3, 4)}


def test_backup_restore_and_json(path: Path, tmp_path: Path) -> None:
    with KV(path) as kv:
        kv.update({"a": 1, "b": b"\0", "c": (1, 2), "d": {3: 4}, "e": float("inf")})
        kv.backup(tmp_path / "b.kv")
        buf = io.StringIO()
        assert kv.export_json(buf) == 5
        kv["a"] = 2
    assert KV.check(tmp_path / "b.kv").ok
    KV.restore(tmp_path / "b.kv", path)
    with KV(path) as kv:
        assert kv["a"] == 1
        with pytest.raises(ModeConflictError):
            KV.restore(tmp_path / "b.kv", path)
    buf.seek(0)
    with KV(tmp_path / "j.kv") as kv:
        assert kv.import_json(buf) == 5
        assert kv["b"] == b"\0" and kv["c"] == (1, 2) and kv["d"] == {3: 4}


def test_sync_and_statistics(path: Path) -> None:
    with KV(path) as kv:
        kv["a"] = 1
        kv.sync()
        st = kv.statistics()
        assert st.keys == 1 and st.sequence == 1 and st.file_bytes == os.path.getsize(path)
        kv.compact()
        kv["b"] = 2
        assert kv.statistics().sequence == 2
        with pytest.raises(AttributeError):
            st.keys = 2  # type: ignore[misc]


def test_threads_share_one_store(path: Path) -> None:
    import threading

    with KV(path, capacity=4096) as kv:
        def work(t: int) -> None:
            for i in range(500):
                kv[f"t{t}-{i}"] = i
                if i % 50 == 0:
                    with kv.batch():
                        kv[f"b{t}"] = i

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert len(kv) == 4 * 501
    with KV(path) as kv:
        assert all(kv[f"t{t}-{i}"] == i for t in range(4) for i in range(500))
    assert KV.check(path).ok


_FUZZ_BASE: dict[str, bytes] = {}


def _fuzz_base(tmp: Path) -> bytes:
    if "data" not in _FUZZ_BASE:
        p = tmp / "base.kv"
        with KV(p, key=None) as kv:
            for i in range(40):
                kv[f"k{i}"] = [i, "v" * (i % 7), {"n": i}] if i % 2 else i
            kv.set("ttl", 1, ttl=1000)
            with kv.batch():
                kv["x"] = b"y"
                del kv["k0"]
            end = kv.statistics().committed_bytes
        _FUZZ_BASE["data"] = p.read_bytes()[: end + 64]
    return _FUZZ_BASE["data"]


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mmapkit.errors import MmapkitError  # noqa: E402


@given(flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 1 << 20)))
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzz_damaged_files_never_crash(tmp_path: Path, flips: list[tuple[int, int]],
                                        cut: int | None) -> None:
    data = bytearray(_fuzz_base(tmp_path))
    for where, xor in flips:
        data[where % len(data)] ^= xor
    if cut is not None:
        del data[cut % (len(data) + 1):]
    p = tmp_path / f"fz{abs(hash((tuple(flips), cut)))}.kv"
    p.write_bytes(bytes(data))
    try:
        KV.check(p)
    except MmapkitError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with KV(p) as kv:
                for k in list(kv):
                    try:
                        kv.get(k)
                    except CorruptFileError:
                        pass
                kv["after"] = 1
                assert kv["after"] == 1
        except MmapkitError:
            pass


# The store against a dict: random writes of every plain value kind (lengths around the
# write path's tables), deletes, clears, batches, compactions and reopens, in a store small
# enough to grow and compact often.  Every step reads back like the dict, and so does a
# reopened store; check() stays clean.
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=False),
    st.binary(max_size=300), st.text(max_size=200),
    st.text(st.characters(blacklist_categories=()), max_size=5),  # lone surrogates too
    st.lists(st.integers(), max_size=3))
_KEYS = st.text(st.characters(blacklist_categories=()), max_size=6)
_KV_OPS = st.lists(st.one_of(
    st.tuples(st.just("set"), _KEYS, _VALUES),
    st.tuples(st.just("del"), _KEYS, st.none()),
    st.tuples(st.just("batch"), st.lists(st.tuples(_KEYS, _VALUES), max_size=4), st.none()),
    st.tuples(st.sampled_from(["clear", "compact", "reopen"]), st.none(), st.none()),
), max_size=100)


@given(ops=_KV_OPS)
@settings(max_examples=300, deadline=None)
def test_store_matches_a_dict_model(ops: list[tuple[str, Any, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.kv")
        model: dict[str, Any] = {}
        kv = KV(path, capacity=4096)
        try:
            for op, a, b in ops:
                if op == "set":
                    kv[a] = b
                    model[a] = b
                elif op == "del":
                    if a in model:
                        del kv[a]
                        del model[a]
                    else:
                        with pytest.raises(KeyError):
                            del kv[a]
                elif op == "batch":
                    with kv.batch():
                        for k, v in a:
                            kv[k] = v
                            model[k] = v
                elif op == "clear":
                    kv.clear()
                    model.clear()
                elif op == "compact":
                    kv.compact()
                else:
                    kv.close()
                    kv = KV(path)
                assert dict(kv.items()) == model
            assert all(type(kv[k]) is type(v) for k, v in model.items())
        finally:
            kv.close()
        with KV(path) as again:
            assert dict(again.items()) == model
        assert KV.check(path).ok
