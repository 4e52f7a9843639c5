"""mmapkit: memory-mapped files done right.

Crash-safe key-value storage (MMKV class), crash-safe logging (xlog/Logan class),
shared-memory channels between processes, and zero-copy file transfer, in pure Python.

``import mmapkit`` is cheap: the errors are imported at once (they are small and every
component needs them), everything else on first use through the module ``__getattr__``
below (PEP 562), so a program that only wants a KV never loads the Channel, the log or
the transfer code, nor the stdlib modules they need.
"""

from __future__ import annotations

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
    MirrorError,
    MissingExtraError,
    MmapkitError,
    ModeConflictError,
    NotGrowableError,
    OffsetOutOfRangeError,
    OutOfRangeError,
    OverrunError,
    ReadOnlyError,
    RegionError,
    SinkUnavailableError,
    TargetMismatchError,
    TargetOwnedError,
    UnsupportedPlatformError,
)

# ``typing`` costs milliseconds to import; type checkers treat any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ does this
    from typing import Any

    from . import log
    from .inspect import Residency, residency
    from .ipc import Channel, ChannelStatistics, JoinableQueue, Queue, SimpleQueue
    from .journal import Journal
    from .kv import KV
    from .lock import FileLock
    from .mirror import Mirror, RedisStreamSink, RedisStreamSource
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
    "JoinableQueue",
    "Journal",
    "JournalRecoveryWarning",
    "LockTimeout",
    "MessageTooLargeError",
    "Mirror",
    "MirrorError",
    "MissingExtraError",
    "MmapkitError",
    "ModeConflictError",
    "NotGrowableError",
    "OffsetOutOfRangeError",
    "OutOfRangeError",
    "OverrunError",
    "Queue",
    "ReadOnlyError",
    "RedisStreamSink",
    "RedisStreamSource",
    "Region",
    "RegionError",
    "Residency",
    "SimpleQueue",
    "SinkUnavailableError",
    "TargetMismatchError",
    "TargetOwnedError",
    "UnsupportedPlatformError",
    "Waiter",
    "__version__",
    "asend",
    "copy",
    "log",
    "residency",
    "send",
]

# public name -> submodule (relative to this package) that defines it; "" for the
# submodule of that very name (``mmapkit.log``).  tests/test_import_time.py checks that
# this table and the TYPE_CHECKING block above cover __all__ and agree.
_LAZY: dict[str, str] = {
    "KV": ".kv",
    "Channel": ".ipc",
    "ChannelStatistics": ".ipc",
    "CopyResult": ".transfer",
    "FileLock": ".lock",
    "JoinableQueue": ".ipc",
    "Journal": ".journal",
    "Mirror": ".mirror",
    "RedisStreamSink": ".mirror",
    "RedisStreamSource": ".mirror",
    "Queue": ".ipc",
    "SimpleQueue": ".ipc",
    "Region": ".region",
    "Residency": ".inspect",
    "Waiter": ".wait",
    "asend": ".transfer",
    "copy": ".transfer",
    "log": "",
    "residency": ".inspect",
    "send": ".transfer",
}


# Subpackages that ``import mmapkit`` used to import eagerly, so code that reached them as
# attributes (``mmapkit.kv.KV``, ``mmapkit.ipc.channel``) keeps working.
_SUBMODULES = frozenset({"errors", "inspect", "ipc", "journal", "kv", "lock", "log", "mirror",
                         "region", "transfer", "wait"})


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None and name not in _SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    if not where:
        value: Any = importlib.import_module(f".{name}", __name__)
    else:
        value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) - {"TYPE_CHECKING"} | set(__all__))
