"""Per-record authenticated encryption for KV files (the ``crypto`` extra).

Design rules:

- AES-GCM (cryptography) per record.  The record's file offset and kind are the associated
  data, so a record moved, replayed elsewhere or retyped does not authenticate.
- Nonces: 8 random bytes chosen when the cipher is made, then a 4-byte counter; a new
  random prefix is drawn when the counter wraps.  Two writers never share a prefix except
  by a 2**-64 chance, and no nonce repeats within one writer.
- A file stores a key check (nonce + tag of an empty message bound to the file's salt), so
  a wrong key is refused at open with DecryptionError instead of failing record by record.
"""

from __future__ import annotations

import os
import struct

from ..errors import DecryptionError, MissingExtraError

# ``typing`` is for type checkers only (importing it costs milliseconds); type
# checkers take any TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["OVERHEAD", "Cipher"]

OVERHEAD = 12 + 16  # nonce + GCM tag
_AAD = struct.Struct("<QB")
_CHECK = b"mmapkit-kv-keycheck"


class Cipher:
    __slots__ = ("_aead", "_counter", "_invalid_tag", "_prefix")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError("key= must be bytes (16, 24 or 32 of them for AES-128/192/256)")
        if len(key) not in (16, 24, 32):
            raise ValueError(f"key= must be 16, 24 or 32 bytes, not {len(key)}; derive one with "
                             "hashlib.scrypt or os.urandom(32)")
        try:
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise MissingExtraError("encrypted KV files need the cryptography package: "
                                    "pip install 'mmapkit[crypto]'") from None
        self._aead: Any = AESGCM(bytes(key))
        self._invalid_tag: type[Exception] = InvalidTag
        self._prefix = os.urandom(8)
        self._counter = 0

    def _nonce(self) -> bytes:
        self._counter += 1
        if self._counter > 0xFFFFFFFF:
            self._prefix, self._counter = os.urandom(8), 1
        return self._prefix + self._counter.to_bytes(4, "little")

    def encrypt(self, body: bytes, offset: int, kind: int) -> bytes:
        nonce = self._nonce()
        return nonce + bytes(self._aead.encrypt(nonce, body, _AAD.pack(offset, kind)))

    def decrypt(self, data: bytes, offset: int, kind: int) -> bytes:
        if len(data) < OVERHEAD:
            raise DecryptionError("encrypted record too short")
        try:
            return bytes(self._aead.decrypt(data[:12], data[12:], _AAD.pack(offset, kind)))
        except self._invalid_tag:
            raise DecryptionError(f"the record at offset {offset} does not authenticate: "
                                  "wrong key, or the bytes were damaged") from None

    def keycheck(self, salt: int) -> bytes:
        nonce = os.urandom(12)
        return nonce + bytes(self._aead.encrypt(nonce, b"", _CHECK + salt.to_bytes(8, "little")))

    def verify(self, keycheck: bytes, salt: int) -> bool:
        try:
            self._aead.decrypt(keycheck[:12], keycheck[12:28], _CHECK + salt.to_bytes(8, "little"))
        except self._invalid_tag:
            return False
        return True
