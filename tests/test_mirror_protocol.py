"""Each transition of the mirror loop (mmapkit/mirror/_core.py state table), stopped at a
pause point in an unrelated process and killed or raced there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _redis_server import RedisServer, redis_server
from conftest import child_env

from mmapkit import Journal, TargetOwnedError
from mmapkit.mirror import Mirror, RedisStreamSink

pytestmark = pytest.mark.redis
STREAM = "events"


def _paused_mirror(tmp_path: Path, server: RedisServer, point: str, *extra: str
                   ) -> subprocess.Popen[str]:
    env = child_env()
    env["MMAPKIT_PAUSE"] = point
    env["MMAPKIT_PAUSE_DIR"] = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmapkit", "journal", str(tmp_path / "j"), "mirror",
         server.url, "--stream", STREAM, "--batch", "10", "--progress", "0", *extra],
        env=env, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    reached = tmp_path / f"{point}.reached"
    deadline = time.monotonic() + 30
    while not reached.exists():
        assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "pause point never reached"
        time.sleep(0.01)
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stderr.close()  # type: ignore[union-attr]


def _ids(server: RedisServer) -> list[bytes]:
    r = server.client()
    try:
        return [e[0] for e in r.xrange(STREAM)]
    finally:
        r.close()


def test_m3_a_second_mirror_is_refused_while_the_first_holds_the_target(
        tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis", unix=True) as server, \
            Journal(tmp_path / "j", create=True) as j:
        j.append_many([b"x%d" % i for i in range(25)])
        proc = _paused_mirror(tmp_path, server, "mirror.opened")  # M1-M3 done
        with pytest.raises(TargetOwnedError):
            Mirror(j, RedisStreamSink(server.url, STREAM)).run()
        assert _ids(server) == []
        (tmp_path / "mirror.opened.go").touch()
        deadline = time.monotonic() + 30
        while len(_ids(server)) < 25 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)  # clean stop: exit 0, the lease is given back
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert Mirror(j, RedisStreamSink(server.url, STREAM)).run(until_caught_up=True) == 0
        assert _ids(server) == [b"%d-1" % i for i in range(25)]
    assert Journal.check(tmp_path / "j").ok


def test_m5_m6_killed_after_the_ack_before_the_commit(tmp_path: Path) -> None:
    """Killed between the target's acknowledgement and the local commit: the local commit
    is behind, the target is not; the next mirror resumes from the target (no duplicate)."""
    with redis_server(tmp_path / "redis", unix=True) as server, \
            Journal(tmp_path / "j", create=True) as j:
        j.append_many([b"x%d" % i for i in range(25)])
        proc = _paused_mirror(tmp_path, server, "mirror.sent")
        assert _ids(server) == [b"%d-1" % i for i in range(10)]  # first batch acked
        _kill(proc)
        assert j.consumer_offsets().get("mirror") is None  # M6 never ran
        m = Mirror(j, RedisStreamSink(server.url, STREAM), batch=10)
        assert m.run(until_caught_up=True) == 15  # not 25: the target said where to go on
        assert _ids(server) == [b"%d-1" % i for i in range(25)]
        assert j.consumer_offsets()["mirror"] == 25
    assert Journal.check(tmp_path / "j").ok


def test_m4_killed_between_polls_and_sigterm_exits_zero(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis", unix=True) as server, \
            Journal(tmp_path / "j", create=True) as j:
        j.append_many([b"x%d" % i for i in range(30)])
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmapkit", "journal", str(tmp_path / "j"), "mirror",
             server.url, "--stream", STREAM, "--progress", "0.1"],
            env=child_env(), text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while len(_ids(server)) < 30 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "sent 30, position 30, lag 0" in err
        assert "mirror: stopped, sent 30, position 30" in err
        res = subprocess.run(
            [sys.executable, "-m", "mmapkit", "journal", str(tmp_path / "j"), "mirror",
             server.url, "--stream", STREAM, "--once"],
            env=child_env(), text=True, capture_output=True, timeout=60)
        assert res.returncode == 0 and "sent 0, position 30" in res.stdout, res.stderr
        res = subprocess.run(
            [sys.executable, "-m", "mmapkit", "journal", str(tmp_path / "j"), "mirror",
             "redis://127.0.0.1:1/0"], env=child_env(), text=True, capture_output=True,
            timeout=60)
        assert res.returncode == 2 and "names no stream" in res.stderr


@pytest.mark.parametrize("on_gap", ["error", "skip"])
def test_m3_m4_retention_passes_the_mirror_between_seek_and_poll(tmp_path: Path,
                                                                 on_gap: str) -> None:
    """Paused after the seek (M3), retention deletes the records it was about to send:
    by default it stops saying so (exit 1, nothing sent); with --on-gap skip it goes on
    after the gap."""
    with redis_server(tmp_path / "redis", unix=True) as server, \
            Journal(tmp_path / "j", create=True, segment_bytes=4096, retention_bytes=8192,
                    delete_delay_ms=0) as j:
        j.append(b"first")
        proc = _paused_mirror(tmp_path, server, "mirror.opened", "--on-gap", on_gap)
        for i in range(400):
            j.append(b"%04d" % i + b"." * 60)
        j.retain()
        start = j.start_offset
        assert start > 1
        (tmp_path / "mirror.opened.go").touch()
        if on_gap == "error":
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 1 and "retention deleted records" in err, err
            assert _ids(server) == []
        else:
            deadline = time.monotonic() + 30
            while len(_ids(server)) < 401 - start and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert _ids(server) == [b"%d-1" % i for i in range(start, 401)]
    assert Journal.check(tmp_path / "j").ok
