"""Blocked Channel sides are woken by the other side, in every mode: the sleep slice is made
far longer than the tests' time limits, so a wake-up that only the slice's re-check would
notice (a lost one) fails the test instead of passing late."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import exit_code, fork_child, spawn

from mmapkit.errors import EndOfChannel
from mmapkit.ipc import Channel
from mmapkit.ipc import _wake as wake_module

pytestmark = pytest.mark.timeout(120)

_LATE = 5.0  # a wake-up this late was lost (a slice is 60 s here)
_FLAGS = [{}, {"multi_producer": True}, {"multi_consumer": True},
          {"multi_producer": True, "multi_consumer": True}]
_FLAG_IDS = ["spsc", "mpsc", "spmc", "mpmc"]


@pytest.fixture(autouse=True)
def _long_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wake_module, "_SLICE", 60.0)


def _make(kind: str, tmp_path: Path, capacity: int, **flags: bool) -> Channel:
    if kind == "path":
        return Channel.create(tmp_path / "c", capacity=capacity, spin=0, **flags)
    return Channel.anonymous(capacity, spin=0, **flags)


@pytest.mark.parametrize("kind", ["anonymous", "path"])
@pytest.mark.parametrize("flags", _FLAGS, ids=_FLAG_IDS)
def test_sleeping_receiver_is_woken(kind: str, flags: dict[str, bool], tmp_path: Path) -> None:
    with _make(kind, tmp_path, 4096, **flags) as ch:
        def child() -> None:
            time.sleep(0.3)
            ch.send(b"late")
            time.sleep(0.3)

        pid = fork_child(child)
        t0 = time.monotonic()
        assert ch.recv(timeout=30) == b"late"
        assert time.monotonic() - t0 < _LATE
        assert ch.statistics().empty_waits == 1
        assert exit_code(pid) == 0


@pytest.mark.parametrize("kind", ["anonymous", "path"])
@pytest.mark.parametrize("flags", _FLAGS, ids=_FLAG_IDS)
def test_sleeping_sender_is_woken(kind: str, flags: dict[str, bool], tmp_path: Path) -> None:
    with _make(kind, tmp_path, 64, **flags) as ch:
        ch.send(b"a" * 48)  # the ring is full

        def child() -> None:
            time.sleep(0.3)
            assert ch.recv(timeout=30) == b"a" * 48
            assert ch.recv(timeout=30) == b"b" * 48

        pid = fork_child(child)
        t0 = time.monotonic()
        ch.send(b"b" * 48, timeout=30)
        assert time.monotonic() - t0 < _LATE
        assert ch.statistics().full_waits == 1
        assert exit_code(pid) == 0


@pytest.mark.parametrize("kind", ["anonymous", "path"])
@pytest.mark.parametrize("flags", _FLAGS, ids=_FLAG_IDS)
def test_finish_wakes_a_sleeping_receiver(kind: str, flags: dict[str, bool],
                                          tmp_path: Path) -> None:
    with _make(kind, tmp_path, 4096, **flags) as ch:
        def child() -> None:
            ch.send(b"first")
            time.sleep(0.3)
            ch.finish()
            time.sleep(0.3)

        pid = fork_child(child)
        assert ch.recv(timeout=30) == b"first"
        t0 = time.monotonic()
        with pytest.raises(EndOfChannel):
            ch.recv(timeout=30)
        assert time.monotonic() - t0 < _LATE
        assert exit_code(pid) == 0


def test_sleeping_subscribers_are_all_woken(tmp_path: Path) -> None:
    with Channel.create(tmp_path / "b", capacity=4096, broadcast=True, spin=0) as ch:
        ready_r, ready_w = os.pipe()

        def child(name: str) -> None:
            with Channel.open(tmp_path / "b", spin=0) as sub:
                sub.subscribe(name)
                os.write(ready_w, b"r")
                t0 = time.monotonic()
                assert sub.recv(timeout=30) == b"news"
                assert time.monotonic() - t0 < _LATE

        pids = [fork_child(lambda name=name: child(name)) for name in ("one", "two", "three")]
        for _ in pids:
            assert os.read(ready_r, 1) == b"r"
        time.sleep(0.3)  # all asleep
        ch.send(b"news")
        assert [exit_code(pid) for pid in pids] == [0, 0, 0]


def test_unrelated_sleeper_is_woken(tmp_path: Path) -> None:
    path = tmp_path / "c"
    with Channel.create(path, capacity=4096, spin=0) as ch:
        proc = spawn("""
            import sys, time
            from mmapkit.ipc import Channel
            from mmapkit.ipc import _wake as wake_module
            wake_module._SLICE = 60.0
            with Channel.open(sys.argv[1], spin=0) as ch:
                print("ready", flush=True)
                t0 = time.monotonic()
                msg = ch.recv(timeout=30)
                print(msg.decode(), round(time.monotonic() - t0, 3), flush=True)
        """, str(path))
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # the child sleeps in recv()
        ch.send(b"hello")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        word, took = out.split()
        assert word == "hello"
        assert float(took) < _LATE
