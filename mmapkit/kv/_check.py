"""``KV.check``: the offline report on a store file.  Reads a copy; changes nothing, takes
no lock (a store in use may show a torn tail past its commit word: reported, not damage).
"""

from __future__ import annotations

import os

from ..errors import CorruptFileError, DecryptionError
from . import codec
from ._crypto import Cipher
from ._load import analyse
from ._reports import CheckReport
from .codec import KIND_CLEAR, KIND_DEL, KIND_IMAGE, REC_FLAG_ENCRYPTED

__all__ = [
    "check",
]

def check(path: str, key: bytes | None) -> CheckReport:
    """Verify every record of the file at ``path``.

    Without ``key`` encrypted records are checked by their CRC only.
    """
    path = os.path.abspath(path)
    cipher = Cipher(key) if key is not None else None
    with open(path, "rb") as f:
        data = f.read()
    view = memoryview(data)
    hdr = codec.parse_header(view, path=path)
    problems: list[str] = []
    if cipher is not None and hdr.encrypted and not cipher.verify(hdr.keycheck, hdr.salt):
        raise DecryptionError(f"wrong key for {path}", path=path)
    analysis = analyse(view, hdr)
    problems += analysis.problems
    bad = list(analysis.damaged)
    keys: dict[str, int] = {}
    for rec in analysis.records:
        try:
            body = rec.body
            if rec.flags & REC_FLAG_ENCRYPTED:
                if cipher is None:
                    continue
                body = cipher.decrypt(body, rec.offset, rec.kind)
            if rec.kind == KIND_IMAGE:
                if rec.flags:
                    raise CorruptFileError("an image record is never encrypted")
                keys.update(dict.fromkeys(codec.decode_image(body)[0], 1))
                continue
            for kind, k, vb, _ in codec.iter_ops(rec.kind, body):
                if vb and vb[0] != codec.T_CUSTOM:
                    codec.decode_value(vb)
                if kind == KIND_DEL:
                    keys.pop(k, None)
                elif kind == KIND_CLEAR:
                    keys.clear()
                else:
                    keys[k] = 1
        except (CorruptFileError, DecryptionError) as exc:
            bad.append((rec.offset, rec.offset + rec.size))
            problems.append(f"record at {rec.offset}: {exc}")
    tail = len(data) - analysis.pos if analysis.dirty_tail else 0
    return CheckReport(
        path=path, ok=not bad and not problems, version=hdr.version, encrypted=hdr.encrypted,
        header_ok=hdr.crc_ok, superseded=hdr.superseded, records=len(analysis.records),
        keys=len(keys), committed_bytes=hdr.end, file_bytes=len(data),
        damaged=tuple(bad), lost_bytes=sum(b - a for a, b in bad),
        uncommitted_tail_bytes=tail, problems=tuple(problems))
