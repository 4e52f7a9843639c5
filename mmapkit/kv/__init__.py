"""Crash-safe, multi-process key-value store over a memory-mapped file (MMKV class).

``KV`` is the store (store.py); ``codec`` holds the file format as pure functions.
"""

from __future__ import annotations

from .store import KV, CheckReport, KVStatistics

__all__ = ["KV", "CheckReport", "KVStatistics"]
