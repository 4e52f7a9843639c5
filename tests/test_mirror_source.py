"""RedisStreamSource: the Journal consumer API on the far side of a mirror; a consumer
killed mid-batch (SIGKILL, unrelated process) gets its unacknowledged records delivered
again, to itself on return or to another consumer after the idle time."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _redis_server import RedisServer, redis_server
from conftest import spawn

from mmapkit import ClosedError, Journal, MirrorError, TargetMismatchError
from mmapkit.mirror import Mirror, RedisStreamSink, RedisStreamSource

pytestmark = pytest.mark.redis
STREAM = "events"

CHILD = """
import json, sys, time
from mmapkit.mirror import RedisStreamSource
c = RedisStreamSource(sys.argv[1], "events").consumer("g", sys.argv[2], claim_idle_ms=300)
recs = c.poll(int(sys.argv[3]), timeout=10)
c.commit(recs[len(recs) // 2].offset)   # half processed and committed...
print(json.dumps([r.offset for r in recs]), flush=True)
time.sleep(600)                          # ...then killed mid-batch
"""


@pytest.fixture
def mirrored(tmp_path: Path) -> Iterator[tuple[RedisServer, Path]]:
    with redis_server(tmp_path / "redis") as server:
        with Journal(tmp_path / "j", create=True) as j:
            j.append_many([b"r%d" % i for i in range(200)])
            assert Mirror(j, RedisStreamSink(server.url, STREAM)).run(
                until_caught_up=True) == 200
        yield server, tmp_path / "j"
        assert Journal.check(tmp_path / "j").ok


def _killed_mid_batch(url: str, name: str, n: int) -> list[int]:
    proc = spawn(CHILD, url, name, str(n))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read()  # type: ignore[union-attr]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()  # type: ignore[union-attr]
    return list(json.loads(line))


def test_poll_commit_position_committed_lag(mirrored: tuple[RedisServer, Path]) -> None:
    server, _ = mirrored
    src = RedisStreamSource(server.url, STREAM)
    with src.consumer("g", "a") as c:
        assert (c.position, c.lag, c.committed) == (0, 200, None)
        recs = c.poll(50, timeout=1)
        assert [r.offset for r in recs] == list(range(50))
        assert [r.value for r in recs[:2]] == [b"r0", b"r1"]
        assert (c.position, c.lag, c.committed) == (50, 150, 0)
        c.commit(20)
        assert c.committed == 20 and c.statistics().pending == 30
        c.commit()
        assert c.committed == 50 and c.statistics().acked == 50
        assert c.poll(1000, timeout=1)[-1].offset == 199
        c.commit()
        assert (c.lag, c.committed) == (0, 200)
        assert c.poll(10, timeout=0.05) == []  # nothing new: waits, returns empty
    with pytest.raises(ClosedError):
        c.poll()
    with src.consumer("g2", "a", reset="latest") as late:  # a new group at the end
        assert late.poll(10, timeout=0.05) == [] and late.position == 200


def test_killed_consumer_gets_its_own_pending_records_again(
        mirrored: tuple[RedisServer, Path]) -> None:
    server, _ = mirrored
    offsets = _killed_mid_batch(server.url, "worker", 40)
    assert offsets == list(range(40))
    src = RedisStreamSource(server.url, STREAM)
    with src.consumer("g", "worker") as c:  # the same name, restarted
        again = c.poll(100, timeout=1)
        assert [r.offset for r in again] == list(range(20, 40))  # the uncommitted half
        assert c.statistics().redelivered == 20
        c.commit()
        nxt = c.poll(5, timeout=1)
        assert [r.offset for r in nxt] == [40, 41, 42, 43, 44]


def test_killed_consumer_records_go_to_another_consumer(
        mirrored: tuple[RedisServer, Path]) -> None:
    server, _ = mirrored
    offsets = _killed_mid_batch(server.url, "dead", 30)
    assert offsets == list(range(30))
    src = RedisStreamSource(server.url, STREAM)
    with src.consumer("g", "alive", claim_idle_ms=300) as c:
        seen: list[int] = []
        for _ in range(40):
            seen += [r.offset for r in c.poll(100, timeout=0.1)]
            if set(range(15, 30)) <= set(seen):
                break
        # new records first (the dead one's were not idle long enough yet), then the
        # dead consumer's unacknowledged ones, each once
        assert set(range(15, 30)) <= set(seen)
        assert sorted(seen) == sorted(set(seen))
        assert not set(range(15)) & set(seen)  # what it committed stays committed
        c.commit()
        assert c.committed is not None and c.committed >= 30


def test_a_foreign_stream_is_a_clear_error(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis", unix=True) as server:
        r = server.client()
        r.xadd("other", {"x": "1"})
        r.close()
        with RedisStreamSource(server.url, "other").consumer("g", "a") as c:
            with pytest.raises(TargetMismatchError, match="no mmapkit mirror wrote"):
                c.poll(10, timeout=0.1)


def test_a_long_poll_outlasts_the_socket_timeout_and_sees_claimable_records(
        mirrored: tuple[RedisServer, Path]) -> None:
    server, _ = mirrored
    src = RedisStreamSource(server.url, STREAM, timeout=0.5)
    with src.consumer("g", "drain") as c:
        while c.poll(1000, timeout=0.1):
            pass  # the group has been given everything; nothing committed yet
        t = time.monotonic()
        assert c.poll(10, timeout=1.2) == []  # blocks in slices: no socket timeout
        assert 1.1 <= time.monotonic() - t < 10
        c.close()
    # "drain" never committed: a consumer polling with a long timeout picks its records up
    # once they are idle long enough, without waiting for the whole timeout
    with src.consumer("g", "heir", claim_idle_ms=300) as c:
        t = time.monotonic()
        got = c.poll(1000, timeout=30)
        assert got and time.monotonic() - t < 10
        assert c.statistics().redelivered == len(got)


def test_a_deleted_group_is_a_clear_error(mirrored: tuple[RedisServer, Path]) -> None:
    server, _ = mirrored
    with RedisStreamSource(server.url, STREAM).consumer("g", "a") as c:
        assert c.poll(5, timeout=1)
        r = server.client()
        r.xgroup_destroy(STREAM, "g")
        r.close()
        with pytest.raises(MirrorError, match="consumer group or the stream is gone"):
            c.poll(5, timeout=0.1)
