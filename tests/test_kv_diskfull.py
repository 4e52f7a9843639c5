"""Disk full on a tiny tmpfs: a clean DiskFullError, the store stays readable, nothing lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmapkit.errors import DiskFullError
from mmapkit.kv import KV


@pytest.mark.parametrize("multiprocess", [False, True])
def test_disk_full_is_a_clean_error(tmpfs: Path, multiprocess: bool) -> None:
    path = tmpfs / "full.kv"
    ballast = tmpfs / "ballast"
    ballast.write_bytes(b"b" * 48 * 1024)
    written: dict[str, bytes] = {}
    with KV(path, multiprocess=multiprocess, capacity=4096) as kv:
        with pytest.raises(DiskFullError):
            for i in range(100_000):
                value = bytes([i % 251]) * 1000
                kv[f"k{i}"] = value  # every key is new: live data grows until the disk is full
                written[f"k{i}"] = value
        assert len(written) > 50
        # Still readable, nothing earlier lost, and overwrites that fit still work.
        assert all(kv[k] == v for k, v in written.items())
        with pytest.raises(DiskFullError):
            kv["one more"] = b"z" * 200_000
        assert len(kv) == len(written)
    report = KV.check(path)
    assert report.ok and report.keys == len(written)
    ballast.unlink()  # the user frees some space, as the error message says
    with KV(path, multiprocess=multiprocess) as kv:
        assert dict(kv) == written
        for k in list(written)[: len(written) * 9 // 10]:
            del kv[k]
            del written[k]
        kv.compact()
        kv["after"] = b"ok"  # compaction freed space
        assert kv["after"] == b"ok"
        assert all(kv[k] == v for k, v in written.items())
    assert KV.check(path).ok
