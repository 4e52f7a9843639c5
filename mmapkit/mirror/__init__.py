"""Mirror: a Journal (or a crash-safe log) copied to Redis Streams or Kafka.

Submodules load on first use, and each sink's client library (redis-py, confluent-kafka)
only when that sink is created, so ``import mmapkit`` needs neither.
"""

from __future__ import annotations

from ._sink import Sink

__all__ = ["Sink"]
