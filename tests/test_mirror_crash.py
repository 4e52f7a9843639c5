"""The mirror killed at random moments, Redis killed and restarted: the target ends with
journal offsets 0..N-1 exactly once, in order (real redis-server, real SIGKILL)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _redis_server import RedisServer, redis_server
from conftest import child_env, exit_code, fork_child

import mmapkit.journal.consumer
import mmapkit.kv  # noqa: F401
from mmapkit import Journal
from mmapkit.mirror import Mirror, RedisStreamSink

pytestmark = pytest.mark.redis

STREAM = "events"


def verify_target(server: RedisServer, jdir: Path, stream: str = STREAM) -> int:
    """The stream holds every journal record once, in order, with its bytes; the journal
    verifies.  Returns the record count."""
    r = server.client()
    try:
        entries = r.xrange(stream)
    finally:
        r.close()
    with Journal(jdir) as j:
        expected = list(j.reader())
    ids = [e[0] for e in entries]
    assert ids == [b"%d-1" % rec.offset for rec in expected], "missing, duplicate or reordered"
    assert [rec.offset for rec in expected] == list(range(len(expected)))
    for (_, fields), rec in zip(entries, expected, strict=True):
        assert fields[b"v"] == rec.value
        assert int(fields[b"t"]) == rec.timestamp_ms
        assert fields.get(b"k") == rec.key
    report = Journal.check(jdir)
    assert report.ok, report.problems
    return len(expected)


def _append(j: Journal, rng: random.Random, n: int) -> None:
    if n:
        j.append_many([(rng.randbytes(rng.randrange(0, 300)),
                        b"k%d" % rng.randrange(5) if rng.random() < 0.5 else None,
                        [("h", b"x")] if rng.random() < 0.1 else None)
                       for _ in range(n)])


def _mirror_forever(jdir: str, url: str) -> None:
    Mirror(jdir, RedisStreamSink(url, STREAM, lease_ms=60_000), batch=37).run()


def _cli_mirror(jdir: Path, url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mmapkit", "journal", str(jdir), "mirror", url,
         "--stream", STREAM, "--batch", "37", "--progress", "0"],
        env=child_env(), text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_rounds(tmp_path: Path, rounds: int, seed: int) -> tuple[int, int]:
    """``rounds`` mirrors killed by SIGKILL at random moments (every tenth an unrelated
    ``mmapkit journal mirror`` process, the others fork children), while the test keeps
    appending.  Returns (records, rounds in which the stream grew)."""
    rng = random.Random(seed)
    jdir = tmp_path / "j"
    grew = 0
    with redis_server(tmp_path / "redis", unix=True) as server, \
            Journal(jdir, create=True, segment_bytes=64 << 10) as j:
        r = server.client()
        for rnd in range(rounds):
            _append(j, rng, rng.randrange(20, 120))
            before = r.xlen(STREAM) if r.exists(STREAM) else 0
            if rnd % 10 == 9:
                proc = _cli_mirror(jdir, server.url)
                time.sleep(rng.uniform(0.15, 0.6))  # interpreter start, then mid-stream
                _append(j, rng, rng.randrange(10, 60))
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                assert proc.returncode == -signal.SIGKILL, proc.stderr.read()  # type: ignore[union-attr]
                proc.stderr.close()  # type: ignore[union-attr]
            else:
                pid = fork_child(lambda: _mirror_forever(str(jdir), server.url))
                # a fork child opens the target in 5-50 ms here, then sends batches of 37
                time.sleep(rng.uniform(0, 0.06))
                _append(j, rng, rng.randrange(0, 40))
                time.sleep(rng.uniform(0, 0.06))
                os.kill(pid, signal.SIGKILL)
                assert exit_code(pid) == -signal.SIGKILL
            grew += (r.xlen(STREAM) if r.exists(STREAM) else 0) > before
        r.close()
        # a last mirror, left to finish: it resumes from what the target holds
        Mirror(jdir, RedisStreamSink(server.url, STREAM)).run(until_caught_up=True)
        n = verify_target(server, jdir)
    return n, grew


def test_mirror_killed_at_random_moments_100_rounds(tmp_path: Path) -> None:
    n, grew = kill_rounds(tmp_path, 100, seed=1313)
    assert n > 5000
    assert grew >= 20, f"only {grew} of 100 kills came after the mirror had sent anything"


@pytest.mark.slow
def test_mirror_killed_at_random_moments_soak(tmp_path: Path) -> None:
    _, grew = kill_rounds(tmp_path, 600, seed=int(time.time()))
    assert grew >= 120


@pytest.mark.parametrize("aof", [True, False], ids=["aof", "no-persistence"])
def test_redis_killed_and_restarted_mid_stream(tmp_path: Path, aof: bool) -> None:
    """SIGKILL redis-server while the mirror sends, restart it on the same port: with AOF
    the target keeps what it acknowledged and the mirror goes on from there; without
    persistence the stream is gone and the mirror sends everything again.  Either way the
    target ends complete, each offset once."""
    jdir = tmp_path / "j"
    server = RedisServer(tmp_path / "redis", aof=aof)
    server.start()
    stop = threading.Event()
    try:
        with Journal(jdir, create=True) as j:
            def appender() -> None:
                rng = random.Random(7)
                while not stop.is_set():
                    _append(j, rng, 50)
                    time.sleep(0.002)

            m = Mirror(jdir, RedisStreamSink(server.url, STREAM, timeout=1.0), batch=100,
                       max_backoff=0.2)
            m.start()
            t = threading.Thread(target=appender)
            t.start()
            try:
                assert m.wait(2000, timeout=30)
                server.kill()
                time.sleep(0.3)
                assert m.statistics().state == "reconnecting"
                server.start()
                time.sleep(0.3)
            finally:
                stop.set()
                t.join()
            assert m.wait(timeout=30), m.statistics()
            st = m.statistics()
            m.stop()
            assert st.reconnects >= 1 and st.last_error
            assert "cannot reach Redis" in st.last_error or "lease" in st.last_error
        n = verify_target(server, jdir)
        assert n >= 2000
        if aof:  # nothing sent twice: the AOF kept the acknowledged prefix
            # (a batch the server took as it was killed, its reply lost, is in the AOF and
            # found on reconnect: not sent again, so not counted as sent by this run)
            assert n - 100 <= st.sent <= n
        else:
            assert st.sent > n - 1  # the lost prefix was sent again
    finally:
        server.kill()
