"""Journal: a Kafka-class persistent log on one machine (see journal.py for the protocol)."""

from __future__ import annotations

from ._format import Record
from .consumer import Consumer
from .journal import CheckReport, Journal, JournalStatistics, RecoveryReport
from .reader import Reader

__all__ = ["CheckReport", "Consumer", "Journal", "JournalStatistics", "Reader", "Record",
           "RecoveryReport"]
