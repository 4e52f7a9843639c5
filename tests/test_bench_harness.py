"""The benchmark harness's arithmetic and output on synthetic measurements, and one real
quick run of `mmapkit bench region` end to end."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from bench import _harness
from bench._harness import Report, fmt, percentile
from mmapkit.cli import main


def test_percentile() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([7.0], 99) == 7.0
    data = [float(x) for x in range(1, 101)]  # 1..100
    assert percentile(data, 0) == 1.0
    assert percentile(data, 100) == 100.0
    assert percentile(data, 50) == pytest.approx(50.5)
    assert percentile(data, 99) == pytest.approx(99.01)
    assert percentile(list(reversed(data)), 99) == pytest.approx(99.01)  # order-free
    assert percentile([1.0, 3.0], 25) == pytest.approx(1.5)


def test_measurement_median_and_p99() -> None:
    m = _harness.Measurement("c", "mmapkit", "µs", [5.0, 1.0, 3.0], higher_is_better=False)
    assert m.median == 3.0
    assert m.p99 == pytest.approx(4.96)
    assert math.isnan(_harness.Measurement("c", "x", "u", []).median)


def _report() -> Report:
    r = Report("synthetic")
    r.add("rate", "mmapkit", [10.0, 20.0, 30.0], "ops/s")  # median 20
    r.add("rate", "peer-a", [5.0, 10.0, 15.0], "ops/s")  # median 10
    r.add("rate", "peer-b", [40.0], "ops/s")  # median 40
    r.add("latency", "mmapkit", [2.0] * 30 + [50.0], "µs", higher_is_better=False)
    r.add("latency", "pipe", [4.0] * 31, "µs", higher_is_better=False)
    r.add("other", "peer-a", [1.0], "ops/s")  # a case without mmapkit: no ratio
    r.add("zero", "mmapkit", [1.0], "ops/s")
    r.add("zero", "broken", [0.0], "ops/s")  # a zero median gives no ratio (no div by 0)
    r.skip("absent-peer", "not installed")
    r.target("rate", "peer-a", ">=", 1.5)
    r.target("rate", "peer-b", ">=", 1.0)
    r.target("latency", "pipe", "<=", 0.6)
    r.target("rate", "absent-peer", ">=", 1.0)
    return r


def test_ratios() -> None:
    rows = {(r["case"], r["peer"]): r for r in _report().ratios()}
    assert set(rows) == {("rate", "peer-a"), ("rate", "peer-b"), ("latency", "pipe")}
    assert rows["rate", "peer-a"]["ratio"] == pytest.approx(2.0)
    assert rows["rate", "peer-a"]["better"] is True
    assert rows["rate", "peer-b"]["ratio"] == pytest.approx(0.5)
    assert rows["rate", "peer-b"]["better"] is False
    # times: lower is better, so 0.5x is better
    assert rows["latency", "pipe"]["ratio"] == pytest.approx(0.5)
    assert rows["latency", "pipe"]["better"] is True
    assert rows["latency", "pipe"]["ours_median"] == 2.0


def test_targets() -> None:
    results = {(t["case"], t["peer"]): t for t in _report().target_results()}
    assert results["rate", "peer-a"]["met"] is True
    assert results["rate", "peer-b"]["met"] is False
    assert results["rate", "peer-b"]["goal"] == ">= 1.0"
    assert results["latency", "pipe"]["met"] is True
    assert results["latency", "pipe"]["ratio"] == pytest.approx(0.5)
    assert results["rate", "absent-peer"]["met"] is None
    assert results["rate", "absent-peer"]["ratio"] is None


def test_json_round_trip() -> None:
    doc = json.loads(json.dumps(_report().to_json()))
    assert doc["component"] == "synthetic" and doc["quick"] is False
    assert doc["machine"]["cpus"] and doc["machine"]["summary"]
    lat = next(m for m in doc["measurements"] if m["case"] == "latency" and m["impl"] == "mmapkit")
    assert lat["median"] == 2.0 and lat["n"] == 31 and lat["p99"] == pytest.approx(35.6)
    assert lat["higher_is_better"] is False
    assert len(doc["ratios"]) == 3 and len(doc["targets"]) == 4
    assert doc["skipped"] == {"absent-peer": "not installed"}


def test_markdown_and_table() -> None:
    report = _report()
    md = report.markdown()
    assert md.startswith("### synthetic\n")
    assert "| rate | mmapkit | 20.00 |  | ops/s |" in md
    assert "| latency | mmapkit | 2.00 | 35.60 | µs |" in md  # p99 shown for latencies
    assert "| rate | mmapkit / peer-a | 2.00x |" in md
    assert "| rate vs peer-b | >= 1.0 | 0.50x | **no** |" in md
    assert "| rate vs absent-peer | >= 1.0 | n/a | n/a |" in md
    assert "Skipped: absent-peer (not installed)" in md
    table = report.table()
    assert "== synthetic ==" in table
    ratio_lines = {line.split(" vs ")[1].split()[0]: line for line in table.splitlines()
                   if " vs " in line and "target" not in line}
    assert "(worse)" in ratio_lines["peer-b"]
    assert "(worse)" not in ratio_lines["peer-a"] and "(worse)" not in ratio_lines["pipe"]
    assert "NOT MET" in table and "skipped absent-peer: not installed" in table


def test_fmt() -> None:
    assert fmt(float("nan")) == "n/a"
    assert fmt(1234567.0) == "1,234,567"
    assert fmt(12.345) == "12.35"
    assert fmt(0.012345) == "0.0123"


def test_rate_timings_and_wanted() -> None:
    calls = []
    rates = _harness.rate(lambda: calls.append(1), 1000, 4)
    assert len(rates) == 4 and all(r > 0 for r in rates) and len(calls) == 4
    times = _harness.timings(lambda: None, 3)
    assert len(times) == 3 and all(t >= 0 for t in times)
    args = argparse.Namespace(only=["pipe"])
    assert _harness.wanted(args, "mmapkit") and _harness.wanted(args, "pipe")
    assert not _harness.wanted(args, "multiprocessing.Event")
    assert _harness.wanted(argparse.Namespace(only=None), "anything")


def test_main_for_writes_json_and_markdown(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    def run(report: Report, args: argparse.Namespace) -> None:
        assert args.repeat == 3 and args.quick  # quick mode defaults to 3 repeats
        report.add("case", "mmapkit", [2.0, 2.0, 2.0], "GB/s")
        report.add("case", "peer", [1.0, 1.0, 1.0], "GB/s")

    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    assert _harness.main_for("synthetic", run, ["--quick", "--json", str(out_json),
                                                "--markdown", str(out_md)]) == 0
    assert "2.00x" in capsys.readouterr().out
    doc = json.loads(out_json.read_text())
    assert doc["quick"] is True and doc["ratios"][0]["ratio"] == 2.0
    assert "| case | mmapkit / peer | 2.00x |" in out_md.read_text()


@pytest.mark.timeout(60)
def test_bench_region_quick_end_to_end(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "region", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== region ==" in out
    doc = json.loads((tmp_path / "region.json").read_text())
    assert doc["component"] == "region" and doc["quick"] is True
    cases = {(m["case"], m["impl"]) for m in doc["measurements"]}
    peers = {impl for _, impl in cases}
    assert {"mmapkit", "os.preadv", "os.pread", "os.pwrite", "pipe", "multiprocessing.Event",
            "fcntl.flock"} <= peers
    for m in doc["measurements"]:
        assert m["n"] >= 1 and m["median"] > 0, m
    latency = [m for m in doc["measurements"] if m["unit"] == "µs"]
    assert all(m["n"] == 300 and not m["higher_is_better"] for m in latency)
    assert len(doc["ratios"]) == 9  # 4 throughput + 2 x 2 wake-up variants + 1 lock
    assert all(t["ratio"] is not None for t in doc["targets"])
    assert (tmp_path / "region.md").read_text().startswith("### region")


@pytest.mark.timeout(120)
def test_bench_startup_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench import startup

    out_json = tmp_path / "startup.json"
    assert startup.main(["--rounds", "2", "--only", "mmapkit", "--json", str(out_json)]) == 0
    assert "== startup ==" in capsys.readouterr().out
    doc = json.loads(out_json.read_text())
    got = {(m["case"], m["impl"]): m for m in doc["measurements"]}
    for case in ("import", "import + create a store", "import + reopen a store", "--help"):
        m = got[(case, "mmapkit")]
        assert m["n"] == 2 and m["median"] > 0 and m["unit"] == "ms", m
        assert (f"{case}, over bare python", "mmapkit") in got
    assert got[("interpreter start", "python -c pass")]["median"] > 0
    # the counts are those tests/test_import_time.py bounds, seen through the bench
    assert got[("modules loaded by import", "mmapkit")]["median"] <= 15
    assert 15 < got[("modules loaded by import + reopen", "mmapkit")]["median"] <= 100
    assert not any(impl in ("lmdb", "rocksdict", "diskcache") for _, impl in got)


def test_fork_child_and_reap() -> None:
    import os
    import signal

    _harness.reap(_harness.fork_child(lambda: None))

    def boom() -> None:
        raise ValueError("boom")

    with pytest.raises(RuntimeError, match="exit 1"):
        _harness.reap(_harness.fork_child(boom))
    with pytest.raises(RuntimeError, match="exit -9"):  # a kill is a failure by default
        _harness.reap(_harness.fork_child(lambda: os.kill(os.getpid(), signal.SIGKILL)))
    _harness.reap(_harness.fork_child(lambda: os.kill(os.getpid(), signal.SIGKILL)),
                  expect=-signal.SIGKILL)


def test_spawn_imports_this_checkout_and_says_ready() -> None:
    code = "import bench._harness as h, sys; print('ready', flush=True); print(h.ROOT)"
    p = _harness.spawn("-c", code, stdin=None)
    _harness.ready(p)
    # (not communicate(timeout=...): it reads the raw descriptor and misses what ready()'s
    # readline already buffered, here the whole second line)
    assert p.stdout is not None
    with p.stdout:
        out = p.stdout.read()
    p.wait(timeout=60)
    assert out.strip() == _harness.ROOT and p.returncode == 0
    p = _harness.spawn("-c", "print('no')")
    with pytest.raises(RuntimeError, match="failed to start"):
        _harness.ready(p, "the child")
    p.communicate(timeout=60)


@pytest.mark.timeout(120)
def test_bench_kvopen_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench import kvopen

    out_json = tmp_path / "kvopen.json"
    assert kvopen.main(["--quick", "--repeat", "1", "--only", "mmapkit",
                        "--json", str(out_json)]) == 0
    assert "== kvopen ==" in capsys.readouterr().out
    doc = json.loads(out_json.read_text())
    got = {(m["case"], m["impl"]): m for m in doc["measurements"]}
    for form in ("int", "100 B"):
        for impl in ("mmapkit", "mmapkit (records)", "mmapkit (dict floor)"):
            m = got[(f"open + first get, 20k keys, {form} values", impl)]
            assert m["n"] == 1 and 0 < m["median"] < 60 and m["unit"] == "s", m
    assert not any(impl in ("lmdb", "rocksdict") for _, impl in got)
