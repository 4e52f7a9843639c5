"""Every error a user of mmapkit can see.

Design rules:

- One module, one base class: ``except mmapkit.MmapkitError`` catches everything we raise
  on purpose.  Where Python users already expect a standard exception, our class also
  derives from it (``LockTimeout`` is a ``TimeoutError``, ``ClosedError`` a ``ValueError``
  like a closed file, ``ReadOnlyError`` a ``PermissionError``...), so existing handlers keep
  working.
- Every message says what happened *and what to do about it*.
- "Closed by you" (:class:`ClosedError`) and "broken by a peer or by someone changing the
  file under us" (:class:`BrokenError`) are different errors, as in trio.
"""

from __future__ import annotations

__all__ = [
    "AlignmentError",
    "BrokenError",
    "ClosedError",
    "CorruptFileError",
    "DecryptionError",
    "DiskFullError",
    "EmptyFileError",
    "EndOfChannel",
    "ExportedViewsError",
    "FileFormatError",
    "ForeignFileError",
    "FormatVersionError",
    "InvalidSizeError",
    "JournalRecoveryWarning",
    "LockTimeout",
    "MessageTooLargeError",
    "MirrorError",
    "MissingExtraError",
    "MmapkitError",
    "ModeConflictError",
    "NotGrowableError",
    "OffsetOutOfRangeError",
    "OutOfRangeError",
    "OverrunError",
    "ReadOnlyError",
    "RegionError",
    "SinkUnavailableError",
    "TargetMismatchError",
    "TargetOwnedError",
    "UnsupportedPlatformError",
]


class MmapkitError(Exception):
    """Base class of every error mmapkit raises on purpose."""


# --- mapping misuse -------------------------------------------------------------------


class RegionError(MmapkitError):
    """A memory mapping was asked for, or used, in a way that cannot work."""


class EmptyFileError(RegionError, ValueError):
    """An empty file cannot be mapped; pass ``size=`` to extend it first."""


class InvalidSizeError(RegionError, ValueError):
    """A size of zero, a negative size, or a size the file does not have."""


class AlignmentError(RegionError, ValueError):
    """An offset or address that must be aligned is not."""


class ReadOnlyError(RegionError, PermissionError):
    """A write was attempted through a read-only region or on a read-only file."""


class OutOfRangeError(RegionError, IndexError):
    """An access falls outside the mapped bytes."""


class OffsetOutOfRangeError(OutOfRangeError):
    """A journal offset outside the records kept: below ``start`` (retention deleted it)
    or past ``end`` (not written yet).  Seek to ``start``/``end``, or let a consumer's
    ``reset=`` policy choose."""

    def __init__(self, message: str, *, offset: int = 0, start: int = 0, end: int = 0) -> None:
        super().__init__(message)
        self.offset = offset
        self.start = start
        self.end = end


class NotGrowableError(RegionError):
    """The region cannot grow (anonymous shared memory has a fixed size)."""


class ExportedViewsError(RegionError, BufferError):
    """The region cannot close while memoryviews or arrays still point into it."""


# --- life cycle -----------------------------------------------------------------------


class ClosedError(MmapkitError, ValueError):
    """The object was closed by this process; it cannot be used any more."""


class BrokenError(MmapkitError):
    """A peer process died, or the file was changed under us in a way we cannot follow."""


class EndOfChannel(MmapkitError):
    """Every sender finished the stream and nothing is left to receive."""


class OverrunError(MmapkitError):
    """A broadcast subscriber fell so far behind that the producer overwrote messages it had
    not read yet.  ``lost_bytes`` says how much of the stream it missed; the subscription
    goes on from the oldest message still retained (read again to continue)."""

    def __init__(self, message: str, *, lost_bytes: int = 0) -> None:
        super().__init__(message)
        self.lost_bytes = lost_bytes


class LockTimeout(MmapkitError, TimeoutError):
    """A lock was not acquired within the timeout."""


class ModeConflictError(MmapkitError):
    """The file is in use in a mode that cannot be mixed with the one asked for."""


# --- file formats ---------------------------------------------------------------------


class FileFormatError(MmapkitError):
    """Base of the errors about a file's contents.

    ``path`` names the file (``None`` for anonymous memory).
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class ForeignFileError(FileFormatError):
    """The file is not one of ours (wrong magic)."""


class FormatVersionError(FileFormatError):
    """The file was written by a newer (or unknown) format version."""

    def __init__(
        self, message: str, *, path: str | None = None, found: int = 0, supported: int = 0
    ) -> None:
        super().__init__(message, path=path)
        self.found = found
        self.supported = supported


class CorruptFileError(FileFormatError):
    """The file is damaged.

    ``offset`` is where the first damage was found, ``salvaged`` how many records (or
    bytes, as the message says) could still be read, and ``lost`` how many could not.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        offset: int | None = None,
        salvaged: int = 0,
        lost: int = 0,
    ) -> None:
        super().__init__(message, path=path)
        self.offset = offset
        self.salvaged = salvaged
        self.lost = lost


class DecryptionError(FileFormatError, ValueError):
    """The data does not decrypt with the key given (wrong key, or tampered data)."""


# --- resources and environment --------------------------------------------------------


class MessageTooLargeError(MmapkitError, ValueError):
    """A message or value is larger than the container can ever hold."""


class DiskFullError(MmapkitError, OSError):
    """The file system has no room left; nothing already written was lost."""


class UnsupportedPlatformError(MmapkitError, NotImplementedError):
    """This operating system lacks what the feature needs."""


class MissingExtraError(MmapkitError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


# --- mirror (a journal or log copied to Redis Streams or Kafka) -----------------------


class MirrorError(MmapkitError):
    """The mirror could not move records to (or read them from) its target."""


class SinkUnavailableError(MirrorError, ConnectionError):
    """The target (Redis, a Kafka broker) cannot be reached, refused the connection or
    went away; nothing past the last acknowledged record is counted as delivered, so the
    mirror may simply be restarted once the server is back."""


class TargetOwnedError(MirrorError):
    """Another mirror is writing this target (it holds the target's lock or fenced us):
    a second writer would duplicate or reorder records, so this one stops instead."""


class TargetMismatchError(MirrorError):
    """The target holds records that do not continue this journal (foreign IDs, a gap, or
    more than the journal has): the message says which and what to do."""


# --- warnings -------------------------------------------------------------------------


class JournalRecoveryWarning(MmapkitError, UserWarning):
    """A journal opened after a power loss had unsynced records cut (the message and
    ``Journal.recovery`` say how many and why)."""
