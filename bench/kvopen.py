"""Opening a big store: a KV of N keys written then compacted, opened by a fresh process
and ready for its first get (issue 16), against lmdb and rocksdict.

Stores (keys ``key%09d``; int values, or 100-byte bytes values):

- ``mmapkit``: the keys written, then ``compact()``: image records partitioned by key hash
  (format version 3).  The open verifies every record and leaves the image parts encoded;
  the first get decodes its key's part (kv/_lazy.py).
- ``mmapkit (+ load all)``: the same file, opened, the same get, then ``len()``, which
  decodes every part: the whole cost, paid by an application that touches every key.
- ``mmapkit (eager)``: the same file with every part decoded at open (the child sets
  codec.VERSION_PART past the file's version, so the opener treats it as an older image):
  what the open cost before the parts were left encoded, measured in the same run.
- ``mmapkit (records)``: the same keys as one set record each: what every compaction
  wrote before image records (and what a store holds before its first compaction), so
  the two mmapkit rows are the before and after of the columnar image, measured by the
  same code in the same run.
- ``lmdb`` (one write transaction per 10k keys), ``rocksdict`` (written, then
  ``compact_range`` so that it opens a compacted tree too).
- ``mmapkit (dict floor)``: no store of its own.  The child decodes the ``mmapkit`` store's
  image columns first, untimed, then times only what no load into a dict can skip: one
  ``dict.update(zip(keys, values))`` per image record (hashing the fresh keys and
  inserting them into a growing dict on a fresh heap), then the same get.  The open minus
  this row is what the load itself costs (framing, checksums, cutting the columns).

Each sample is one fresh ``python`` process that imports the library, then times
(``perf_counter``, in the child) opening the store and getting the last key written,
and prints that time: the import is not in the figure (bench/startup.py measures it).
The stores are opened round by round in turn so that the machine's noise falls on all
of them alike, after one warm-up round (the page cache holds every file, as for an
application that restarts).  Figures are medians.

Targets (issue 16): open + first get of 1M keys <= 0.5 s, of 100k keys <= 50 ms (int and
100 B values alike).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import textwrap

from . import _harness

OURS = _harness.OURS
RECORDS = f"{OURS} (records)"
FLOOR = f"{OURS} (dict floor)"
_PAYLOAD = b"v" * 100

# implementation -> the child's code: argv[1] the store's path, argv[2] the probe key
_OPEN = {
    OURS: """
        import sys, time
        from mmapkit import KV
        t0 = time.perf_counter()
        kv = KV(sys.argv[1])
        kv[sys.argv[2]]
        t = time.perf_counter() - t0
        kv.close()
        print(t)
        """,
    "lmdb": """
        import sys, time
        import lmdb
        t0 = time.perf_counter()
        env = lmdb.open(sys.argv[1], readonly=True, lock=False)
        with env.begin() as txn:
            assert txn.get(sys.argv[2].encode()) is not None
        t = time.perf_counter() - t0
        env.close()
        print(t)
        """,
    "rocksdict": """
        import sys, time
        import rocksdict
        t0 = time.perf_counter()
        db = rocksdict.Rdict(sys.argv[1], access_type=rocksdict.AccessType.read_only())
        db[sys.argv[2]]
        t = time.perf_counter() - t0
        db.close()
        print(t)
        """,
}
ALL = f"{OURS} (+ load all)"
EAGER = f"{OURS} (eager)"
_OPEN[ALL] = """
    import sys, time
    from mmapkit import KV
    t0 = time.perf_counter()
    kv = KV(sys.argv[1])
    kv[sys.argv[2]]
    len(kv)  # (decodes every image part)
    t = time.perf_counter() - t0
    kv.close()
    print(t)
    """
_OPEN[EAGER] = """
    import sys, time
    from mmapkit import KV
    from mmapkit.kv import codec
    codec.VERSION_PART = codec.VERSION + 1  # (this file's parts: all decoded at open)
    t0 = time.perf_counter()
    kv = KV(sys.argv[1])
    kv[sys.argv[2]]
    t = time.perf_counter() - t0
    assert kv._lazy is None
    kv.close()
    print(t)
    """
_OPEN[RECORDS] = _OPEN[OURS]
_OPEN[FLOOR] = """
    import gc, mmap, sys, time
    from mmapkit.kv import codec
    gc.disable()  # (as the open's load does)
    with open(sys.argv[1], "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        end = codec.parse_header(m).end
        records = codec.scan(m, codec.DATA_START, end).records
    columns = [codec.decode_image(r.body) for r in records if r.kind == codec.KIND_IMAGE]
    del records
    t0 = time.perf_counter()
    index = {}
    for keys, values in columns:
        index.update(zip(keys, values))
    index[sys.argv[2]]
    t = time.perf_counter() - t0
    print(t)
    """


def _value(form: str, i: int) -> int | bytes:
    return i if form == "int" else _PAYLOAD


def _make(impl: str, path: str, n: int, form: str) -> None:
    """Write ``n`` keys into a new store at ``path`` (compacted where the store can be)."""
    if impl in (OURS, RECORDS):
        from mmapkit import KV
        from mmapkit.kv import codec

        with KV(path) as kv:
            for i in range(n):
                kv[f"key{i:09d}"] = _value(form, i)
            if impl == OURS:
                kv.compact()
        with open(path, "rb") as f:
            version = codec.parse_header(f.read(codec.HEADER_SIZE)).version
        # (distinct keys written to a new store: no compaction ran, one record per key)
        assert version == (codec.VERSION_PART if impl == OURS else codec.VERSION_PLAIN)
    elif impl == "lmdb":
        import lmdb

        env = lmdb.open(path, map_size=1 << 32, sync=False, metasync=False)
        for a in range(0, n, 10_000):
            with env.begin(write=True) as txn:
                for i in range(a, min(n, a + 10_000)):
                    v = _value(form, i)
                    txn.put(f"key{i:09d}".encode(),
                            v.to_bytes(8, "little", signed=True) if isinstance(v, int) else v)
        env.sync(True)
        env.close()
    else:
        import rocksdict

        db = rocksdict.Rdict(path)
        for i in range(n):
            db[f"key{i:09d}"] = _value(form, i)
        db.compact_range(None, None)
        db.close()


def _open_time(impl: str, path: str, probe: str) -> float:
    child = _harness.spawn("-c", textwrap.dedent(_OPEN[impl]), path, probe, stdin=None)
    out, _ = child.communicate(timeout=600)
    if child.returncode:
        raise RuntimeError(f"{impl}: the opening child failed (exit {child.returncode})")
    return float(out.split()[-1])


def run(report: _harness.Report, args: argparse.Namespace) -> None:
    sizes = [20_000] if args.quick else [100_000, 1_000_000]
    rounds = args.repeat or (3 if args.quick else 7)
    impls = [OURS, ALL, EAGER, RECORDS, FLOOR]
    for name in ("lmdb", "rocksdict"):
        if not _harness.wanted(args, name):
            continue
        if importlib.util.find_spec(name) is None:
            report.skip(name, "not installed (bench extra)")
        else:
            impls.append(name)
    with tempfile.TemporaryDirectory(prefix="mmapkit-bench-kvopen-") as tmp:
        for n in sizes:
            for form in ("int", "100 B"):
                case = f"open + first get, {n // 1000}k keys, {form} values"
                paths: dict[str, str] = {}
                for impl in impls:
                    if impl in (FLOOR, ALL, EAGER):
                        paths[impl] = paths[OURS]  # (the compacted store's image)
                        continue
                    paths[impl] = os.path.join(tmp, f"{impl.split()[-1].strip('()')}-{n}")
                    _make(impl, paths[impl], n, "int" if form == "int" else "bytes")
                probe = f"key{n - 1:09d}"
                samples: dict[str, list[float]] = {impl: [] for impl in impls}
                for impl in impls:  # warm-up: the page cache holds every file
                    _open_time(impl, paths[impl], probe)
                for _ in range(rounds):
                    for impl in impls:
                        samples[impl].append(_open_time(impl, paths[impl], probe))
                for impl in impls:
                    report.add(case, impl, samples[impl], "s", higher_is_better=False)
                for impl in impls:
                    if paths[impl] != paths[OURS] or impl == OURS:
                        _remove(paths[impl])


def _remove(path: str) -> None:
    import shutil

    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        for p in (path, path + ".lock"):
            if os.path.exists(p):
                os.unlink(p)


def main(argv: list[str] | None = None) -> int:
    return _harness.main_for("kvopen", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
