"""Per-frame public-key encryption (the ``crypto`` extra).

Design rules:

- The writer holds only the reader's X25519 *public* key.  Each frame gets a fresh
  ephemeral key pair; X25519(ephemeral, reader public) -> HKDF-SHA256 -> a one-frame
  ChaCha20-Poly1305 key.  Stored payload: ephemeral public key (32 bytes) + ciphertext
  and tag.  The frame header (bytes 16-56) is the associated data, so a header edited to
  claim other sequences or times fails authentication.
- A key used for one frame only needs no random nonce: the nonce is 12 zero bytes.
- A wrong private key or tampered bytes raise DecryptionError, never a cryptography error.
"""

from __future__ import annotations

from typing import Any

from ..errors import DecryptionError, MissingExtraError
from ._codec import Transform

__all__ = ["decryptor", "encryptor", "generate_keypair"]

_INFO = b"mmapkit log frame v1"
_NONCE = bytes(12)


def _lib() -> Any:
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import x25519
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    except ImportError:
        raise MissingExtraError("encrypted logs need the cryptography package: "
                                "pip install 'mmapkit[crypto]'") from None
    return x25519, ChaCha20Poly1305, HKDF, hashes, serialization


def _raw_public(pub: Any, serialization: Any) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw,  # type: ignore[no-any-return]
                            serialization.PublicFormat.Raw)


def _derive(shared: bytes, eph: bytes, recipient: bytes) -> bytes:
    _, _, HKDF, hashes, _ = _lib()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=eph + recipient,  # type: ignore
                info=_INFO).derive(shared)


def generate_keypair() -> tuple[bytes, bytes]:
    """``(private_key, public_key)`` as 32 raw bytes each: give the writer the public one."""
    x25519, _, _, _, serialization = _lib()
    priv = x25519.X25519PrivateKey.generate()
    raw = priv.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    return raw, _raw_public(priv.public_key(), serialization)


def encryptor(public_key: object) -> Transform:
    x25519, aead, _, _, serialization = _lib()
    if isinstance(public_key, (bytes, bytearray)):
        if len(public_key) != 32:
            raise ValueError("public_key must be 32 raw bytes of an X25519 public key")
        pub = x25519.X25519PublicKey.from_public_bytes(bytes(public_key))
    elif isinstance(public_key, x25519.X25519PublicKey):
        pub = public_key
    else:
        raise TypeError("public_key must be an X25519 public key (32 raw bytes or a "
                        "cryptography X25519PublicKey)")
    recipient = _raw_public(pub, serialization)

    def encrypt(payload: bytes, aad: bytes) -> bytes:
        eph = x25519.X25519PrivateKey.generate()
        eph_pub = _raw_public(eph.public_key(), serialization)
        key = _derive(eph.exchange(pub), eph_pub, recipient)
        return eph_pub + aead(key).encrypt(_NONCE, payload, aad)  # type: ignore[no-any-return]

    return encrypt


def decryptor(private_key: object) -> Transform:
    x25519, aead, _, _, serialization = _lib()
    if isinstance(private_key, (bytes, bytearray)):
        if len(private_key) != 32:
            raise ValueError("private_key must be 32 raw bytes of an X25519 private key")
        priv = x25519.X25519PrivateKey.from_private_bytes(bytes(private_key))
    elif isinstance(private_key, x25519.X25519PrivateKey):
        priv = private_key
    else:
        raise TypeError("private_key must be an X25519 private key (32 raw bytes or a "
                        "cryptography X25519PrivateKey)")
    recipient = _raw_public(priv.public_key(), serialization)

    def decrypt(stored: bytes, aad: bytes) -> bytes:
        if len(stored) < 32 + 16:
            raise DecryptionError("an encrypted frame is too short to be one; the log is "
                                  "damaged")
        eph_pub = stored[:32]
        try:
            shared = priv.exchange(x25519.X25519PublicKey.from_public_bytes(eph_pub))
            key = _derive(shared, eph_pub, recipient)
            return aead(key).decrypt(_NONCE, stored[32:], aad)  # type: ignore[no-any-return]
        except Exception:
            raise DecryptionError(
                "a log frame does not decrypt with this private key: it is the wrong key "
                "(use the private key matching the writer's public_key) or the frame was "
                "tampered with") from None

    return decrypt
