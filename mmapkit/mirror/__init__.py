"""Mirror: a Journal (or a crash-safe log) copied to Redis Streams or Kafka.

Submodules load on first use, and each sink's client library (redis-py, confluent-kafka)
only when that sink is created, so ``import mmapkit`` needs neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._sink import Sink

if TYPE_CHECKING:
    from ._core import Mirror
    from ._runner import MirrorStatistics
    from ._ship import Shipper
    from ._url import sink_from_url
    from .kafka import KafkaSink, KafkaSource
    from .redis import RedisConsumer, RedisStreamSink, RedisStreamSource

__all__ = ["KafkaSink", "KafkaSource", "Mirror", "MirrorStatistics", "RedisConsumer",
           "RedisStreamSink", "RedisStreamSource", "Shipper", "Sink", "sink_from_url"]

# public name -> submodule that defines it (one row per name: merges stay easy)
_LAZY: dict[str, str] = {
    "KafkaSink": ".kafka",
    "KafkaSource": ".kafka",
    "Mirror": "._core",
    "MirrorStatistics": "._runner",
    "RedisConsumer": ".redis",
    "RedisStreamSink": ".redis",
    "RedisStreamSource": ".redis",
    "Shipper": "._ship",
    "sink_from_url": "._url",
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value
