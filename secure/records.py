"""Per-record encryption for small payloads kept in a database we do not trust (chunk text in
Milvus).

The container format (`secure.container`) is built for files: a header, a MAC and 1 MiB chunks.
A passage of a few kilobytes stored in a vector database row needs the same guarantees with a
per-row overhead of tens of bytes, so each record is one AES-256-GCM message::

    payload = "v1." + base64url(nonce (12) ‖ ciphertext ‖ tag (16))      (unpadded base64)
    AAD     = b"kapp/v1 record\\x00" ‖ u32 len(context) ‖ context ‖ record id      (UTF-8)
    key     = HKDF-SHA256(data_key, info = b"kapp/v1 chunk-records")

*Why the AAD*: a payload copied onto another row (another chunk id) or into another collection
(another context) fails to open, so an attacker with write access to the database can delete
rows but cannot swap passages between documents or groups. *Why the subkey*: the collection's
data key is never used directly, so one key never serves two constructions. *Why random nonces*:
records are written by many processes over years; a 96-bit random nonce is safe for about 2**32
records per data key (NIST SP 800-38D), far above one appliance's collection; re-index into a new
collection (new data key) long before that.

Every failure to open (bad prefix, bad base64, too short, wrong key, wrong id, edited bytes)
raises the same :class:`~secure.errors.TamperedError`; misuse (a wrong-length key, a non-string
id) raises a precise ``ValueError``.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._encoding import b64d, b64e, u32
from .errors import FormatError, TamperedError

__all__ = ["MAX_PLAINTEXT", "OVERHEAD", "PREFIX", "RecordCipher", "sealed_length"]

PREFIX = "v1."
LABEL = b"kapp/v1 chunk-records"
KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
OVERHEAD = NONCE_LEN + TAG_LEN
MAX_PLAINTEXT = 1 << 20  # a record is a passage, not a file
MAX_ID_BYTES = 1024
MAX_CONTEXT_BYTES = 1024
_AAD_LABEL = b"kapp/v1 record\x00"
_WHAT = "encrypted record"


def sealed_length(plaintext_len: int) -> int:
    """Characters of the payload string for a plaintext of ``plaintext_len`` bytes (for callers
    that must respect a column width, e.g. Milvus' 65,535-byte VARCHAR)."""
    raw = plaintext_len + OVERHEAD
    return len(PREFIX) + (raw * 4 + 2) // 3


class RecordCipher:
    """Seal and open small records bound to a context (e.g. a collection) and a record id.

    One instance holds one AESGCM object and is cheap to call many times; it is safe to share
    between threads (``AESGCM`` keeps no per-call state).
    """

    def __init__(self, data_key: bytes, *, context: str) -> None:
        if not isinstance(data_key, bytes | bytearray) or len(data_key) != KEY_LEN:
            raise ValueError(f"The data key must be {KEY_LEN} bytes.")
        ctx = _utf8(context, "context", MAX_CONTEXT_BYTES)
        subkey = HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=None, info=LABEL).derive(
            bytes(data_key)
        )
        self._aead = AESGCM(subkey)
        self._aad_prefix = _AAD_LABEL + u32(len(ctx)) + ctx
        self.context = context

    def seal(self, record_id: str, plaintext: bytes) -> str:
        """Encrypt ``plaintext`` for the row ``record_id``; returns an ASCII payload string."""
        if not isinstance(plaintext, bytes | bytearray | memoryview):
            raise ValueError("The plaintext must be bytes.")
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError(f"A record holds at most {MAX_PLAINTEXT} bytes.")
        nonce = os.urandom(NONCE_LEN)
        sealed = self._aead.encrypt(nonce, bytes(plaintext), self._aad(record_id))
        return PREFIX + b64e(nonce + sealed)

    def open(self, record_id: str, payload: str) -> bytes:
        """Verify and decrypt a payload made by :meth:`seal` for the same context and id."""
        aad = self._aad(record_id)
        if not isinstance(payload, str) or not payload.startswith(PREFIX):
            raise TamperedError(_WHAT, detail="missing version prefix")
        try:
            raw = b64d(payload[len(PREFIX) :], what=_WHAT)
        except FormatError as exc:
            raise TamperedError(_WHAT, detail=exc.message) from None
        if len(raw) < OVERHEAD:
            raise TamperedError(_WHAT, detail="shorter than nonce and tag")
        try:
            return self._aead.decrypt(raw[:NONCE_LEN], raw[NONCE_LEN:], aad)
        except InvalidTag:
            raise TamperedError(_WHAT, detail=f"tag mismatch for record {record_id!r}") from None

    def _aad(self, record_id: str) -> bytes:
        return self._aad_prefix + _utf8(record_id, "record id", MAX_ID_BYTES)


def _utf8(value: object, what: str, limit: int) -> bytes:
    """Misuse fails loudly: ids and contexts are non-empty strings of bounded size."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"The {what} must be a non-empty string.")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"The {what} must be valid Unicode (no lone surrogates).") from None
    if len(data) > limit:
        raise ValueError(f"The {what} must be at most {limit} bytes of UTF-8.")
    return data
