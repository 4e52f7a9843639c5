"""Journal.check: verify a journal directory without changing a byte (read-only opens)."""

from __future__ import annotations

import os
import struct

from ..errors import MmapkitError
from . import _format as F
from .index import SparseIndex, index_paths
from .journal import META_NAME, CheckReport
from .segment import Segment, list_segments

__all__ = ["check_journal"]


def check_journal(directory: str) -> CheckReport:
    report = CheckReport(path=directory)
    meta_path = os.path.join(directory, META_NAME)
    try:
        with open(meta_path, "rb") as f:
            meta = f.read(F.META_SIZE)
    except OSError as exc:
        report.problem(f"cannot read {meta_path}: {exc}")
        return report
    if len(meta) < F.META_SIZE or meta[:8] != F.META_MAGIC:
        report.problem(f"{meta_path} is not a journal meta page")
        return report
    (version,) = struct.unpack_from("<H", meta, 8)
    if version > F.VERSION:
        report.problem(f"{meta_path} has format {version}; this mmapkit reads up to "
                       f"{F.VERSION}")
        return report
    (active,) = struct.unpack_from("<Q", meta, F.OFF_ACTIVE)
    (start,) = struct.unpack_from("<Q", meta, F.OFF_START)
    report.start_offset = start
    bases = [b for b in list_segments(directory) if b <= active]
    live = [b for b in bases if b >= start]
    if not live or live[0] != start:  # S is always the base of a kept segment
        report.problem(f"no segment starts at the start offset {start} "
                       f"(segments: {live[:5]})")
    if live and live[-1] != active:
        report.problem(f"the active segment {active} is missing")
    expected = live[0] if live else start
    for b in live:
        if b != expected:
            report.problem(f"segment {b} does not follow on from offset {expected}: "
                           f"offsets [{expected}, {b}) are missing")
            report.damaged.append((expected, b))
        expected = _check_segment(directory, b, report, expected if b == expected else b)
        report.segments += 1
    report.end_offset = expected
    report.records = expected - start
    return report


def _check_segment(directory: str, base: int, report: CheckReport, first: int) -> int:
    """Verify one segment; returns the offset after its last record."""
    try:
        seg = Segment.open(directory, base)
    except (MmapkitError, OSError) as exc:
        report.problem(f"segment {base}: {exc}")
        return base
    if seg is None:
        report.problem(f"segment {base} disappeared while checking")
        return base
    try:
        rel, pos = seg.commit()
        report.bytes += os.fstat(seg._fd).st_size
        end = base + rel
        limit = pos
        if not seg.cover(pos):
            limit = len(seg.view)
            report.problem(f"segment {base}: the file ends at {limit}, before its published "
                           f"end {pos} (cut short)")
        p, expected = F.SEGMENT_HEADER, base
        starts: dict[int, int] = {}
        while p < limit:
            try:
                info = F.read_batch_header(seg.view, p, limit)
                if info.first_offset != expected:
                    raise F.BatchError(f"the batch at {p} starts at offset "
                                       f"{info.first_offset}, expected {expected}")
                for _ in F.decode_batch(seg.view, p, info):
                    pass
            except F.BatchError as exc:
                report.problem(f"segment {base}: {exc}; offsets [{expected}, {end}) are "
                               "not readable from here on in this segment")
                report.damaged.append((expected, end))
                break
            starts[p] = info.first_offset
            expected += info.records
            p += info.length
        else:
            if p != limit or limit != pos:
                if limit == pos:
                    report.problem(f"segment {base}: batches end at {p}, W says {pos}")
            elif expected != end:
                report.problem(f"segment {base}: the batches hold {expected - base} "
                               f"records, its commit word says {rel}")
                report.damaged.append((min(expected, end), max(expected, end)))
        _check_indexes(seg, rel, pos, starts, report)
        return end
    finally:
        seg.close()


def _check_indexes(seg: Segment, rel: int, pos: int, starts: dict[int, int],
                   report: CheckReport) -> None:
    ipath, tpath = index_paths(seg.path)
    firsts = set(starts.values())  # (a set: a time index entry per batch made this O(n^2))
    for path, kind in ((ipath, "offset"), (tpath, "time")):
        ix = SparseIndex(path, kind, seg.base, writable=False)
        try:
            if not ix.trusted:
                report.problem(f"{os.path.basename(path)} is missing or not an index "
                               "(a writer rebuilds it)")
                report.stale_indexes.append(path)
                continue
            n = ix.count(rel, pos)
            prev = (-(1 << 63), -1)
            for i in range(n):
                a, b = ix.entry(i)
                if kind == "offset":
                    ok = starts.get(b) == seg.base + a and (a, b) > prev
                else:
                    ok = (a, b) >= prev and seg.base + b - 1 in firsts
                if not ok:
                    report.problem(f"{os.path.basename(path)}: entry {i} ({a}, {b}) does "
                                   "not match the log (a writer rebuilds it)")
                    report.stale_indexes.append(path)
                    break
                prev = (a, b)
        finally:
            ix.close()
