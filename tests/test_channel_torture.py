"""Torture: unrelated producer and consumer processes, all started at the same moment on
one multi-producer/multi-consumer channel (whoever comes first creates it), SIGKILLed at
random instants and restarted.  Afterwards: nobody wedged, every message received was
whole, none twice, every acknowledged send arrived (but for the one message a consumer
killed between recv() returning and recording it can take along), per-producer order
held, and check() is clean.

The short run is in the default suite; ``-m slow`` runs it for 35 s.
"""

from __future__ import annotations

import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import child_env

from mmapkit.ipc import Channel

REC = struct.Struct("<HHI")  # producer, incarnation, sequence number

WORKER = textwrap.dedent("""
    import os, queue, random, struct, sys, time, zlib
    from mmapkit.errors import BrokenError, EndOfChannel
    from mmapkit.ipc import Channel

    role, ident, inc, path, gate, stop, record = sys.argv[1:8]
    ident, inc = int(ident), int(inc)
    REC = struct.Struct("<HHI")
    while not os.path.exists(gate):
        time.sleep(0.001)
    try:
        ch = Channel.create(path, capacity=1 << 16, multi_producer=True,
                            multi_consumer=True)
    except FileExistsError:
        ch = Channel.open(path)
    out = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    rnd = random.Random(ident * 1000 + inc)
    if role == "p":
        seq = 0
        while not os.path.exists(stop):
            body = REC.pack(ident, inc, seq) + rnd.randbytes(rnd.choice((0, 9, 100, 3000)))
            msg = body + struct.pack("<I", zlib.crc32(body))
            try:
                ch.send(msg, timeout=0.2)
            except queue.Full:
                continue
            except BrokenError:  # every consumer was killed: wait for a restarted one
                time.sleep(0.01)
                continue
            os.write(out, REC.pack(ident, inc, seq))  # acknowledged
            seq += 1
    else:
        drain = stop + ".drain"
        while True:
            try:
                msg = ch.recv(timeout=0.2)
            except (queue.Empty, BrokenError, EndOfChannel):
                if os.path.exists(drain):
                    break
                continue
            body, (crc,) = msg[:-4], struct.unpack("<I", msg[-4:])
            if len(msg) < REC.size + 4 or zlib.crc32(body) != crc:
                sys.stderr.write(f"torn or foreign message of {len(msg)} bytes\\n")
                sys.exit(3)
            os.write(out, body[:REC.size])
    ch.close()
""")


class Torture:
    def __init__(self, tmp_path: Path, producers: int, consumers: int) -> None:
        self.dir = tmp_path
        self.path = str(tmp_path / "ch")
        self.gate = str(tmp_path / "gate")
        self.stop = str(tmp_path / "stop")
        self.env = child_env()
        self.procs: dict[tuple[str, int], subprocess.Popen[bytes]] = {}
        self.inc: dict[tuple[str, int], int] = {}
        self.kills = {"p": 0, "c": 0}
        self.roles = [("p", i) for i in range(producers)] + [("c", i) for i in range(consumers)]

    def record(self, role: str, ident: int, inc: int) -> Path:
        return self.dir / f"{role}{ident}.{inc}.rec"

    def start(self, key: tuple[str, int]) -> None:
        role, ident = key
        inc = self.inc[key] = self.inc.get(key, -1) + 1
        self.procs[key] = subprocess.Popen(
            [sys.executable, "-c", WORKER, role, str(ident), str(inc), self.path, self.gate,
             self.stop, str(self.record(role, ident, inc))],
            env=self.env, stderr=subprocess.PIPE)

    def run(self, seconds: float, seed: int) -> dict[str, int]:
        rnd = random.Random(seed)
        for key in self.roles:
            self.start(key)
        time.sleep(0.3)
        Path(self.gate).touch()  # all of them at once: creators and openers race
        # On a loaded machine starting Python takes seconds: let them all attach first,
        # then kill mostly processes that are past open() (one in five: anyone, which
        # also hits create, open and attach).
        deadline = time.monotonic() + 120
        while not all(self.attached(key) for key in self.roles):
            if time.monotonic() > deadline:
                pytest.fail("the workers never all opened the channel")
            time.sleep(0.05)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(rnd.uniform(0.05, 0.4))
            ready = [key for key in self.roles if self.attached(key)]
            key = rnd.choice(ready if ready and rnd.random() < 0.8 else self.roles)
            proc = self.procs[key]
            if proc.poll() is not None:
                self.fail(key, proc)
            proc.send_signal(signal.SIGKILL)
            proc.communicate()  # reaps it and closes its pipe
            self.kills[key[0]] += 1
            self.start(key)
        self.calm(200, 120)
        Path(self.stop).touch()
        self.wait_role("p", 60)
        Path(self.stop + ".drain").touch()
        self.wait_role("c", 60)
        return self.verify()

    def attached(self, key: tuple[str, int]) -> bool:
        """Past open(): the worker made its record file."""
        return self.record(key[0], key[1], self.inc[key]).exists()

    def acked_now(self) -> int:
        return sum(p.stat().st_size for p in self.dir.glob("p*.rec")) // REC.size

    def calm(self, messages: int, timeout: float) -> None:
        """No more kills: the survivors of all that must carry on (no wedge)."""
        start = self.acked_now()
        deadline = time.monotonic() + timeout
        while self.acked_now() < start + messages:
            for key, proc in self.procs.items():
                if proc.poll() is not None:
                    self.fail(key, proc)
            if time.monotonic() > deadline:
                for p in self.procs.values():
                    p.kill()
                pytest.fail(f"wedged: {self.acked_now() - start} messages in {timeout} s "
                            "after the last kill")
            time.sleep(0.05)

    def fail(self, key: tuple[str, int], proc: subprocess.Popen[bytes]) -> None:
        err = proc.stderr.read().decode() if proc.stderr else ""
        for p in self.procs.values():
            p.kill()
        pytest.fail(f"{key} exited by itself with {proc.returncode}: {err}")

    def wait_role(self, role: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for key, proc in self.procs.items():
            if key[0] != role:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for p in self.procs.values():
                    p.kill()
                pytest.fail(f"{key} wedged: still running {timeout} s after being told to stop")
            if proc.returncode != 0:
                self.fail(key, proc)
            if proc.stderr is not None:
                proc.stderr.close()

    def read(self, role: str) -> dict[tuple[str, int, int], list[tuple[int, int, int]]]:
        out = {}
        for key in self.roles:
            if key[0] != role:
                continue
            for inc in range(self.inc[key] + 1):
                path = self.record(role, key[1], inc)
                raw = path.read_bytes() if path.exists() else b""
                assert len(raw) % REC.size == 0  # (each record is one small write)
                out[(role, key[1], inc)] = [REC.unpack_from(raw, i)
                                            for i in range(0, len(raw), REC.size)]
        return out

    def verify(self) -> dict[str, int]:
        acked = {r for recs in self.read("p").values() for r in recs}
        got_by_consumer = self.read("c")
        received = [r for recs in got_by_consumer.values() for r in recs]
        assert len(received) == len(set(received)), "a message was delivered twice"
        for recs in got_by_consumer.values():  # per producer incarnation, in order
            last: dict[tuple[int, int], int] = {}
            for prod, inc, seq in recs:
                assert seq > last.get((prod, inc), -1), "a producer's order was broken"
                last[(prod, inc)] = seq
        lost = acked - set(received)
        assert len(lost) <= self.kills["c"], f"{len(lost)} acknowledged messages lost"
        with Channel.open(self.path) as ch:
            ch.check()
            left = ch.describe()["pending_messages"]
        assert left == 0, f"{left} messages left in the ring after the drain"
        return {"acked": len(acked), "received": len(received), "lost": len(lost),
                "producer_kills": self.kills["p"], "consumer_kills": self.kills["c"]}


@pytest.mark.timeout(240)
def test_torture_short(tmp_path: Path) -> None:
    stats = Torture(tmp_path, producers=3, consumers=3).run(4.0, seed=1)
    print(stats)
    assert stats["received"] >= 200
    assert stats["producer_kills"] + stats["consumer_kills"] >= 5


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", [2, 3])
def test_torture_long(tmp_path: Path, seed: int) -> None:
    t0 = time.monotonic()
    stats = Torture(tmp_path, producers=4, consumers=4).run(35.0, seed=seed)
    stats["seconds"] = round(time.monotonic() - t0)
    print(stats)
    assert stats["received"] > 1000
    assert stats["producer_kills"] + stats["consumer_kills"] >= 50
