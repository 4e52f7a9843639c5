"""Kafka as a mirror target (:class:`KafkaSink`) and source (:class:`KafkaSource`).

confluent-kafka (librdkafka) is imported when a sink or source is created, never at
``import mmapkit``; without it the constructor raises ``MissingExtraError`` naming the
``kafka`` extra.

Record format in the target (one spelling, see docs/formats.md "Mirror: Kafka"): one
Kafka record per journal record, same value, key and timestamp (CreateTime), the journal
record's own headers first, then two of ours:

- ``mmapkit-offset``: the journal offset, ASCII decimal (``b"1234"``);
- ``mmapkit-source``: the mirror's ``source_id`` (UTF-8), so two journals are never mixed.

Writer protocol (sink <-> broker <-> another sink on the same partition).  Only one
producer per ``transactional.id`` may write; the id is derived from topic and partition
(``mmapkit-mirror.<topic>.<partition>``), so the broker itself is the target's lock.

====  ===========================================  =========================================
step  what the sink does                            what another process may observe after it
====  ===========================================  =========================================
O1    create an idempotent, transactional producer  nothing (no request sent yet)
O2    init_transactions(): the broker bumps the     an older sink with the same id is fenced:
      producer epoch for the id                     its next produce/commit fails
                                                    (PRODUCER_FENCED -> TargetOwnedError).
                                                    Kafka aborts its open transaction; Tansu
                                                    0.6 leaves what had landed visible (see
                                                    docs/mirror-kafka.md)
O3    read back: a read_committed consumer reads    nothing (read only)
      the partition's tail; the last record's
      ``mmapkit-offset`` + 1 is the resume point
S1    begin_transaction()                           nothing
S2    produce() each record (pause point            Kafka: nothing to read_committed readers.
      ``kafka.sink.produced`` after a flush)        Tansu: the records that reached the
                                                    broker, in order (a prefix of the batch)
S3    commit_transaction(): waits for every ack,    the whole batch, after everything before
      then writes the commit marker                 it; send() returns
====  ===========================================  =========================================

Why this is exactly once in the target: a batch lands only through S2/S3 of the one
unfenced producer, in journal order (idempotence: no reorder, no duplicate on retry).  A
sink killed anywhere leaves either nothing, a committed batch, or (S2, Tansu) a prefix of
a batch; the next sink's O2 stops the dead one's epoch from writing anything more, and O3
resumes right after the last record a reader can see, so the prefix is never sent twice.
On Apache Kafka the unfinished batch is aborted at O2 and sent again after O3.  An error
in S2/S3 aborts the transaction, drops the producer and raises ``SinkUnavailableError``;
the next ``open()`` runs O1-O3 again.

Reader side (:class:`KafkaSource`): a consumer group member with
``isolation.level=read_committed`` and manual commits, so a member killed before its
commit leaves its records to the next owner of the partition (at least once).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .._testhooks import PAUSES, pause
from ..errors import (
    ClosedError,
    MirrorError,
    MissingExtraError,
    SinkUnavailableError,
    TargetMismatchError,
    TargetOwnedError,
)

if TYPE_CHECKING:
    from ..journal import Record

__all__ = ["OFFSET_HEADER", "SOURCE_HEADER", "KafkaConsumer", "KafkaRecord", "KafkaSink",
           "KafkaSource", "split_headers"]

OFFSET_HEADER = "mmapkit-offset"
SOURCE_HEADER = "mmapkit-source"

# Kafka's legal topic names (kafka.common.internals.Topic).
_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")

# Broker/librdkafka error names meaning "another producer with our transactional.id took
# over": the fenced sink must stop, never retry.
_FENCED = frozenset({"PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH", "_FENCED",
                     "INVALID_PRODUCER_ID_MAPPING"})

# Errors about a record's size: no retry or reconnect can deliver it.
_TOO_LARGE = frozenset({"MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE",
                        "MESSAGE_TOO_LARGE"})

_log = logging.getLogger("mmapkit.mirror.kafka")


def _client_module() -> Any:
    try:
        import confluent_kafka
    except ImportError as exc:
        raise MissingExtraError(
            "the Kafka mirror needs confluent-kafka: pip install 'mmapkit[kafka]'") from exc
    return confluent_kafka


def _check_args(bootstrap: object, topic: object, partition: object) -> None:
    if not isinstance(bootstrap, str):
        raise TypeError(f"bootstrap must be a str like 'host:9092', got "
                        f"{type(bootstrap).__name__}")
    if not bootstrap.strip() or any(not part.strip() for part in bootstrap.split(",")):
        raise ValueError(f"bootstrap must list brokers as 'host:port[,host:port...]', got "
                         f"{bootstrap!r}")
    if not isinstance(topic, str):
        raise TypeError(f"topic must be a str, got {type(topic).__name__}")
    if not _TOPIC_RE.fullmatch(topic) or topic in (".", ".."):
        raise ValueError(f"{topic!r} is not a legal Kafka topic name (1-249 characters "
                         f"from A-Z a-z 0-9 . _ -)")
    if not isinstance(partition, int) or isinstance(partition, bool) or partition < 0:
        raise ValueError(f"partition must be an int >= 0, got {partition!r}")


class _Errors:
    """librdkafka's error and log callbacks for one client: its log lines go to the
    ``mmapkit.mirror.kafka`` logger (not stderr), and the last connection problem goes
    into our error messages ("connection refused" says more than "timed out")."""

    def __init__(self) -> None:
        self.last: str | None = None

    def error_cb(self, err: Any) -> None:
        self.last = str(err.str())

    def log(self, level: int, msg: object, *args: object) -> None:
        text = str(msg) % args if args else str(msg)
        if level >= logging.WARNING and ("failed" in text or "refused" in text):
            self.last = text
        # Every failure reaches the caller as an exception carrying this text, so the
        # lines are details: INFO at most, never printed by logging's last resort.
        _log.log(min(level, logging.INFO), "%s", text)

    def config(self) -> dict[str, Any]:
        return {"error_cb": self.error_cb, "logger": self}


def _describe(exc: BaseException) -> tuple[str, str]:
    """(error name, text) of a confluent-kafka exception, whatever shape it has."""
    err = exc.args[0] if exc.args else None
    if err is not None and hasattr(err, "name") and hasattr(err, "str"):
        return str(err.name()), str(err.str())
    return type(exc).__name__, str(exc)


def _check_topic(client: Any, bootstrap: str, topic: str, partition: int | None,
                 timeout: float, errors: _Errors, kafka: Any) -> int:
    """Fetch the topic's metadata; return its partition count or raise a clear error."""
    try:
        md = client.list_topics(topic, timeout=timeout)
    except kafka.KafkaException as exc:
        try:
            client.poll(0)  # serves the error and log callbacks: the cause of the failure
        except Exception:
            pass
        why = errors.last or _describe(exc)[1]
        raise SinkUnavailableError(
            f"cannot reach a Kafka broker at {bootstrap} within {timeout:g} s ({why}); "
            f"check the address and that the broker is running") from exc
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None:
        why = tmd.error.str() if tmd is not None and tmd.error is not None else "not listed"
        raise MirrorError(
            f"topic {topic!r} does not exist on {bootstrap} ({why}); create it first "
            f"(kafka-topics.sh --create --topic {topic} --partitions 1), mmapkit does not "
            f"create topics")
    if partition is not None and partition not in tmd.partitions:
        raise MirrorError(f"topic {topic!r} has {len(tmd.partitions)} partition(s); "
                          f"partition {partition} does not exist")
    return len(tmd.partitions)


def split_headers(headers: Sequence[tuple[str, bytes | None]] | None
                  ) -> tuple[tuple[tuple[str, bytes], ...], int | None, bytes | None]:
    """A Kafka record's headers as (the journal record's own headers, journal offset,
    source id).  Ours are the last two (a journal record may carry headers of the same
    names); without them: (all headers, None, None).  A journal offset that is not
    decimal ASCII is -1."""
    hs = list(headers or ())
    if len(hs) >= 2 and hs[-2][0] == OFFSET_HEADER and hs[-1][0] == SOURCE_HEADER:
        value = hs[-2][1]
        offset = int(value) if value is not None and value.isdigit() else -1
        own = tuple((k, v if v is not None else b"") for k, v in hs[:-2])
        return own, offset, hs[-1][1]
    return tuple((k, v if v is not None else b"") for k, v in hs), None, None


class KafkaSink:
    """A Kafka partition as a mirror target: idempotent, transactional, fenced.

    ``KafkaSink(bootstrap, topic, partition=0, timeout=30.0, **config)``: ``bootstrap``
    is ``"host:port[,host:port]"``; ``timeout`` bounds each broker operation; ``config``
    adds librdkafka producer settings by their dotted names (``**{"linger.ms": 5}``).
    The topic must exist.
    See the module comment for the protocol and :class:`mmapkit.mirror.Sink` for the
    contract.
    """

    def __init__(self, bootstrap: str, topic: str, partition: int = 0, *,
                 timeout: float = 30.0, **config: Any) -> None:
        _check_args(bootstrap, topic, partition)
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self._kafka = _client_module()
        self.bootstrap = bootstrap
        self.topic = topic
        self.partition = partition
        self.timeout = float(timeout)
        self.transactional_id = str(config.pop("transactional.id", None)
                                    or f"mmapkit-mirror.{topic}.{partition}")
        self._config = config
        self._errors = _Errors()
        self._producer: Any = None
        self._source = b""
        self._next = 0  # the next journal offset the target lacks
        self._closed = False

    @property
    def target(self) -> str:
        """The partition as a mirror URL (what the Mirror's messages and statistics show)."""
        return f"kafka://{self.bootstrap}/{self.topic}?partition={self.partition}"

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._producer is not None else "idle"
        return (f"<KafkaSink {self.bootstrap}/{self.topic}[{self.partition}] {state} "
                f"next={self._next}>")

    # --- contract ---------------------------------------------------------------------

    def open(self, source_id: str) -> int:
        """Fence any other writer of this partition and return the next journal offset
        the partition lacks (0 when empty); see the module comment, steps O1-O3."""
        if not isinstance(source_id, str) or not source_id:
            raise ValueError("open() needs the mirror's source_id, a non-empty str")
        self._closed = False
        self._drop_producer()
        kafka = self._kafka
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "transactional.id": self.transactional_id,
            "allow.auto.create.topics": False,
            "linger.ms": 2,
            **self._errors.config(),
            **self._config,
        }
        self._errors.last = None  # a reason from an earlier attempt would mislead
        try:
            producer = kafka.Producer(conf)  # O1
        except kafka.KafkaException as exc:
            raise ValueError(f"bad Kafka producer settings: {_describe(exc)[1]}") from exc
        try:
            _check_topic(producer, self.bootstrap, self.topic, self.partition,
                         self.timeout, self._errors, kafka)
            try:
                producer.init_transactions(self.timeout)  # O2
            except kafka.KafkaException as exc:
                raise self._translate(exc, "init_transactions") from exc
            if PAUSES:
                pause("kafka.sink.initialized")
            self._source = source_id.encode()
            self._next = self._read_back()  # O3
        except BaseException:
            self._destroy(producer)  # not left to the garbage collector with its threads
            raise
        self._producer = producer
        return self._next

    def send(self, records: Sequence[Record]) -> None:
        """Write ``records`` (ascending journal offsets) in one transaction and return
        once the broker committed it (steps S1-S3)."""
        if self._closed:
            raise ClosedError("this KafkaSink is closed")
        if self._producer is None:
            raise MirrorError("KafkaSink.send() before open() (or after a failed send: "
                              "open() again to fence and find where to resume)")
        if not records:
            return
        first = records[0].offset
        if first < self._next:
            raise ValueError(f"send() got journal offset {first}, but the target already "
                             f"holds offsets up to {self._next - 1}: resume from what "
                             f"open() returned")
        kafka = self._kafka
        p = self._producer
        topic, partition, source = self.topic, self.partition, self._source
        last = first - 1
        try:
            p.begin_transaction()  # S1
            for r in records:  # S2
                if r.offset <= last:
                    p.abort_transaction(self.timeout)
                    raise ValueError(f"send() needs ascending journal offsets: {r.offset} "
                                     f"came after {last}")
                last = r.offset
                headers = [*r.headers, (OFFSET_HEADER, b"%d" % r.offset),
                           (SOURCE_HEADER, source)]
                while True:
                    try:
                        p.produce(topic, r.value, r.key, partition=partition,
                                  timestamp=r.timestamp_ms, headers=headers)
                        break
                    except BufferError:
                        p.poll(0.01)  # librdkafka's queue is full: let it drain
            if PAUSES:
                p.flush(self.timeout)
                pause("kafka.sink.produced")
            p.commit_transaction(self.timeout)  # S3
        except kafka.KafkaException as exc:
            error = self._translate(exc, "send")
            self._abandon(p)
            raise error from exc
        self._next = last + 1

    def close(self) -> None:
        """Give up the producer (idempotent).  A later open() takes the partition again."""
        self._closed = True
        self._drop_producer()

    def __enter__(self) -> KafkaSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals --------------------------------------------------------------------

    def _translate(self, exc: BaseException, during: str) -> MirrorError:
        name, text = _describe(exc)
        where = f"{self.bootstrap}/{self.topic}[{self.partition}]"
        if name in _FENCED:
            return TargetOwnedError(
                f"another mirror took over {where} (transactional.id "
                f"{self.transactional_id!r}; broker said: {text}); this one stopped "
                f"without writing more. Run one mirror per target")
        if name in ("TRANSACTIONAL_ID_AUTHORIZATION_FAILED", "TOPIC_AUTHORIZATION_FAILED",
                    "CLUSTER_AUTHORIZATION_FAILED"):
            return MirrorError(f"the broker refused {during} on {where}: {text}; grant "
                               f"this client write and transactional-id access")
        if name in _TOO_LARGE:
            # retrying cannot help: a reconnecting mirror would send it again forever
            return MirrorError(f"Kafka {during} failed on {where}: a record is larger than "
                               f"the broker or client accepts ({name}: {text}); raise "
                               f"message.max.bytes on the topic and in this sink's config, "
                               f"or keep journal records smaller")
        if name in ("UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION"):
            return MirrorError(f"Kafka {during} failed on {where}: the topic or partition "
                               f"is gone ({text}); create it again and mirror from the "
                               f"start, or mirror to another topic")
        why = self._errors.last if name in ("_TIMED_OUT", "_TRANSPORT") and \
            self._errors.last else text
        return SinkUnavailableError(
            f"Kafka {during} failed on {where} ({name}: {why}); nothing after the last "
            f"acknowledged batch counts as delivered: open() again once the broker is "
            f"reachable")

    def _abandon(self, p: Any) -> None:
        """After a failed S2/S3: abort what can be aborted and drop the producer, so that
        the next open() fences this epoch and reads the target again."""
        try:
            p.abort_transaction(min(self.timeout, 5.0))
        except Exception:  # the broker may be gone; O2 cleans up then
            pass
        self._producer = None
        self._destroy(p)

    def _drop_producer(self) -> None:
        p, self._producer = self._producer, None
        if p is not None:
            self._destroy(p)

    @staticmethod
    def _destroy(p: Any) -> None:
        # Purge queued records so destroying the handle does not wait for a dead broker.
        try:
            p.purge()
            p.flush(0)
        except Exception:  # best effort on a handle we are dropping
            pass

    def _read_back(self) -> int:
        """O3: the journal offset after the last record a read_committed reader sees."""
        kafka = self._kafka
        tp = kafka.TopicPartition
        base = {"bootstrap.servers": self.bootstrap, "group.id": "mmapkit-mirror-readback",
                "enable.auto.commit": False, "allow.auto.create.topics": False,
                **self._errors.config()}
        # The bound comes from read_uncommitted: Tansu reports a read_committed high mark
        # of 0 while any transaction is open; reading then stops at the true LSO (EOF).
        marks = kafka.Consumer({**base, "isolation.level": "read_uncommitted"})
        try:
            low, high = marks.get_watermark_offsets(tp(self.topic, self.partition),
                                                    timeout=self.timeout, cached=False)
        except kafka.KafkaException as exc:
            raise self._translate(exc, "reading the partition's end") from exc
        finally:
            marks.close()
        if high <= low:
            return 0
        reader = kafka.Consumer({**base, "isolation.level": "read_committed",
                                 "enable.partition.eof": True})
        try:
            window, stop = 64, None
            while True:
                start = max(low, (high if stop is None else stop) - window)
                last = self._last_record(reader, start, stop)
                if last is not None:
                    return self._resume_after(last)
                if start <= low:
                    return 0  # only aborted records and markers: nothing committed
                stop, window = start, window * 4
        finally:
            reader.close()

    def _last_record(self, reader: Any, start: int, stop: int | None) -> Any:
        """The last readable record in [start, stop) (stop None: to the end), or None."""
        kafka = self._kafka
        reader.assign([kafka.TopicPartition(self.topic, self.partition, start)])
        last = None
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SinkUnavailableError(
                    f"reading back the end of {self.topic}[{self.partition}] on "
                    f"{self.bootstrap} took over {self.timeout:g} s "
                    f"({self._errors.last or 'no answer'}); open() again later")
            # poll() returns as soon as one record is there (consume() would wait for
            # all 500 or the timeout); then take what was fetched along with it.
            first = reader.poll(min(left, 0.5))
            for m in [] if first is None else [first, *reader.consume(500, 0)]:
                err = m.error()
                if err is not None:
                    if err.code() == kafka.KafkaError._PARTITION_EOF:
                        return last
                    raise self._translate(kafka.KafkaException(err), "reading back")
                if stop is not None and m.offset() >= stop:
                    return last
                last = m

    def _resume_after(self, m: Any) -> int:
        where = f"{self.topic}[{self.partition}] at Kafka offset {m.offset()}"
        _, offset, source = split_headers(m.headers())
        if offset is None or offset < 0:
            raise TargetMismatchError(
                f"{where} holds a record without a valid {OFFSET_HEADER!r} header: it was "
                f"not written by an mmapkit mirror. Mirror into an empty partition or a "
                f"new topic")
        if source != self._source:
            raise TargetMismatchError(
                f"{where} holds records of another source "
                f"({(source or b'?').decode(errors='replace')!r}, not "
                f"{self._source.decode()!r}); two journals must not share a partition: "
                f"use another topic or partition")
        return offset + 1


class KafkaRecord(NamedTuple):
    """One record read from Kafka: a journal :class:`~mmapkit.journal.Record`'s fields
    (``offset`` here is the Kafka offset, the one ``commit``/``seek`` take), then the
    partition and, for mirrored records, the journal offset (else None).  ``headers``
    are the journal record's own; the mirror's two are removed."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    partition: int
    journal_offset: int | None


class KafkaSource:
    """A Kafka topic read with the Journal consumer API: ``KafkaSource(bootstrap,
    topic, partition=0).consumer(group)``.  ``config`` adds librdkafka consumer settings
    to every consumer it makes (e.g. ``**{"session.timeout.ms": 6000}``)."""

    def __init__(self, bootstrap: str, topic: str, partition: int = 0, *,
                 timeout: float = 30.0, **config: Any) -> None:
        _check_args(bootstrap, topic, partition)
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self._kafka = _client_module()
        self.bootstrap = bootstrap
        self.topic = topic
        self.partition = partition
        self.timeout = float(timeout)
        self._config = config

    def __repr__(self) -> str:
        return f"<KafkaSource {self.bootstrap}/{self.topic}[{self.partition}]>"

    def consumer(self, group: str, *, reset: str = "earliest") -> KafkaConsumer:
        """A member of consumer group ``group`` (read_committed, manual commits)."""
        return KafkaConsumer(self, group, reset=reset)


class KafkaConsumer:
    """A Kafka consumer-group member with the Journal consumer API (see
    :meth:`KafkaSource.consumer`).

    ``poll()`` returns records from every partition the group gave this member;
    ``position``, ``committed``, ``lag``, ``seek`` and ``commit(offset)`` speak of the
    source's partition, in Kafka offsets.  ``commit()`` without an offset stores the
    position of every partition polled: call it after processing (at least once).
    """

    def __init__(self, source: KafkaSource, group: str, *, reset: str = "earliest") -> None:
        if not isinstance(group, str) or not group:
            raise ValueError("a Kafka consumer needs a non-empty str group name")
        if reset not in ("earliest", "latest", "none"):
            raise ValueError(f"reset must be 'earliest', 'latest' or 'none', got {reset!r}")
        kafka = source._kafka
        self._kafka = kafka
        self._source = source
        self.group = group
        self.reset = reset
        self._errors = _Errors()
        self._tp = kafka.TopicPartition(source.topic, source.partition)
        self._assigned: set[int] = set()
        self._positions: dict[int, int] = {}
        self._pending_seek: int | None = None
        conf: dict[str, Any] = {
            "bootstrap.servers": source.bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "error" if reset == "none" else reset,
            "allow.auto.create.topics": False,
            **self._errors.config(),
            **source._config,
        }
        self._cooperative = "cooperative" in str(conf.get("partition.assignment.strategy"))
        try:
            self._c: Any = kafka.Consumer(conf)
        except kafka.KafkaException as exc:
            raise ValueError(f"bad Kafka consumer settings: {_describe(exc)[1]}") from exc
        self._closed = False
        try:
            _check_topic(self._c, source.bootstrap, source.topic, source.partition,
                         source.timeout, self._errors, kafka)
            self._c.subscribe([source.topic], on_assign=self._on_assign,
                              on_revoke=self._on_revoke, on_lost=self._on_revoke)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return (f"<KafkaConsumer group={self.group!r} {self._source.topic}"
                f"[{self._source.partition}]{' closed' if self._closed else ''}>")

    # --- group membership callbacks (run inside poll) ---------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            self._assigned.add(tp.partition)
            if tp.partition == self._source.partition and self._pending_seek is not None:
                tp.offset = self._pending_seek
                self._pending_seek = None
        # Cooperative assignors (partition.assignment.strategy=cooperative-sticky) hand
        # out and take back partitions one by one; eager ones replace the whole set.
        if self._cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            self._assigned.discard(tp.partition)
            self._positions.pop(tp.partition, None)
        if self._cooperative:
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()

    # --- the Journal consumer API -----------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise ClosedError("this Kafka consumer is closed")

    def poll(self, max_records: int = 500, timeout: float | None = 1.0) -> list[KafkaRecord]:
        """Up to ``max_records`` records, waiting up to ``timeout`` seconds for the first
        (None: forever); moves the position past them."""
        self._check()
        if not isinstance(max_records, int) or max_records < 1:
            raise ValueError(f"max_records must be an int >= 1, got {max_records!r}")
        kafka = self._kafka
        wait = -1.0 if timeout is None else max(0.0, float(timeout))
        try:
            first = self._c.poll(wait)
            msgs = [] if first is None else [first]
            if first is not None and max_records > 1:
                msgs += self._c.consume(max_records - 1, 0)
        except kafka.KafkaException as exc:
            raise self._translate(exc, "poll") from exc
        out: list[KafkaRecord] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == kafka.KafkaError._PARTITION_EOF:
                    continue
                raise self._translate(kafka.KafkaException(err), "poll")
            headers, joff, _ = split_headers(m.headers())
            ts_type, ts = m.timestamp()
            out.append(KafkaRecord(
                m.offset(), ts if ts_type != kafka.TIMESTAMP_NOT_AVAILABLE else 0,
                m.key(), m.value() or b"", headers, m.partition(),
                joff if joff is not None and joff >= 0 else None))
            self._positions[m.partition()] = m.offset() + 1
        return out

    def commit(self, offset: int | None = None) -> None:
        """Store the position (default) or ``offset`` (the next Kafka offset to read of
        the source's partition) for the group; returns once the broker stored it."""
        self._check()
        kafka = self._kafka
        try:
            if offset is None:
                if not self._positions:
                    return
                self._c.commit(offsets=[
                    kafka.TopicPartition(self._source.topic, p, o)
                    for p, o in self._positions.items()], asynchronous=False)
            else:
                if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
                    raise ValueError(f"commit() takes an offset >= 0, got {offset!r}")
                self._c.commit(offsets=[kafka.TopicPartition(
                    self._source.topic, self._source.partition, offset)],
                    asynchronous=False)
        except kafka.KafkaException as exc:
            raise self._translate(exc, "commit") from exc

    @property
    def committed(self) -> int | None:
        """The group's committed position of the source's partition (None: never)."""
        self._check()
        kafka = self._kafka
        try:
            (tp,) = self._c.committed([self._tp], timeout=self._source.timeout)
        except kafka.KafkaException as exc:
            raise self._translate(exc, "committed") from exc
        return None if tp.offset < 0 else int(tp.offset)

    @property
    def position(self) -> int:
        """The next Kafka offset poll() returns from the source's partition."""
        self._check()
        p = self._source.partition
        if p in self._positions:
            return self._positions[p]
        if self._pending_seek is not None:
            return self._pending_seek
        committed = self.committed
        if committed is not None:
            return committed
        low, high = self._marks()
        return high if self.reset == "latest" else low

    @property
    def lag(self) -> int:
        """Committed-visible records of the source's partition not yet returned."""
        return max(0, self._marks()[1] - self.position)

    def _marks(self) -> tuple[int, int]:
        kafka = self._kafka
        try:
            low, high = self._c.get_watermark_offsets(self._tp, timeout=self._source.timeout,
                                                      cached=False)
        except kafka.KafkaException as exc:
            raise self._translate(exc, "reading watermarks") from exc
        return int(low), int(high)

    def seek(self, offset: str | int) -> None:
        """Move the position of the source's partition ("earliest", "latest" or a Kafka
        offset); commit() stores it."""
        self._check()
        kafka = self._kafka
        if offset in ("earliest", "latest"):
            # a concrete offset, so that position and commit() can say where it is
            low, high = self._marks()
            target = low if offset == "earliest" else high
        elif isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0:
            target = offset
        else:
            raise ValueError(f"seek() takes 'earliest', 'latest' or an offset >= 0, got "
                             f"{offset!r}")
        p = self._source.partition
        self._positions.pop(p, None)
        if p not in self._assigned:
            self._pending_seek = target  # applied when the group assigns the partition
            return
        try:
            self._c.seek(kafka.TopicPartition(self._source.topic, p, target))
        except kafka.KafkaException as exc:
            raise self._translate(exc, "seek") from exc
        self._positions[p] = target

    def close(self) -> None:
        """Leave the group (its partitions go to other members at once); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._c.close()
        except Exception:  # leaving a group on a dead broker: nothing to do
            pass

    def __enter__(self) -> KafkaConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _translate(self, exc: BaseException, during: str) -> MirrorError:
        name, text = _describe(exc)
        where = f"{self._source.bootstrap}/{self._source.topic} (group {self.group!r})"
        if name in ("_TRANSPORT", "_TIMED_OUT", "_ALL_BROKERS_DOWN", "_RESOLVE",
                    "_WAIT_COORD", "COORDINATOR_NOT_AVAILABLE", "NOT_COORDINATOR",
                    "COORDINATOR_LOAD_IN_PROGRESS", "_UNKNOWN_PARTITION"):
            # (_UNKNOWN_PARTITION: librdkafka lost the metadata, as when the brokers went
            # away; a topic really deleted is refused at consumer() time)
            return SinkUnavailableError(f"Kafka {during} failed on {where}: "
                                        f"{self._errors.last or text}; try again once the "
                                        f"broker is reachable")
        if name in ("REBALANCE_IN_PROGRESS", "ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID",
                    "FENCED_INSTANCE_ID"):
            return MirrorError(f"Kafka {during} failed on {where}: the group moved this "
                               f"member's partitions ({text}); their records since the last "
                               f"commit go to the new owner, poll() again")
        if name == "_AUTO_OFFSET_RESET":
            return MirrorError(f"{where}: the position is out of range and reset='none' "
                               f"({text}); seek() somewhere valid")
        return MirrorError(f"Kafka {during} failed on {where}: {name}: {text}")
