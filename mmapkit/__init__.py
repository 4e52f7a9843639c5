"""mmapkit: memory-mapped files done right.

Crash-safe key-value storage (MMKV class), crash-safe logging (xlog/Logan class),
shared-memory channels between processes, and zero-copy file transfer, in pure Python.
"""

from __future__ import annotations

from . import log
from .errors import (
    AlignmentError,
    BrokenError,
    ClosedError,
    CorruptFileError,
    DecryptionError,
    DiskFullError,
    EmptyFileError,
    EndOfChannel,
    ExportedViewsError,
    FileFormatError,
    ForeignFileError,
    FormatVersionError,
    InvalidSizeError,
    JournalRecoveryWarning,
    LockTimeout,
    MessageTooLargeError,
    MissingExtraError,
    MmapkitError,
    ModeConflictError,
    NotGrowableError,
    OffsetOutOfRangeError,
    OutOfRangeError,
    OverrunError,
    ReadOnlyError,
    RegionError,
    UnsupportedPlatformError,
)
from .inspect import Residency, residency
from .ipc import Channel, ChannelStatistics
from .journal import Journal
from .kv import KV
from .lock import FileLock
from .region import Region
from .transfer import CopyResult, asend, copy, send
from .wait import Waiter

__version__ = "0.1.0"

__all__ = [
    "KV",
    "AlignmentError",
    "BrokenError",
    "Channel",
    "ChannelStatistics",
    "ClosedError",
    "CopyResult",
    "CorruptFileError",
    "DecryptionError",
    "DiskFullError",
    "EmptyFileError",
    "EndOfChannel",
    "ExportedViewsError",
    "FileFormatError",
    "FileLock",
    "ForeignFileError",
    "FormatVersionError",
    "InvalidSizeError",
    "Journal",
    "JournalRecoveryWarning",
    "LockTimeout",
    "MessageTooLargeError",
    "MissingExtraError",
    "MmapkitError",
    "ModeConflictError",
    "NotGrowableError",
    "OffsetOutOfRangeError",
    "OutOfRangeError",
    "OverrunError",
    "ReadOnlyError",
    "Region",
    "RegionError",
    "Residency",
    "UnsupportedPlatformError",
    "Waiter",
    "__version__",
    "asend",
    "copy",
    "log",
    "residency",
    "send",
]
