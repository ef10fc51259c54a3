"""HPKE (RFC 9180) base mode sealing to an appliance's X25519 key.

A policy carries each model key sealed to the identity key of the one appliance it was issued for,
so a policy copied to another host holds no usable key at all (threat T2, test P3).

Suite: DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM, from
``cryptography.hazmat.primitives.hpke``. Sealed bytes = ``b"KHPKE" | version u8 (=1) | enc (32) |
ciphertext+tag``. The version byte names the suite, so a post-quantum hybrid KEM can be added later
without ambiguity. ``info`` binds the sealed key to its use (e.g. policy id and model id): a key
sealed for one model cannot be replayed as another's.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from .errors import TamperedError

MAGIC = b"KHPKE"
VERSION = 1
ENC_LEN = 32
TAG_LEN = 16
MAX_SEALED = 1 << 20
_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
_HEADER = MAGIC + bytes([VERSION])


def seal_to(public_key: X25519PublicKey | bytes, plaintext: bytes, *, info: bytes) -> bytes:
    """Encrypt ``plaintext`` so that only the holder of the matching private key can open it."""
    if isinstance(public_key, bytes | bytearray):
        if len(public_key) != 32:
            raise ValueError("An X25519 public key is 32 bytes.")
        public_key = X25519PublicKey.from_public_bytes(bytes(public_key))
    if len(plaintext) > MAX_SEALED - 128:
        raise ValueError("HPKE sealing is for keys and small secrets, not bulk data.")
    return _HEADER + _SUITE.encrypt(bytes(plaintext), public_key, info=_check_info(info))


def open_sealed(private_key: X25519PrivateKey, sealed: bytes, *, info: bytes) -> bytes:
    """Open a sealed blob; every failure (format, wrong key, wrong info, edit) is one
    :class:`TamperedError` so that nothing can be learnt from the error."""
    info = _check_info(info)
    if not isinstance(private_key, X25519PrivateKey):
        raise ValueError("open_sealed needs an X25519 private key.")
    if (
        not isinstance(sealed, bytes | bytearray)
        or not len(_HEADER) + ENC_LEN + TAG_LEN <= len(sealed) <= MAX_SEALED
        or sealed[: len(_HEADER)] != _HEADER
    ):
        raise TamperedError("sealed key", detail="bad size or header")
    try:
        return _SUITE.decrypt(bytes(sealed[len(_HEADER) :]), private_key, info=info)
    except (InvalidTag, ValueError):  # uniform failure: wrong key, wrong info, bad point, edit
        raise TamperedError("sealed key", detail="HPKE open failed") from None


def _check_info(info: bytes) -> bytes:
    if not isinstance(info, bytes | bytearray) or not info or len(info) > 1024:
        raise ValueError("HPKE info must be 1..1024 bytes naming what the secret is for.")
    return bytes(info)
