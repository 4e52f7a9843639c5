"""kill -9 of a logging process at random moments: every acknowledged record survives,
exactly once, in order (also when the kill lands inside a flush or inside recovery)."""

from __future__ import annotations

import os
import random
import signal
import struct
import time
from pathlib import Path

import pytest
from conftest import spawn

import mmapkit.log as mlog
from mmapkit.region import Region

MAX_ROUNDS = 64  # slots in the acknowledgement area


def _child(directory: Path, ack: Region, rnd: int, slot: int, buffer_size: int) -> None:
    """Log records "r<round>-<i>" as fast as possible, acknowledging each returned write."""
    code = 1
    try:
        w = mlog.Writer(directory, "crash", buffer_size=buffer_size, flush_interval=0.002)
        acks = ack.view.cast("Q")
        acks[slot * 2 + 1] = 1  # started
        i = 0
        while True:
            w.write(f"r{rnd}-{i} " + "x" * (i % 150), level=i % 60)
            i += 1
            acks[slot * 2] = i  # write i-1 returned
    except BaseException:
        import traceback

        with open(directory / f"child-error-{rnd}.txt", "w") as f:
            traceback.print_exc(file=f)
        code = 2
    finally:
        os._exit(code)


def _rounds(directory: Path, rounds: int, rng: random.Random, buffer_size: int = 4096
            ) -> dict[int, int]:
    """Run ``rounds`` children, each SIGKILLed at a random moment; acknowledged counts."""
    acked: dict[int, int] = {}
    ack = Region.anonymous(16 * MAX_ROUNDS)
    for rnd in range(rounds):
        slot = rnd % MAX_ROUNDS
        if slot == 0 and rnd:
            ack.view[:] = bytes(len(ack.view))
        pid = os.fork()
        if pid == 0:
            _child(directory, ack, rnd, slot, buffer_size)
        acks = ack.view.cast("Q")
        deadline = time.monotonic() + 10
        while acks[slot * 2 + 1] == 0 and time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                errors = list(directory.glob("child-error-*.txt"))
                raise AssertionError(f"round {rnd}: child died at start, status {status:#x}"
                                     + "".join(e.read_text() for e in errors))
            time.sleep(0.0005)
        # Kill early sometimes (inside recovery or the first flush), usually mid-stream.
        time.sleep(rng.choice([0.0, 0.001, 0.003]) if rng.random() < 0.25
                   else rng.uniform(0.003, 0.03))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        acked[rnd] = acks[slot * 2]
        acks.release()
    ack.close()
    return acked


def _verify(directory: Path, acked: dict[int, int]) -> None:
    by_round: dict[int, list[int]] = {}
    order: list[tuple[int, int]] = []
    for rec in mlog.read(directory, on_damage=lambda p, d: None):
        tag = rec.message.split(" ", 1)[0]
        rnd, i = (int(x) for x in tag[1:].split("-"))
        by_round.setdefault(rnd, []).append(i)
        order.append((rnd, i))
    for rnd, n in acked.items():
        got = by_round.get(rnd, [])
        # Every write that returned is there exactly once and in order; the write in
        # progress at the kill may or may not be.
        assert got[:n] == list(range(n)), f"round {rnd}: acked {n}, read {got[:n + 3]}..."
        assert len(got) in (n, n + 1), f"round {rnd}: acked {n}, read {len(got)}"
    # Rounds follow each other in time.
    rounds_in_order = [r for r, _ in order]
    assert rounds_in_order == sorted(rounds_in_order)
    report = mlog.check(directory)
    assert report.records == sum(len(v) for v in by_round.values())
    # A kill inside a file append can leave a cut frame: its records come back from the
    # buffer ("superseded"); nothing else may be damaged.
    assert all(d.lost is None and d.length < 1 << 16 for _, d in report.damages), report


def test_kill9_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    acked = _rounds(tmp_path, 110, rng)
    assert sum(acked.values()) > 1000  # the children really logged
    _verify(tmp_path, acked)
    # A later writer recovers the dead buffers into files: exactly the records they hold
    # (what read_buffer sees in them, flushed copies included), leaving them empty; the
    # records stay exactly once.
    buffers = sorted(tmp_path.glob("crash.*.mbuf"))
    assert buffers
    left = sum(len(mlog.read_buffer(b)[1]) for b in buffers)
    with mlog.Writer(tmp_path, "crash") as w:
        assert w.statistics().recovered == left
    assert [len(mlog.read_buffer(b)[1]) for b in buffers] == [0] * len(buffers)
    _verify(tmp_path, acked)


def test_kill9_while_chunks_are_cut_and_handed_off(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Small chunks in a larger ring: the kills land in chunk cuts, wake-ups of the flush
    thread, GIL hand-offs and batched appends (the forked children inherit the patch)."""
    from mmapkit.log import writer as writer_mod

    monkeypatch.setattr(writer_mod, "CHUNK", 1500)
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    acked = _rounds(tmp_path, 40, rng, buffer_size=32768)
    assert sum(acked.values()) > 1000
    _verify(tmp_path, acked)


@pytest.mark.slow
def test_kill9_soak(tmp_path: Path) -> None:
    rng = random.Random(1)
    acked = _rounds(tmp_path, 1000, rng)
    _verify(tmp_path, acked)


CHILD = """
import os, sys, mmap
import mmapkit.log as mlog
w = mlog.Writer(sys.argv[1], "spawned", buffer_size=8192, flush_interval=0.003)
fd = os.open(sys.argv[2], os.O_RDWR)
acks = memoryview(mmap.mmap(fd, 8)).cast("Q")
i = 0
while True:
    w.write(f"s-{i}")
    i += 1
    acks[0] = i
"""


def test_kill9_unrelated_process(tmp_path: Path) -> None:
    """Same guarantee for an unrelated (spawned, not forked) process."""
    ackfile = tmp_path / "ack"
    ackfile.write_bytes(bytes(8))
    logdir = tmp_path / "logs"
    total = 0
    for rnd in range(3):
        p = spawn(CHILD, str(logdir), str(ackfile))
        deadline = time.monotonic() + 20
        while struct.unpack("<Q", ackfile.read_bytes())[0] < total + 200:
            assert p.poll() is None, p.stderr.read() if p.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(random.uniform(0.0, 0.05))
        p.kill()
        p.wait()
        assert p.stdout is not None and p.stderr is not None
        p.stdout.close()
        p.stderr.close()
        acked = struct.unpack("<Q", ackfile.read_bytes())[0]
        recs = [r for r in mlog.read(logdir) if r.message.startswith("s-")]
        # each spawned process restarts at s-0; count the last run's records
        runs: list[list[int]] = []
        for r in recs:
            i = int(r.message[2:])
            if i == 0:
                runs.append([])
            runs[-1].append(i)
        assert runs[-1][:acked] == list(range(acked))
        assert len(runs[-1]) in (acked, acked + 1)
        assert len(runs) == rnd + 1
        total = 0
        ackfile.write_bytes(bytes(8))
    assert mlog.check(logdir).records > 600
