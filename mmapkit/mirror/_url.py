"""A target URL -> a sink: the one place that knows the URL forms.

- ``redis://[user:password@]host[:port][/db]/STREAM`` and ``rediss://...`` (TLS): the last
  path segment is the stream; a number before it is the database.
- ``unix://[:password@]/path/to/redis.sock?stream=STREAM[&db=N]``.
- ``kafka://host:port[,host:port...]/TOPIC[?partition=N]`` (mmapkit.mirror.kafka, loaded
  only for such a URL).

``stream=`` in the query works for every Redis form; the ``stream`` argument overrides it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

if TYPE_CHECKING:
    from ._sink import Sink

__all__ = ["kafka_target", "redis_target", "sink_from_url"]

_FORMS = ("redis://host:port/0/STREAM, rediss://..., unix:///path/redis.sock?stream=STREAM "
          "or kafka://host:port/TOPIC")


def redis_target(url: str, stream: str | None = None) -> tuple[str, str]:
    """(redis-py connection URL, stream name) from a target URL (ValueError if bad)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError as exc:
        raise ValueError(f"bad target URL {url!r} ({exc}); expected {_FORMS}") from None
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    stream = stream or query.pop("stream", None)
    query.pop("stream", None)
    path = parts.path
    if parts.scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ValueError(f"bad target URL {url!r}: no host; expected {_FORMS}")
        segs = [s for s in path.split("/") if s]
        if not stream:
            if not segs or (len(segs) == 1 and segs[0].isdigit()):
                raise ValueError(f"target URL {url!r} names no stream: add it as the last "
                                 f"path segment (redis://host:port/0/STREAM)")
            stream = segs.pop()
        if len(segs) > 1 or (segs and not segs[0].isdigit()):
            raise ValueError(f"bad target URL {url!r}: the path is [/db]/STREAM, with db a "
                             f"number")
        path = "/" + segs[0] if segs else ""
    elif parts.scheme == "unix":
        if not path:
            raise ValueError(f"bad target URL {url!r}: no socket path; expected "
                             f"unix:///path/redis.sock?stream=STREAM")
        if not stream:
            raise ValueError(f"target URL {url!r} names no stream: add ?stream=STREAM")
    else:
        raise ValueError(f"unsupported target URL {url!r}: expected {_FORMS}")
    q = urlencode(query)
    return f"{parts.scheme}://{parts.netloc}{path}{'?' + q if q else ''}", stream


def kafka_target(url: str) -> tuple[str, str, int]:
    """(bootstrap servers, topic, partition) from a kafka:// URL (ValueError if bad)."""
    parts = urlsplit(url)
    topic = parts.path.strip("/")
    query = dict(parse_qsl(parts.query))
    if not parts.netloc or not topic or "/" in topic:
        raise ValueError(f"bad target URL {url!r}: expected kafka://host:port/TOPIC"
                         f"[?partition=N]")
    part = query.get("partition", "0")
    if not part.isdigit():
        raise ValueError(f"bad partition {part!r} in {url!r}: a number >= 0")
    return parts.netloc, topic, int(part)


def sink_from_url(url: str, *, stream: str | None = None, **options: Any) -> Sink:
    """The sink a target URL names (options go to the sink's constructor)."""
    if url.lower().startswith("kafka://"):
        bootstrap, topic, partition = kafka_target(url)
        import importlib
        try:
            kafka = importlib.import_module(".kafka", __package__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.kafka":
                raise  # confluent-kafka itself: the kafka module says what to install
            from ..errors import MirrorError
            raise MirrorError(f"this mmapkit has no Kafka sink for {url!r}: upgrade "
                              f"mmapkit, or mirror to Redis") from None
        return kafka.KafkaSink(bootstrap, topic, partition=partition,  # type: ignore[no-any-return]
                               **options)
    conn, name = redis_target(url, stream)
    from .redis import RedisStreamSink
    return RedisStreamSink(conn, name, **options)
