"""kill -9 at random instants: every acknowledged write survives, and check() is clean.

Each round forks a writer that opens the store and runs a deterministic sequence of
operations (sets of growing values, deletes, batches), acknowledging each one through a
pipe once it returned.  The parent SIGKILLs it after a random delay.  The store then must
equal the model after the last acknowledged operation, or after the one in flight.  A
small capacity makes growth and compaction happen in most rounds.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from mmapkit.kv import KV
from mmapkit.kv import store as kv_store

KEYS = 40


def op(i: int) -> tuple[str, Any]:
    """Operation number ``i``: ("set", (key, value)), ("del", key) or ("batch", [...])."""
    key = f"k{(i * 7919) % KEYS:03d}"
    if i % 11 == 5:
        return ("del", key)
    if i % 13 == 3:
        return ("batch", [(f"b{(i + j) % 9}", (i, j, b"y" * (i % 50))) for j in range(3)])
    if i % 3 == 0:
        return ("set", (key, i))
    return ("set", (key, [i, b"x" * (i % 400)]))


def apply(model: dict[str, Any], i: int) -> None:
    kind, arg = op(i)
    if kind == "del":
        model.pop(arg, None)
    elif kind == "batch":
        model.update(arg)
    else:
        model[arg[0]] = arg[1]


def run_op(kv: KV, i: int) -> None:
    kind, arg = op(i)
    if kind == "del":
        kv.pop(arg, None)
    elif kind == "batch":
        with kv.batch():
            for k, v in arg:
                kv[k] = v
    else:
        kv[arg[0]] = arg[1]


def writer(path: Path, start: int, ack: int, multiprocess: bool) -> None:
    code = 1
    try:
        with KV(path, capacity=4096, multiprocess=multiprocess) as kv:
            i = start
            while True:
                run_op(kv, i)
                os.write(ack, struct.pack("<Q", i))
                i += 1
    except BaseException:  # pragma: no cover - only reached on a bug; the parent sees it
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def crash_rounds(path: Path, rounds: int, *, multiprocess: bool = False,
                 max_delay: float = 0.012, seed: int = 1) -> dict[str, int]:
    rng = random.Random(seed)
    model: dict[str, Any] = {}
    done = 0  # operations known applied
    stats = {"rounds": 0, "in_flight_applied": 0, "compactions": 0}
    for _ in range(rounds):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            writer(path, done, w, multiprocess)
        os.close(w)
        data = b""
        deadline = time.monotonic() + rng.uniform(0, max_delay)
        os.set_blocking(r, False)
        while time.monotonic() < deadline:  # drain: a full pipe would stall the writer
            try:
                data += os.read(r, 1 << 16)
            except BlockingIOError:
                time.sleep(0.0005)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status), "the writer died on its own: it hit an error"
        os.set_blocking(r, True)
        while chunk := os.read(r, 1 << 16):
            data += chunk
        os.close(r)
        acked = [struct.unpack_from("<Q", data, o)[0] for o in range(0, len(data) - 7, 8)]
        for i in acked:
            assert i == done
            apply(model, i)
            done += 1
        report = KV.check(path) if path.exists() else None
        assert report is None or report.ok, report
        if report is not None:
            stats["compactions"] = max(stats["compactions"], 0)
        with KV(path, capacity=4096, multiprocess=multiprocess) as kv:
            # (keys "c…" belong to live companion processes, if any)
            state = {k: v for k, v in kv.items() if not k.startswith("c")}
            stats["compactions"] = kv.statistics().compactions
        if state != model:
            nxt = dict(model)
            apply(nxt, done)
            assert state == nxt, f"round {stats['rounds']}: lost acknowledged writes"
            model = nxt
            done += 1
            stats["in_flight_applied"] += 1
        stats["rounds"] += 1
    assert KV.check(path).ok
    return stats


def test_kill9_writer_200_rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kv_store, "_CHURN_NS", 0)  # compact in (nearly) every round
    stats = crash_rounds(tmp_path / "crash.kv", 200)
    assert stats["rounds"] == 200
    # The small capacity forces compactions: 20-40 here on a quiet machine, 4-7 on a
    # loaded one (less gets done before each kill), so only "some" is asserted.
    assert stats["compactions"] > 0


COMPANION = """
import os, sys, warnings
warnings.simplefilter("error")
from mmapkit.kv import KV
path, stop, role = sys.argv[1], sys.argv[2], sys.argv[3]
with KV(path, multiprocess=True, capacity=4096) as kv:
    i = 0
    while not os.path.exists(stop):
        if role == "writer":
            kv[f"c{i % 50}"] = [i, b"c" * (i % 300)]
            if i % 500 == 0:
                kv.compact()
        else:
            kv.get(f"k{i % 40:03d}")
            kv.get(f"c{i % 50}")
        i += 1
print(i)
"""


def test_kill9_multiprocess_writer_among_live_processes(tmp_path: Path) -> None:
    """The killed writer shares the store with live unrelated processes that write,
    compact and read all along; each round checks the store and the writer's model."""
    among_live_processes(tmp_path, 60)


@pytest.mark.slow
def test_kill9_multiprocess_writer_among_live_processes_soak(tmp_path: Path) -> None:
    among_live_processes(tmp_path, 1000)


def among_live_processes(tmp_path: Path, rounds: int) -> None:
    from conftest import spawn

    path = tmp_path / "shared.kv"
    stop = tmp_path / "stop"
    KV(path, multiprocess=True, capacity=4096).close()
    companions = [spawn(COMPANION, str(path), str(stop), role)
                  for role in ("writer", "reader", "reader")]
    try:
        stats = crash_rounds(path, rounds, multiprocess=True, max_delay=0.03, seed=5)
    finally:
        stop.touch()
        outs = [p.communicate(timeout=60) for p in companions]
    for p, (out, err) in zip(companions, outs, strict=True):
        assert p.returncode == 0 and int(out) > 0, err  # no warning, no error
    assert stats["rounds"] == rounds
    with KV(path, multiprocess=True) as kv:
        assert kv.statistics().compactions > 0


def test_kill9_multiprocess_writer(tmp_path: Path) -> None:
    crash_rounds(tmp_path / "crashm.kv", 60, multiprocess=True, seed=2)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_kill9_writer_soak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Compact whenever full (no doubling of young files): kills land in compactions
    # often, and every round's reopen and check read a small file.
    monkeypatch.setattr(kv_store, "_CHURN_NS", 0)
    crash_rounds(tmp_path / "soak.kv", 3000, max_delay=0.03, seed=3)
    crash_rounds(tmp_path / "soakm.kv", 1000, multiprocess=True, max_delay=0.03, seed=4)
