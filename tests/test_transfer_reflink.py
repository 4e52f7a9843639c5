"""Real reflink and real cross-file-system fallback on a loop-mounted XFS image.

Skipped cleanly where mkfs.xfs (xfsprogs), loop devices or mount are not available.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmapkit import _platform
from mmapkit.transfer import copy


@pytest.fixture(scope="module")
def xfs() -> Iterator[Path]:
    if not sys.platform.startswith("linux"):
        pytest.skip("loop-mounted XFS is Linux only")
    mkfs = shutil.which("mkfs.xfs")
    if mkfs is None:
        pytest.skip("mkfs.xfs not installed (apt-get install xfsprogs)")
    work = Path(tempfile.mkdtemp(prefix="mmapkit-xfs-"))
    image, mnt = work / "xfs.img", work / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(320 << 20)  # XFS's minimum size is 300 MB
    made = subprocess.run([mkfs, "-q", "-m", "reflink=1", str(image)], capture_output=True,
                          text=True)
    mounted = made.returncode == 0 and subprocess.run(
        ["mount", "-o", "loop", str(image), str(mnt)], capture_output=True).returncode == 0
    if not mounted:
        shutil.rmtree(work, ignore_errors=True)
        pytest.skip(f"cannot make or mount an XFS image here {made.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


DATA = random.Random(3).randbytes((3 << 20) + 5)


def test_auto_clones_with_reflink_on_xfs(xfs: Path) -> None:
    src = xfs / "src"
    src.write_bytes(DATA)
    res = copy(src, xfs / "auto", overwrite=True)
    assert res.method == "reflink" and res.skipped == ()
    assert (xfs / "auto").read_bytes() == DATA
    forced = copy(src, xfs / "forced", method="reflink", overwrite=True)
    assert forced.method == "reflink"
    assert (xfs / "forced").read_bytes() == DATA
    # a clone is independent: changing it leaves the source alone
    with open(xfs / "forced", "r+b") as f:
        f.write(b"changed")
    assert src.read_bytes() == DATA


def test_sparse_clone_keeps_holes(xfs: Path) -> None:
    src = xfs / "sparse"
    with open(src, "wb") as f:
        f.truncate(8 << 20)
        f.seek(4 << 20)
        f.write(b"data in the middle")
    res = copy(src, xfs / "sparse-copy", overwrite=True)
    assert res.method == "reflink"
    assert (xfs / "sparse-copy").read_bytes() == src.read_bytes()
    assert os.stat(xfs / "sparse-copy").st_blocks * 512 < 1 << 20


def test_across_file_systems_the_chain_falls_back_for_real(xfs: Path, tmp_path: Path) -> None:
    src = xfs / "cross"
    src.write_bytes(DATA)
    res = copy(src, tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == DATA
    skipped = dict(res.skipped)
    assert "reflink" in skipped and "EXDEV" in skipped["reflink"]
    if _platform.HAVE_COPY_FILE_RANGE and "copy_file_range" in skipped:
        assert "EXDEV" in skipped["copy_file_range"]
    assert res.method in ("copy_file_range", "sendfile")
