"""log.Shipper / `mmapkit log ship`: every record of a crash-safe log directory lands in a
Redis stream exactly once, across shipper kills (SIGKILL at random moments) and writers
that died with records still in their buffers."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _redis_server import RedisServer, redis_server
from conftest import child_env, exit_code, fork_child, spawn

import mmapkit.kv  # noqa: F401 - loaded before fork: children start fast
from mmapkit import MirrorError, log
from mmapkit.mirror import RedisStreamSink, RedisStreamSource, Shipper

pytestmark = pytest.mark.redis
STREAM = "logs"


def _shipped(server: RedisServer) -> list[tuple[int, int, str]]:
    """(stream, seq, message) of every entry, in stream order (offsets checked dense)."""
    out = []
    with RedisStreamSource(server.url, STREAM).consumer("check", "c") as c:
        while True:
            recs = c.poll(5000, timeout=0.05)
            if not recs:
                break
            for r in recs:
                h = dict(r.headers)
                out.append((int(h["stream"]), int(h["seq"]), r.value.decode()))
                assert r.offset == len(out) - 1
    return out


def _in_log(directory: Path) -> list[tuple[int, int, str]]:
    return [(r.stream, r.sequence, r.message) for r in log.read(directory)]


def _killed_writer(directory: Path, n: int) -> None:
    """A writer process killed with records still in its mapped buffer."""
    proc = spawn("""
        import sys
        from mmapkit.log import Writer
        w = Writer(sys.argv[1], "app")
        for i in range(int(sys.argv[2])):
            w.write("dead %d" % i)
        print("written", flush=True)
        import time; time.sleep(600)
    """, str(directory), str(n))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()  # type: ignore[union-attr]


def test_ship_everything_once_then_only_what_is_new(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    d.mkdir()
    with log.Writer(d, "app") as w:
        for i in range(300):
            w.write(f"live {i}")
    _killed_writer(d, 200)
    with redis_server(tmp_path / "redis", unix=True) as server:
        assert isinstance(log.Shipper, type)  # the lazy export is the same class
        s = log.Shipper(d, RedisStreamSink(server.url, STREAM), batch=64)
        assert s.run(until_caught_up=True) == 500
        with log.Writer(d, "app") as w:
            w.write("one more")
        assert Shipper(d, RedisStreamSink(server.url, STREAM)).run(until_caught_up=True) == 1
        assert Shipper(d, RedisStreamSink(server.url, STREAM)).run(until_caught_up=True) == 0
        got = _shipped(server)
    assert sorted(got) == sorted(_in_log(d)) and len(got) == len(set(got)) == 501
    assert log.check(d).ok


def test_shipper_killed_at_random_moments(tmp_path: Path) -> None:
    """30 shipper kills (fork children) while a writer keeps writing: no record lost, none
    twice."""
    d = tmp_path / "logs"
    d.mkdir()
    rng = random.Random(99)
    with redis_server(tmp_path / "redis", unix=True) as server, \
            log.Writer(d, "app", flush_interval=0.01) as w:
        n = 0
        r = server.client()
        grew = 0
        for _ in range(30):
            for _ in range(rng.randrange(50, 200)):
                w.write(f"msg {n}")
                n += 1
            before = r.xlen(STREAM) if r.exists(STREAM) else 0
            pid = fork_child(lambda: Shipper(d, RedisStreamSink(server.url, STREAM),
                                             batch=40, poll_interval=0.01).run())
            time.sleep(rng.uniform(0, 0.15))
            os.kill(pid, signal.SIGKILL)
            assert exit_code(pid) == -signal.SIGKILL
            grew += (r.xlen(STREAM) if r.exists(STREAM) else 0) > before
        r.close()
        w.flush()
        Shipper(d, RedisStreamSink(server.url, STREAM)).run(until_caught_up=True)
        got = _shipped(server)
    assert grew >= 5
    assert len(got) == len(set(got)) == n
    assert sorted(m for _, _, m in got) == sorted(f"msg {i}" for i in range(n))
    assert log.check(d).ok


def test_ship_command_follows_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    d.mkdir()
    with redis_server(tmp_path / "redis") as server, log.Writer(d, "app") as w:
        for i in range(100):
            w.write(f"a {i}")
        w.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmapkit", "log", "ship", str(d),
             server.url.replace("/0", "/0/" + STREAM), "--progress", "0.2"],
            env=child_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        r = server.client()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (r.xlen(STREAM) if r.exists(STREAM) else 0) < 100:
            time.sleep(0.05)
        for i in range(50):  # followed while it runs
            w.write(f"b {i}")
        w.flush()
        while time.monotonic() < deadline and r.xlen(STREAM) < 150:
            time.sleep(0.05)
        r.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "sent 150" in err and "stopped" in err
        assert len(_shipped(server)) == 150


def test_a_sink_without_marks_is_refused(tmp_path: Path) -> None:
    class NoMarks:
        target = "kafka://h:1/t"

        def open(self, source_id: str) -> int:
            return 0

        def send(self, records: object) -> None:
            raise AssertionError("never reached")

        def close(self) -> None:
            pass

    with pytest.raises(MirrorError, match="cannot keep a log's resume marks"):
        Shipper(tmp_path, NoMarks())
    with pytest.raises(FileNotFoundError):
        Shipper(tmp_path / "missing", RedisStreamSink("redis://h/0", "s"))


def test_redis_killed_and_restarted_while_shipping(tmp_path: Path) -> None:
    """R: the server goes away mid-ship (SIGKILL, AOF on); the shipper backs off, reopens,
    re-reads its marks and sends only what the target lacks."""
    d = tmp_path / "logs"
    d.mkdir()
    server = RedisServer(tmp_path / "redis", aof=True)
    server.start()
    try:
        with log.Writer(d, "app", flush_interval=0.01) as w:
            s = Shipper(d, RedisStreamSink(server.url, STREAM, timeout=1.0), batch=50,
                        poll_interval=0.01, max_backoff=0.2)
            s.start()
            for i in range(3000):
                w.write(f"m {i}")
                if i == 1500:
                    server.kill()
                    time.sleep(0.3)
                    server.start()
            w.flush()
            r = server.client()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and r.xlen(STREAM) < 3000:
                time.sleep(0.05)
            r.close()
            # The last batch is in Redis a moment before the shipper moves past it.
            while time.monotonic() < deadline and (s.statistics().position or 0) < 3000:
                time.sleep(0.01)
            st = s.statistics()
            s.stop()
        got = _shipped(server)
        assert sorted(m for _, _, m in got) == sorted(f"m {i}" for i in range(3000))
        assert len(set(got)) == len(got) == 3000
        assert st.position == 3000
        # AOF kept every acknowledged batch: nothing sent twice.  (A batch the server took
        # as it was killed, its reply lost, is found by the marks and not sent again: then
        # fewer than 3000 count as sent by this run.)
        assert 3000 - 2 * 50 <= st.sent <= 3000
        assert log.check(d).ok
    finally:
        server.kill()
