"""The public surface: pinned names, no third-party imports, errors that say what to do."""

from __future__ import annotations

import inspect

from conftest import run_py

import mmapkit
from mmapkit import errors


def test_all_is_pinned():
    expected = {
        "AlignmentError", "BrokenError", "Channel", "ChannelStatistics", "KV", "OverrunError",
        "log", "ClosedError", "CopyResult", "CorruptFileError",
        "DecryptionError",
        "DiskFullError", "EmptyFileError", "EndOfChannel", "ExportedViewsError",
        "FileFormatError", "FileLock", "ForeignFileError", "FormatVersionError",
        "InvalidSizeError", "Journal", "JournalRecoveryWarning", "LockTimeout",
        "MessageTooLargeError", "MirrorError", "MissingExtraError", "OffsetOutOfRangeError",
        "MmapkitError", "ModeConflictError", "NotGrowableError", "OutOfRangeError",
        "ReadOnlyError", "Region", "RegionError", "Residency", "UnsupportedPlatformError",
        "SinkUnavailableError", "TargetMismatchError", "TargetOwnedError",
        "Waiter", "__version__", "asend", "copy", "residency", "send",
        "Queue", "SimpleQueue", "JoinableQueue",
        "Mirror", "RedisStreamSink", "RedisStreamSource",
    }
    assert set(mmapkit.__all__) == expected
    for name in mmapkit.__all__:
        assert hasattr(mmapkit, name), name


def test_every_error_derives_from_mmapkit_error_and_is_exported():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if c.__module__ == errors.__name__]
    assert set(errors.__all__) == {c.__name__ for c in classes}
    for cls in classes:
        assert issubclass(cls, mmapkit.MmapkitError)
        assert getattr(mmapkit, cls.__name__) is cls


def test_standard_exceptions_users_expect():
    assert issubclass(mmapkit.LockTimeout, TimeoutError)
    assert issubclass(mmapkit.ClosedError, ValueError)
    assert issubclass(mmapkit.ReadOnlyError, PermissionError)
    assert issubclass(mmapkit.OutOfRangeError, IndexError)
    assert issubclass(mmapkit.DiskFullError, OSError)
    assert issubclass(mmapkit.MissingExtraError, ImportError)
    assert not issubclass(mmapkit.BrokenError, mmapkit.ClosedError)  # you vs a peer


def test_corrupt_file_error_carries_details():
    e = mmapkit.CorruptFileError("bad", path="/x", offset=12, salvaged=3, lost=1)
    assert (e.path, e.offset, e.salvaged, e.lost) == ("/x", 12, 3, 1)
    v = mmapkit.FormatVersionError("newer", path="/x", found=9, supported=1)
    assert (v.found, v.supported) == (9, 1)


def test_import_pulls_no_third_party_package():
    res = run_py("""
        import sys
        before = set(sys.modules)
        import mmapkit
        import mmapkit.cli
        third = sorted({m.split(".")[0] for m in set(sys.modules) - before}
                       - set(sys.stdlib_module_names) - {"mmapkit"})
        print(third)
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_cli_entry_points():
    res = run_py("import sys; from mmapkit.cli import main; sys.exit(main(['--version']))")
    assert res.returncode == 0 and "mmapkit" in res.stdout
    res = run_py("import runpy, sys; sys.argv=['mmapkit']; runpy.run_module('mmapkit')")
    assert res.returncode == 2 and "usage" in res.stdout
