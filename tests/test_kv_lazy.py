"""A version 3 store's image parts are left encoded at open and loaded on first use
(kv/_lazy.py).  Every operation on a key of a part not loaded yet must answer as if the
whole store had been loaded at open; whole-store operations load everything first; other
processes' writes to keys of unloaded parts are neither lost nor undone by a later load;
damage is still found and reported at open.
"""

from __future__ import annotations

import ast
import io
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mmapkit import KV
from mmapkit.errors import CorruptFileError
from mmapkit.kv import _files, codec

N = 3000
PART_KEYS = 64  # keys a part (N keys: 64 parts, so a test touches only a few of them)


@pytest.fixture(autouse=True)
def _small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    # (this process's compactions only; other processes read the parts from the file)
    monkeypatch.setattr(codec, "IMAGE_PART_KEYS", PART_KEYS)


def key(i: int) -> str:
    return f"key{i:06d}"


def value(i: int) -> Any:
    return (i, b"b%d" % i, f"s{i}")[i % 3]


def make(path: Path, n: int = N, **kw: Any) -> dict[str, Any]:
    """A compacted store of ``n`` keys (three value forms, so three records a part) and a
    float (an ordinary record after the image); returns the model."""
    model = {key(i): value(i) for i in range(n)} | {"float": 0.5}
    with KV(path, **kw) as kv:
        kv.update(model)
        kv.compact()
    assert codec.parse_header(path.read_bytes()).version == codec.VERSION_PART
    return model


def unloaded(kv: KV) -> int:
    return 0 if kv._lazy is None else kv._lazy.left


def parts_of(kv: KV) -> int:
    assert kv._lazy is not None
    return len(kv._lazy.spans)


def part(kv: KV, k: str) -> int:
    return codec.image_part(k, parts_of(kv))


def test_open_leaves_every_part_encoded_and_the_file_says_version_3(tmp_path: Path) -> None:
    path = tmp_path / "s.kv"
    model = make(path)
    with KV(path) as kv:
        n = parts_of(kv)
        assert n == 64 and unloaded(kv) == n
        assert len(kv._index) == 1  # the float: an ordinary record, replayed at open
        assert kv[key(7)] == model[key(7)]
        assert unloaded(kv) == n - 1
        assert all(part(kv, k) == part(kv, key(7)) for k in kv._index if k != "float")
        assert dict(kv.items()) == model and unloaded(kv) == 0 and kv._lazy is None
    report = KV.check(path)
    assert report.ok and report.version == 3 and report.keys == len(model)


READS = ["get", "getitem", "contains", "get-missing", "getitem-missing", "contains-missing",
         "pop", "setdefault"]
WRITES = ["set", "set-ttl", "delete", "delete-missing", "update_with", "batch", "update"]
WHOLE = ["len", "iter", "keys", "items", "values", "clear", "compact", "backup",
         "export_json", "statistics", "rekey", "repr", "eq"]


def _do(kv: KV, op: str, k: str, model: dict[str, Any], tmp: Path) -> Any:
    """Do ``op`` on ``kv`` and on ``model`` alike; returns what kv answered."""
    missing = k + "-no"
    if op == "get":
        return kv.get(k)
    if op == "getitem":
        return kv[k]
    if op == "contains":
        return k in kv
    if op == "get-missing":
        return kv.get(missing, "dflt")
    if op == "getitem-missing":
        with pytest.raises(KeyError):
            kv[missing]
        return None
    if op == "contains-missing":
        return missing in kv
    if op == "pop":
        model.pop(k)
        return kv.pop(k)
    if op == "setdefault":
        return kv.setdefault(k, "new")
    if op == "set":
        kv[k] = model[k] = "written"
    elif op == "set-ttl":
        kv.set(k, "ttl", ttl=3600)
        model[k] = "ttl"
    elif op == "delete":
        del kv[k]
        del model[k]
    elif op == "delete-missing":
        with pytest.raises(KeyError):
            del kv[missing]
    elif op == "update_with":
        model[k] = (model[k], 1)
        return kv.update_with(k, lambda old: (old, 1))
    elif op == "batch":
        with kv.batch():
            kv[k] = model[k] = "batched"
            del kv[key(1)]
            del model[key(1)]
    elif op == "update":
        kv.update({k: 1, key(2): 2})
        model.update({k: 1, key(2): 2})
    elif op == "len":
        return len(kv)
    elif op == "iter":
        return sorted(kv)
    elif op == "keys":
        return sorted(kv.keys())
    elif op == "items":
        return sorted(kv.items(), key=repr)
    elif op == "values":
        return sorted(map(repr, kv.values()))
    elif op == "clear":
        kv.clear()
        model.clear()
    elif op == "compact":
        kv.compact()
    elif op == "backup":
        kv.backup(tmp / "backup.kv")
        with KV(tmp / "backup.kv") as b:
            return dict(b.items())
    elif op == "export_json":
        buf = io.StringIO()
        kv.export_json(buf)
        return len(buf.getvalue()) > 0
    elif op == "statistics":
        return kv.statistics().keys
    elif op == "rekey":
        kv.rekey(b"k" * 16)
        kv.rekey(None)
    elif op == "repr":
        return repr(kv).startswith("<KV")
    elif op == "eq":
        return dict(kv) == model
    else:  # pragma: no cover
        raise AssertionError(op)
    return None


@pytest.mark.parametrize("state", ["fresh", "partly", "same-part-loaded"])
@pytest.mark.parametrize("op", READS + WRITES + WHOLE)
@pytest.mark.parametrize("multiprocess", [False, True])
def test_every_operation_on_an_unloaded_key(tmp_path: Path, op: str, state: str,
                                            multiprocess: bool) -> None:
    """Against a dict: each operation on a key of an unloaded part (a fresh open, some
    other parts loaded, or a neighbour of the same part already loaded) gives the dict's
    answer, and the store then holds the dict's content (read by this handle and by a
    fresh one)."""
    path = tmp_path / "s.kv"
    model = make(path)
    k = key(1234)
    with KV(path, multiprocess=multiprocess) as kv:
        expect_model = dict(model)
        if state == "partly":
            for i in range(0, N, 97):
                if part(kv, key(i)) != part(kv, k):
                    assert kv[key(i)] == model[key(i)]
            assert 0 < unloaded(kv) < parts_of(kv)
        elif state == "same-part-loaded":
            other = next(key(i) for i in range(N)
                         if key(i) != k and part(kv, key(i)) == part(kv, k))
            assert kv[other] == model[other]
        assert kv._lazy is not None
        assert (kv._lazy.spans[part(kv, k)] is None) == (state == "same-part-loaded")
        got = _do(kv, op, k, expect_model, tmp_path)
        want: dict[str, Any] = {
            "get": model[k], "getitem": model[k], "contains": True, "get-missing": "dflt",
            "contains-missing": False, "pop": model[k], "setdefault": model[k],
            "update_with": (model[k], 1), "len": len(expect_model),
            "iter": sorted(expect_model), "keys": sorted(expect_model),
            "items": sorted(expect_model.items(), key=repr),
            "values": sorted(map(repr, expect_model.values())),
            "backup": expect_model, "export_json": True, "statistics": len(expect_model),
            "repr": True, "eq": True}
        if op in want:
            assert got == want[op]
        assert dict(kv.items()) == expect_model
        assert kv._lazy is None  # (items() loaded the rest)
    with KV(path, multiprocess=multiprocess) as kv:
        assert dict(kv.items()) == expect_model
    assert KV.check(path).ok


def test_whole_store_operations_load_every_part(tmp_path: Path) -> None:
    path = tmp_path / "s.kv"
    model = make(path)
    for op in ("len", "iter", "statistics", "export_json", "compact", "backup", "clear"):
        with KV(path) as kv:
            assert unloaded(kv) == parts_of(kv)
            _do(kv, op, key(0), dict(model), tmp_path)
            assert kv._lazy is None, op
        if op != "clear":
            with KV(path) as kv:
                assert dict(kv.items()) == model


@pytest.mark.parametrize("multiprocess", [False, True])
def test_inline_writes_while_lazy_leave_the_part_encoded_and_win_its_load(
        tmp_path: Path, multiprocess: bool) -> None:
    """``kv[k] = v`` and update_with take the inline paths while parts are unloaded: the
    key's part stays encoded, is marked to merge key by key (a clean part would load with
    one dict.update, over the new value), and its later load keeps what was written.
    set() still loads the part first; so do deletes."""
    path = tmp_path / "s.kv"
    model = make(path)
    with KV(path, multiprocess=multiprocess) as kv:
        lazy = kv._lazy
        assert lazy is not None and lazy.dirty is not None
        assert kv._inline_mp if multiprocess else kv._inline_sp
        k = next(key(i) for i in range(N) if part(kv, key(i)) not in lazy.dirty)
        p = part(kv, k)
        neighbour = next(key(i) for i in range(N) if key(i) != k and part(kv, key(i)) == p)
        kv[k] = model[k] = "written inline"
        assert lazy.spans[p] is not None and p in lazy.dirty  # not loaded, marked
        assert kv.update_with(k, lambda old: old + "!") == "written inline!"
        model[k] = "written inline!"
        assert lazy.spans[p] is not None
        assert kv[neighbour] == model[neighbour]  # loads the part: k keeps its value
        assert lazy.spans[p] is None and kv[k] == "written inline!"
        other = next(key(i) for i in range(N) if lazy.spans[part(kv, key(i))] is not None)
        kv.set(other, "via set()")
        model[other] = "via set()"
        assert lazy.spans[part(kv, other)] is None  # set() loads first
        assert dict(kv.items()) == model
        assert kv._lazy is None and type(kv._index) is dict
    with KV(path, multiprocess=multiprocess) as kv:
        assert dict(kv.items()) == model
    assert KV.check(path).ok


def test_a_batch_that_rolls_back_across_a_part_load(tmp_path: Path) -> None:
    """Writes to keys of one part, then a read that loads another part, a delete in a
    third, a clear (every part) in a nested step: the rollback restores exactly the state
    before the batch, and nothing of a part loaded meanwhile is lost."""
    path = tmp_path / "s.kv"
    model = make(path)
    with KV(path) as kv:
        a, b, c = key(10), key(2000), key(2999)
        assert len({part(kv, a), part(kv, b), part(kv, c)}) == 3
        with pytest.raises(RuntimeError), kv.batch():
            kv[a] = "changed"
            assert kv[b] == model[b]  # loads b's part inside the batch
            del kv[c]
            kv["brand-new"] = 1
            raise RuntimeError("undo")
        assert kv[a] == model[a] and kv[b] == model[b] and kv[c] == model[c]
        assert "brand-new" not in kv
        with pytest.raises(RuntimeError), kv.batch():
            kv[a] = "again"
            kv.clear()  # loads every part, so the undo can restore them
            raise RuntimeError("undo")
        assert dict(kv.items()) == model
    with KV(path) as kv:
        assert dict(kv.items()) == model
    assert KV.check(path).ok


def test_records_after_the_image_stay_in_force_whichever_part_loads(tmp_path: Path) -> None:
    """Deletes, overrides and a delete-then-set of image keys, written after the
    compaction, are replayed at open without loading their parts; a part loaded later
    never brings back a deleted key nor an older value."""
    path = tmp_path / "s.kv"
    model = make(path)
    with KV(path) as kv:
        for i in range(0, N, 5):
            if i % 2:
                del kv[key(i)]
                del model[key(i)]
            else:
                kv[key(i)] = model[key(i)] = -i
        del kv[key(3)]
        kv[key(3)] = model[key(3)] = "back"
    with KV(path) as kv:
        assert unloaded(kv) == parts_of(kv)  # (nothing was loaded by the replay)
        for i in range(N):
            k = key(i)
            assert kv.get(k, "gone") == model.get(k, "gone"), k
            assert (k in kv) == (k in model)
        assert dict(kv.items()) == model


def test_a_clear_after_the_image_drops_every_part(tmp_path: Path) -> None:
    path = tmp_path / "s.kv"
    make(path)
    with KV(path) as kv:
        kv.clear()
        kv["after"] = 1
    with KV(path) as kv:
        assert kv._lazy is None and dict(kv.items()) == {"after": 1}


def test_an_old_version_2_file_opens_eagerly(tmp_path: Path) -> None:
    """A version 2 file (images with a zero part field, as the previous mmapkit wrote)
    is read as before: every image decoded at open."""
    path = tmp_path / "v2.kv"
    model = {key(i): value(i) for i in range(500)}
    ints = {k: v for k, v in model.items() if type(v) is int}
    rest = {k: v for k, v in model.items() if type(v) is not int}
    body = codec.encode_image(list(ints), list(ints.values()))
    assert body[2:4] == b"\0\0"  # (version 2's reserved field)
    rec = codec.encode_record(codec.KIND_IMAGE, body, codec.DATA_START)
    more, end, _ = _index_image(rest, codec.DATA_START + len(rec))
    data = rec + b"".join(more)
    head = codec.build_header(flags=0, salt=1, created_ns=1, keycheck=b"", end=end,
                              version=codec.VERSION_IMAGE)
    path.write_bytes(head + data + bytes(4096))
    with KV(path) as kv:
        assert kv._lazy is None and len(kv._index) == len(model)
        assert dict(kv.items()) == model
        kv["x"] = 1
    assert codec.parse_header(path.read_bytes()).version == 2  # (kept for the file's life)
    assert KV.check(path).ok


def _index_image(entries: dict[str, Any], start: int) -> tuple[list[bytes], int, int]:
    from mmapkit.kv import _index

    return _index.image(entries, None, start=start)


def _image_records(path: Path) -> list[codec.Record]:
    data = path.read_bytes()
    hdr = codec.parse_header(data)
    return [r for r in codec.scan(data, codec.DATA_START, hdr.end).records
            if r.kind == codec.KIND_IMAGE]


@pytest.mark.parametrize("where", ["body", "head", "crc"])
def test_damage_in_one_part_is_reported_at_open(tmp_path: Path, where: str) -> None:
    """A flipped byte in one image record: found at open (recover=False raises there,
    before any get), reported with a warning and a .damaged copy, and every key of the
    other records is still there."""
    path = tmp_path / "d.kv"
    model = make(path)
    victim = _image_records(path)[17]
    nparts, vpart, _ = codec.image_head(victim.body)
    lost = set(codec.decode_image(victim.body)[0])
    raw = bytearray(path.read_bytes())
    at = {"body": victim.offset + 12 + len(victim.body) // 2, "head": victim.offset + 14,
          "crc": victim.offset + 9}[where]
    raw[at] ^= 0x21
    path.write_bytes(bytes(raw))
    report = KV.check(path)
    assert not report.ok and report.damaged == ((victim.offset, victim.offset + victim.size),)
    with pytest.raises(CorruptFileError):
        KV(path, recover=False)
    assert path.read_bytes() == bytes(raw)  # nothing silently wiped
    with pytest.warns(RuntimeWarning, match="damaged"):
        kv = KV(path)
    with kv:
        survivors = {k: v for k, v in model.items() if k not in lost}
        # the other keys of the damaged record's part are there too
        assert any(codec.image_part(k, nparts) == vpart for k in survivors)
        assert dict(kv.items()) == survivors
    assert (tmp_path / "d.kv.damaged").read_bytes() == bytes(raw)
    assert KV.check(path).ok


def test_a_verified_record_that_does_not_decode_is_reported_at_first_use(
        tmp_path: Path) -> None:
    """A record whose crc verifies but whose columns are garbage (a bug or a hostile file;
    a flipped byte fails the crc) is found when its part is first used: then reported as
    an open would (warning, .damaged copy, the rest salvaged)."""
    path = tmp_path / "g.kv"
    model = make(path)
    victim = next(r for r in _image_records(path) if codec.decode_image(r.body)[1][0] == 0
                  or type(codec.decode_image(r.body)[1][0]) is int)
    keys = codec.decode_image(victim.body)[0]
    body = bytearray(victim.body)
    struct.pack_into("<I", body, 4, len(keys) + 1)  # a count the columns do not hold
    raw = bytearray(path.read_bytes())
    raw[victim.offset : victim.offset + victim.size] = codec.encode_record(
        codec.KIND_IMAGE, bytes(body), victim.offset)
    path.write_bytes(bytes(raw))
    other = next(k for k in model if k not in keys and k != "float")
    with KV(path, recover=False) as kv:  # opens: the head and crc verify
        assert kv._lazy is not None
        with pytest.raises(CorruptFileError):
            kv[keys[0]]
        with pytest.raises(CorruptFileError):  # (again: the part stays unloaded)
            kv.get(keys[1])
        assert kv[other] == model[other]  # other parts still answer
    assert path.read_bytes() == bytes(raw)
    with KV(path) as kv:
        assert kv._lazy is not None
        with pytest.warns(RuntimeWarning, match="damaged"):
            n = len(kv)
        assert n == len(model) - len(keys)
        assert keys[0] not in kv and kv[other] == model[other]
    assert os.path.exists(str(path) + ".damaged")
    assert KV.check(path).ok


def test_the_partition_is_stable_and_every_part_is_near_the_target(tmp_path: Path) -> None:
    """Parts are crc32(key) & (parts - 1) (never the per-process hash()): a fresh
    interpreter with another hash seed computes the same parts; the count is a power of
    two with about PART_KEYS keys a part."""
    path = tmp_path / "s.kv"
    make(path)
    recs = _image_records(path)
    heads = [codec.image_head(r.body) for r in recs]
    nparts = {h[0] for h in heads}
    assert nparts == {64}
    for r, (n, p, _) in zip(recs, heads, strict=True):
        assert {codec.image_part(k, n) for k in codec.decode_image(r.body)[0]} == {p}
    code = ("import sys; from mmapkit.kv import codec; "
            "print([codec.image_part(f'key{i:06d}', 64) for i in range(50)])")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
            for seed in ("1", "2")}
    assert len(outs) == 1
    assert ast.literal_eval(outs.pop()) == [codec.image_part(key(i), 64) for i in range(50)]
    assert codec.image_parts(1) == 1 and codec.image_parts(PART_KEYS + 1) == 2
    assert codec.image_parts(10**12) == 1 << codec.PART_BITS_MAX


# --- other processes ------------------------------------------------------------------------

_WRITER = r"""
import sys
from mmapkit import KV
path, who, start, step = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
kv = KV(path, multiprocess=True)
for r in range(3):
    for i in range(start, 3000, step):
        k = f"key{i:06d}"
        if (i // step + r) % 3 == 0:
            kv.pop(k, None)
        else:
            kv[k] = f"{who}{r}-{i}"
    if who == "c":
        kv.compact()
kv.close()
print("done")
"""


def _expected(start: int, step: int, who: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i in range(start, N, step):
        r = 2
        out[key(i)] = None if (i // step + r) % 3 == 0 else f"{who}{r}-{i}"
    return out


def test_unrelated_processes_write_unloaded_parts_while_another_compacts(
        tmp_path: Path) -> None:
    """Two unrelated processes (subprocess) set and delete keys of parts nobody loaded
    while a third writes its own keys and compacts three times (each compaction makes a
    new lazy image the others follow): the final store is exactly each writer's last
    word for its keys, the untouched keys keep their values, and a lazy reader that
    followed everything agrees."""
    path = tmp_path / "mp.kv"
    model = make(path, multiprocess=True)
    with KV(path, multiprocess=True) as reader:
        assert unloaded(reader) == parts_of(reader)
        procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), who,
                                   str(start), "7"], stdout=subprocess.PIPE, text=True)
                 for who, start in (("a", 1), ("b", 2), ("c", 3))]
        seen = 0
        while any(p.poll() is None for p in procs):
            seen += reader.get(key(0)) == model[key(0)]  # follows lock-free, stays lazy
            time.sleep(0.002)
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0 and "done" in out
        for who, start in (("a", 1), ("b", 2), ("c", 3)):
            for k, v in _expected(start, 7, who).items():
                if v is None:
                    model.pop(k, None)
                else:
                    model[k] = v
        assert dict(reader.items()) == model
        assert seen
    with KV(path, multiprocess=True) as kv:
        assert dict(kv.items()) == model
    assert KV.check(path).ok


_DELETER = r"""
import sys
from mmapkit import KV
kv = KV(sys.argv[1], multiprocess=True)
op = sys.argv[2]
if op == "del":
    for k in sys.argv[3:]:
        del kv[k]
elif op == "set":
    for k in sys.argv[3:]:
        kv[k] = "other"
else:
    kv.clear()
kv.close()
"""


@pytest.mark.parametrize("op", ["del", "set", "clear"])
def test_a_lazy_reader_follows_another_process_on_unloaded_keys(tmp_path: Path,
                                                                 op: str) -> None:
    """Another process deletes / sets keys of parts this handle has not loaded (or clears
    the store): the catch-up replay applies it without loading the parts, and a part
    loaded afterwards neither brings a deleted key back nor overwrites the new value."""
    path = tmp_path / "f.kv"
    model = make(path, multiprocess=True)
    targets = [key(i) for i in (11, 12, 1500, 2999)]
    with KV(path, multiprocess=True) as kv:
        assert kv.get(key(0)) == model[key(0)]
        assert all(kv._lazy is not None and kv._lazy.spans[part(kv, t)] is not None
                   for t in targets if part(kv, t) != part(kv, key(0)))
        subprocess.run([sys.executable, "-c", _DELETER, str(path), op, *targets], check=True)
        if op == "del":
            for t in targets:
                del model[t]
        elif op == "set":
            model.update(dict.fromkeys(targets, "other"))
        else:
            model.clear()
        for t in targets:
            assert kv.get(t, "missing") == model.get(t, "missing")
            assert (t in kv) == (t in model)
        assert dict(kv.items()) == model
    assert KV.check(path).ok


def _race(kv: KV, model: dict[str, Any]) -> list[str]:
    """Four reader threads and a writer on one handle, started at once: the mismatches."""
    import threading

    errors: list[str] = []
    start = threading.Barrier(5)

    def read(offset: int) -> None:
        start.wait()
        for i in range(offset, N, 4):
            k = key(i)
            if i % 7 == 3:
                continue  # (the writer's keys)
            got = kv.get(k, "MISSING") if i % 2 else (k in kv, kv[k])
            want = model[k] if i % 2 else (True, model[k])
            if got != want:
                errors.append(f"{k}: {got!r} != {want!r}")

    def write() -> None:
        start.wait()
        for i in range(3, N, 7):
            kv[key(i)] = -i

    threads = [threading.Thread(target=read, args=(o,)) for o in range(4)]
    threads.append(threading.Thread(target=write))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_threads_racing_for_one_part_all_see_its_keys(tmp_path: Path) -> None:
    """Threads miss keys of the same unloaded parts at once: the one that loads a part
    holds the thread lock; the others wait for it and then find their keys (never a
    spurious miss), while another thread writes."""
    path = tmp_path / "t.kv"
    model = make(path)
    for _ in range(8):
        with KV(path) as kv:
            assert kv._lazy is not None
            errors = _race(kv, model)
            assert not errors, errors[:5]
            assert all(kv[key(i)] == -i for i in range(3, N, 7))
        with KV(path) as kv:
            assert all(kv[key(i)] == -i for i in range(3, N, 7))
            kv.update({key(i): model[key(i)] for i in range(3, N, 7)})
            kv.compact()


def test_a_fork_child_reads_its_own_copy_of_the_parts(tmp_path: Path) -> None:
    path = tmp_path / "fk.kv"
    model = make(path, multiprocess=True)
    with KV(path, multiprocess=True) as kv:
        assert kv[key(1)] == model[key(1)]
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            ok = dict(kv.items()) == model
            kv[key(2)] = "child"
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        model[key(2)] = "child"
        assert kv[key(2)] == "child" and dict(kv.items()) == model
    assert KV.check(path).ok


# --- model test -----------------------------------------------------------------------------

_keys = st.sampled_from([key(i) for i in range(0, 400, 3)] + ["odd\0key", "sur\udcff", "x"])
_values = st.one_of(st.integers(-(1 << 63), (1 << 63) - 1), st.binary(max_size=12),
                    st.text(max_size=8), st.floats(allow_nan=False), st.none(),
                    st.lists(st.integers(), max_size=3))


class LazyModel(RuleBasedStateMachine):
    """Operations against a dict, with reopen and compact steps: each reopen of a compacted
    store starts lazy again, so every operation meets keys of unloaded parts."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="kvlazy-")
        self.path = os.path.join(self.dir, "m.kv")
        self.model: dict[str, Any] = {key(i): value(i) for i in range(400)}
        self.kv = KV(self.path)
        self.kv.update(self.model)
        self.kv.compact()
        self.reopen()

    def reopen(self) -> None:
        self.kv.close()
        self.kv = KV(self.path)

    @rule(k=_keys, v=_values)
    def set(self, k: str, v: Any) -> None:
        self.kv[k] = v
        self.model[k] = v

    @rule(k=_keys)
    def get(self, k: str) -> None:
        assert self.kv.get(k, "absent") == self.model.get(k, "absent")

    @rule(k=_keys)
    def contains(self, k: str) -> None:
        assert (k in self.kv) == (k in self.model)

    @rule(k=_keys)
    def delete(self, k: str) -> None:
        if k in self.model:
            del self.kv[k]
            del self.model[k]
        else:
            with pytest.raises(KeyError):
                del self.kv[k]

    @rule(k=_keys, v=_values, fail=st.booleans())
    def batch(self, k: str, v: Any, fail: bool) -> None:
        try:
            with self.kv.batch():
                self.kv[k] = v
                self.kv.pop(key(3), None)
                if fail:
                    raise RuntimeError
        except RuntimeError:
            return
        self.model[k] = v
        self.model.pop(key(3), None)

    @rule()
    def reopen_step(self) -> None:
        self.reopen()

    @rule()
    def compact_and_reopen(self) -> None:
        self.kv.compact()
        self.reopen()

    @precondition(lambda self: len(self.model) < 50)
    @rule()
    def refill(self) -> None:
        more = {key(i): value(i) for i in range(400, 500)}
        self.kv.update(more)
        self.model.update(more)

    @rule()
    def clear(self) -> None:
        self.kv.clear()
        self.model.clear()

    @invariant()
    def lazy_means_a_part_is_left(self) -> None:
        lazy = self.kv._lazy
        assert lazy is None or lazy.left > 0
        assert self.kv._inline_sp  # (lazy or not: the inline set's path)

    def teardown(self) -> None:
        assert dict(self.kv.items()) == self.model
        self.kv.close()
        report = KV.check(self.path)
        assert report.ok and report.keys == len(self.model)
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


TestLazyModel = LazyModel.TestCase
TestLazyModel.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])


def test_files_helpers_agree_with_the_codec() -> None:
    """_files.image writes the part the codec computes (the writer and the reader share
    image_part)."""
    index = {key(i): value(i) for i in range(1000)}
    img = _files.image(index, None)
    data = bytes(codec.DATA_START) + b"".join(img.parts)
    recs = [r for r in codec.scan(data, codec.DATA_START, img.end).records
            if r.kind == codec.KIND_IMAGE]
    assert {codec.image_head(r.body)[0] for r in recs} == {codec.image_parts(1000)} == {16}
    got: dict[str, Any] = {}
    for r in recs:
        n, p, _ = codec.image_head(r.body)
        keys, values = codec.decode_image(r.body)
        assert all(codec.image_part(k, n) == p for k in keys)
        got.update(zip(keys, values, strict=True))
    assert got == index


def _mixed_index(seed: int, n: int) -> dict[str, Any]:
    rnd = random.Random(seed)
    out: dict[str, Any] = {}
    for i in range(n):
        r = rnd.random()
        k = f"k{i}" + ("\0nul" if r < 0.02 else "é" if r < 0.1 else "")
        c = rnd.randrange(9)
        out[k] = (i, -i, b"%08d" % i, os.urandom(rnd.randrange(40)), f"s{i}", f"ü{i}\0",
                  1 << 70, "\ud800", 0.5)[c]
    return out


@pytest.mark.parametrize("shape", ["mixed", "ints", "fixed bytes", "varied bytes", "str",
                                   "str with NUL", "keys with NUL", "one big int",
                                   "a lone surrogate key", "past IMAGE_BYTES"])
def test_compaction_columns_built_in_one_pass_are_the_codecs_bytes(
        shape: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """_files.image builds each part's columns in one pass over the keys (_part_bodies):
    the records are byte for byte those the general way (per part, _chunks and
    codec.encode_image) makes, whatever the values hold."""
    n = 2000
    if shape == "mixed":
        index = _mixed_index(7, n)
    elif shape == "ints":
        index = {key(i): i * 7919 - 10**12 for i in range(n)}
    elif shape == "fixed bytes":
        index = {key(i): b"%016d" % i for i in range(n)}
    elif shape == "varied bytes":
        index = {key(i): b"v" * (i % 37) for i in range(n)}
    elif shape == "str":
        index = {key(i): f"välue {i}" for i in range(n)}
    elif shape == "str with NUL":
        index = {key(i): f"v\0{i}" if i % 50 == 0 else f"v{i}" for i in range(n)}
    elif shape == "keys with NUL":
        index = {(key(i) + "\0" if i % 50 == 0 else key(i)): i for i in range(n)}
    elif shape == "one big int":
        index = {key(i): (1 << 64) if i == 77 else i for i in range(n)}
    elif shape == "a lone surrogate key":
        index = {(key(i) + "\udc80" if i == 5 else key(i)): i for i in range(n)}
    else:  # "past IMAGE_BYTES"
        monkeypatch.setattr(_files, "IMAGE_BYTES", 2000)
        index = {key(i): b"x" * 100 for i in range(n)}
    fast = _files.image(index, None)
    with monkeypatch.context() as m:
        m.setattr(_files, "_part_bodies", lambda values, nparts, parted: ({}, None))
        general = _files.image(index, None)
    assert fast == general
    assert fast.version == codec.VERSION_PART
