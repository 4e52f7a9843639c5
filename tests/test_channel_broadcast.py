"""Broadcast channels: every subscriber sees every message, late ones start at the oldest
retained, slow ones learn they were overrun (never a silent drop)."""

from __future__ import annotations

import asyncio
import os
import queue
import struct
from pathlib import Path

import pytest

from mmapkit.errors import EndOfChannel, ModeConflictError, OverrunError
from mmapkit.ipc import Channel

pytestmark = pytest.mark.timeout(120)


def _seq(i: int) -> bytes:
    return struct.pack("<Q", i) + b"b" * (i % 40)


def _num(msg: bytes) -> int:
    return int(struct.unpack_from("<Q", msg)[0])


def test_every_subscriber_gets_every_message(tmp_path: Path) -> None:
    path = tmp_path / "b"
    ch = Channel.create(path, capacity=1 << 20, broadcast=True)
    outs = []
    pids = []
    r, w = os.pipe()
    for k in range(3):
        out = tmp_path / f"s{k}"
        outs.append(out)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                sub = Channel.open(path).subscribe(f"sub{k}")
                os.write(w, b"r")
                got = []
                try:
                    while True:
                        got.append(_num(sub.recv(timeout=30)))
                except EndOfChannel:
                    pass
                out.write_text(",".join(map(str, got)))
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for _ in range(3):
        os.read(r, 1)
    for i in range(5000):
        ch.send(_seq(i))
    ch.finish()
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    for out in outs:
        assert [int(x) for x in out.read_text().split(",")] == list(range(5000))
    info = ch.describe()
    assert sorted(p["name"] for p in info["participants"] if p["role"] == "subscriber") == [
        "sub0", "sub1", "sub2"]
    ch.check()
    ch.close()


def test_late_subscriber_starts_at_oldest_retained() -> None:
    with Channel.anonymous(1024, broadcast=True) as ch:
        for i in range(100):  # 100 x 16..56 B frames: only the newest fit in 1 KiB
            ch.send(_seq(i))
        late = ch.subscribe("late")
        first = _num(late.recv_nowait())
        assert 50 < first < 99
        rest = [_num(m) for m in late.recv_many(1000)]
        assert rest == list(range(first + 1, 100))
        with pytest.raises(queue.Empty):
            late.recv_nowait()


def test_slow_subscriber_is_told_it_was_overrun(tmp_path: Path) -> None:
    path = tmp_path / "b"
    with Channel.create(path, capacity=1024, broadcast=True) as ch, \
            Channel.open(path) as reader:
        sub = reader.subscribe("slow")
        for i in range(10):
            ch.send(_seq(i))
        assert _num(sub.recv()) == 0
        for i in range(10, 200):
            ch.send(_seq(i))
        with pytest.raises(OverrunError) as info:
            sub.recv()
        assert info.value.lost_bytes > 0
        got = [_num(sub.recv_nowait())]
        got += [_num(m) for m in sub.recv_many(1000)]
        assert got == list(range(got[0], 200)) and got[0] > 10
        # every message is either received or inside an OverrunError: none vanish silently


def test_named_subscriber_resumes(tmp_path: Path) -> None:
    path = tmp_path / "b"
    with Channel.create(path, capacity=1 << 16, broadcast=True) as ch:
        for i in range(10):
            ch.send(_seq(i))
        with Channel.open(path) as a:
            a.subscribe("a")
            assert [_num(a.recv()) for _ in range(3)] == [0, 1, 2]
            with Channel.open(path) as twin:
                with pytest.raises(ModeConflictError, match="in use"):
                    twin.subscribe("a")
        with Channel.open(path) as again:
            again.subscribe("a")
            assert _num(again.recv()) == 3


def test_broadcast_misuse() -> None:
    with Channel.anonymous(1024, broadcast=True) as ch:
        with pytest.raises(ModeConflictError, match="subscribe"):
            ch.recv_nowait()
        with pytest.raises(ModeConflictError):
            with ch.reserve(8):
                pass
        ch.subscribe("x")
        with pytest.raises(ModeConflictError, match="already"):
            ch.subscribe("y")
        with pytest.raises(ModeConflictError):
            with ch.recv_view():
                pass
        ch.send_obj({"k": [1, 2]})
        assert ch.recv_obj() == {"k": [1, 2]}
    with pytest.raises(ValueError):
        Channel.anonymous(1024, broadcast=True, multi_consumer=True)
    with Channel.anonymous(1024) as plain, pytest.raises(ModeConflictError):
        plain.subscribe("x")


def test_broadcast_asyncio_subscriber() -> None:
    with Channel.anonymous(4096, broadcast=True, spin=0) as ch:
        sub = ch.subscribe("aio")
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                import time
                time.sleep(0.2)
                for i in range(20):
                    ch.send(_seq(i))
                ch.finish()
                code = 0
            finally:
                os._exit(code)

        async def main() -> list[int]:
            got = []
            try:
                while True:
                    got.append(_num(await sub.arecv(timeout=30)))
            except EndOfChannel:
                return got

        assert asyncio.run(main()) == list(range(20))
        os.waitpid(pid, 0)


def test_caught_up_subscriber_loses_nothing_when_a_big_message_wraps() -> None:
    with Channel.anonymous(256, broadcast=True) as ch:
        sub = ch.subscribe("s")
        for i in range(50):
            ch.send(_seq(i))
            assert _num(sub.recv()) == i
        big = struct.pack("<Q", 999) + b"x" * 232  # 248 B: needs the whole ring
        ch.send(big)  # the PAD before it is evicted at once, with nothing else
        assert sub.recv() == big
        ch.send(_seq(1000))
        assert _num(sub.recv()) == 1000


def test_recv_many_keeps_messages_and_reports_the_overrun_next() -> None:
    with Channel.anonymous(1024, broadcast=True) as ch:
        sub = ch.subscribe("s")
        for i in range(5):
            ch.send(_seq(i))
        assert [_num(m) for m in sub.recv_many(2)] == [0, 1]
        for i in range(5, 200):
            ch.send(_seq(i))
        with pytest.raises(OverrunError):
            sub.recv_many(10)
        got = [_num(m) for m in sub.recv_many(1000)]
        assert got == list(range(got[0], 200))


def test_broadcast_in_strict_ordering_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMAPKIT_CHANNEL_STRICT", "1")
    with Channel.anonymous(1 << 20, broadcast=True) as ch:  # holds all: no overrun here
        sub = ch.subscribe("s")
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for i in range(2000):
                    ch.send(_seq(i))
                ch.finish()
                code = 0
            finally:
                os._exit(code)
        got = []
        with pytest.raises(EndOfChannel):
            while True:
                got.append(_num(sub.recv(timeout=30)))
        os.waitpid(pid, 0)
        assert got == list(range(2000))


def test_several_producers_broadcast() -> None:
    with Channel.anonymous(1 << 20, broadcast=True, multi_producer=True) as ch:
        sub = ch.subscribe("all")
        pids = []
        ready_r, ready_w = os.pipe()  # all register before any finishes (see the MPMC gate)
        go_r, go_w = os.pipe()
        for k in range(3):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    for i in range(1000):
                        ch.send(struct.pack("<QQ", k, i))
                        if i == 0:
                            os.write(ready_w, b"r")
                            os.read(go_r, 1)
                    ch.finish()
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        for _ in range(3):
            os.read(ready_r, 1)
        os.write(go_w, b"ggg")
        got: list[tuple[int, int]] = []
        with pytest.raises(EndOfChannel):
            while True:
                got.append(struct.unpack("<QQ", sub.recv(timeout=30)))
        for pid in pids:
            os.waitpid(pid, 0)
        for k in range(3):
            assert [i for kk, i in got if kk == k] == list(range(1000))
        ch.check()
