"""The appliance identity: an Ed25519 signing key and an X25519 HPKE key, generated on the box.

Policy issuers seal model keys to the X25519 key and name the appliance id, so a policy works only
on the appliance that holds the private halves; the Ed25519 key signs audit checkpoints and the
identity document that the operator hands to an issuer. The private halves exist on disk only
sealed under the ARK (AES-256-GCM under ``derive_key(ark, LABEL_IDENTITY_SEAL)``).

``appliance_id = "app-" + first 16 hex of SHA-256("kapp/v1 appliance-id" NUL sign_pub box_pub)``,
so the id cannot be detached from the keys: documents whose id does not match are refused.
Signatures are domain separated: ``Ed25519(purpose NUL message)``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from ._encoding import b64d, b64e, canonical_json, parse_json_object, u64
from ._encoding import field as get_field
from .errors import FormatError, TamperedError
from .keys import LABEL_IDENTITY_SEAL, derive_key
from .seal import open_sealed

__all__ = [
    "PURPOSE_AUDIT_CHECKPOINT",
    "PURPOSE_IDENTITY_DOCUMENT",
    "ApplianceIdentity",
    "PublicIdentity",
    "appliance_id_for",
    "verify_signature",
]

PURPOSE_IDENTITY_DOCUMENT = "kapp/v1 identity-document"
PURPOSE_AUDIT_CHECKPOINT = "kapp/v1 audit-checkpoint"
SEALED_FORMAT = "kapp-identity-sealed"
SEALED_VERSION = 1
DOC_FORMAT = "kapp-identity"
DOC_VERSION = 1
MAX_FACTORS = 64
_SEALED_FIELDS = {"appliance_id", "box_pub", "created_at", "ct", "format", "nonce", "sign_pub", "v"}
_MAX_SEALED_BYTES = 4096
_MAX_DOC_BYTES = 64 << 10
_MAX_TIME = 2**63 - 1


def appliance_id_for(sign_pub: bytes, box_pub: bytes) -> str:
    """The appliance id that belongs to this pair of public keys."""
    digest = hashlib.sha256(b"kapp/v1 appliance-id\x00" + sign_pub + box_pub).hexdigest()
    return "app-" + digest[:16]


class ApplianceIdentity:
    """Private identity keys, in memory only; persist with :meth:`seal`."""

    def __init__(self, sign_key: Ed25519PrivateKey, box_key: X25519PrivateKey, *, created_at: int):
        self.sign_key = sign_key
        self.box_key = box_key
        self.created_at = int(created_at)
        self.sign_pub = sign_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.box_pub = box_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.appliance_id = appliance_id_for(self.sign_pub, self.box_pub)

    def __repr__(self) -> str:
        return f"ApplianceIdentity({self.appliance_id})"

    @classmethod
    def generate(cls, *, created_at: int | None = None) -> ApplianceIdentity:
        """Fresh keys; ``created_at`` defaults to the real clock (a thin wrapper on purpose)."""
        when = int(time.time()) if created_at is None else created_at
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate(), created_at=when)

    @classmethod
    def from_private_bytes(cls, sign: bytes, box: bytes, *, created_at: int) -> ApplianceIdentity:
        """Rebuild from the raw 32-byte private keys (used by unseal and test vectors)."""
        if len(sign) != 32 or len(box) != 32:
            raise ValueError("Identity private keys are 32 bytes each.")
        return cls(
            Ed25519PrivateKey.from_private_bytes(sign),
            X25519PrivateKey.from_private_bytes(box),
            created_at=created_at,
        )

    def sign(self, message: bytes, *, purpose: str) -> bytes:
        """Ed25519 over ``purpose NUL message``: a signature for one use is void for another."""
        return self.sign_key.sign(_signed_bytes(purpose, message))

    def open_sealed(self, sealed: bytes, *, info: bytes) -> bytes:
        """Open an HPKE blob sealed to this appliance (see :mod:`secure.seal`)."""
        return open_sealed(self.box_key, sealed, info=info)

    def public(
        self, *, host_factors: Mapping[str, str] | None = None, host_k: int = 0
    ) -> PublicIdentity:
        """The public half, with the (already hashed) host factors an issuer should bind to.

        ``host_k`` is the appliance's suggestion for k-of-n matching; 0 leaves it to the issuer.
        """
        return PublicIdentity(
            appliance_id=self.appliance_id,
            sign_pub=self.sign_pub,
            box_pub=self.box_pub,
            host_factors=dict(host_factors or {}),
            host_k=host_k,
            created_at=self.created_at,
        )

    def seal(self, ark: bytes) -> bytes:
        """The bytes of the sealed identity file: private keys under a key derived from the ARK."""
        nonce = os.urandom(12)
        raw = self._private_bytes()
        ct = AESGCM(derive_key(ark, LABEL_IDENTITY_SEAL)).encrypt(nonce, raw, self._aad())
        obj = {
            "appliance_id": self.appliance_id,
            "box_pub": b64e(self.box_pub),
            "created_at": self.created_at,
            "ct": b64e(ct),
            "format": SEALED_FORMAT,
            "nonce": b64e(nonce),
            "sign_pub": b64e(self.sign_pub),
            "v": SEALED_VERSION,
        }
        return canonical_json(obj) + b"\n"

    @classmethod
    def unseal(cls, blob: bytes, ark: bytes) -> ApplianceIdentity:
        """Open a sealed identity file; a wrong ARK or any edit raises :class:`TamperedError`."""
        what = "sealed identity file"
        obj = parse_json_object(blob, what=what, limit=_MAX_SEALED_BYTES)
        if set(obj) != _SEALED_FIELDS or obj["format"] != SEALED_FORMAT:
            raise FormatError(f"This is not a {what}.")
        if get_field(obj, "v", int, what=what) != SEALED_VERSION:
            raise FormatError(f"The {what} has an unsupported version.")
        created_at = _time_field(obj, "created_at", what)
        nonce = b64d(obj["nonce"], what=f"{what} nonce", size=12)
        ct = b64d(obj["ct"], what=what, size=64 + 16)
        sign_pub = b64d(obj["sign_pub"], what=f"{what} key", size=32)
        box_pub = b64d(obj["box_pub"], what=f"{what} key", size=32)
        aad = _sealed_aad(sign_pub, box_pub, created_at)
        try:
            raw = AESGCM(derive_key(ark, LABEL_IDENTITY_SEAL)).decrypt(nonce, ct, aad)
        except InvalidTag:
            raise TamperedError(what, detail="GCM tag (wrong ARK or edited)") from None
        identity = cls.from_private_bytes(raw[:32], raw[32:], created_at=created_at)
        if (identity.sign_pub, identity.box_pub, identity.appliance_id) != (
            sign_pub,
            box_pub,
            obj["appliance_id"],
        ):
            raise TamperedError(what, detail="public keys or id do not match the private keys")
        return identity

    def _private_bytes(self) -> bytes:
        raw = (Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return self.sign_key.private_bytes(*raw) + self.box_key.private_bytes(*raw)

    def _aad(self) -> bytes:
        return _sealed_aad(self.sign_pub, self.box_pub, self.created_at)


@dataclass(frozen=True)
class PublicIdentity:
    """What an issuer needs to bind a policy to this appliance; parsed documents are verified."""

    appliance_id: str
    sign_pub: bytes
    box_pub: bytes
    host_factors: dict[str, str] = field(default_factory=dict)
    host_k: int = 0
    created_at: int = 0

    def __post_init__(self) -> None:
        try:
            _check_public(self.sign_pub, self.box_pub, self.host_factors, self.host_k)
        except FormatError as exc:
            raise ValueError(exc.message) from None
        if self.appliance_id != appliance_id_for(self.sign_pub, self.box_pub):
            raise ValueError("The appliance id does not match the public keys.")

    def box_public_key(self) -> X25519PublicKey:
        return X25519PublicKey.from_public_bytes(self.box_pub)

    def verify(self, message: bytes, signature: bytes, *, purpose: str) -> bool:
        return verify_signature(self.sign_pub, message, signature, purpose=purpose)

    def to_document(self, identity: ApplianceIdentity) -> bytes:
        """The signed identity export; ``identity`` must hold the private half of these keys."""
        if (identity.sign_pub, identity.box_pub) != (self.sign_pub, self.box_pub):
            raise ValueError("The identity does not hold the private keys of this public identity.")
        payload = canonical_json(
            {
                "appliance_id": self.appliance_id,
                "box_pub": b64e(self.box_pub),
                "created_at": self.created_at,
                "host_factors": dict(sorted(self.host_factors.items())),
                "host_k": self.host_k,
                "sign_pub": b64e(self.sign_pub),
            }
        )
        signature = identity.sign(payload, purpose=PURPOSE_IDENTITY_DOCUMENT)
        outer = {
            "format": DOC_FORMAT,
            "payload": payload.decode("utf-8"),
            "sig": b64e(signature),
            "v": DOC_VERSION,
        }
        return canonical_json(outer) + b"\n"

    @classmethod
    def from_document(cls, data: bytes) -> PublicIdentity:
        """Parse and verify an identity document (self-signature, id ↔ keys, field rules)."""
        payload, signature, fields = _parse_document(data)
        if not verify_signature(
            fields["sign_pub"], payload, signature, purpose=PURPOSE_IDENTITY_DOCUMENT
        ):
            raise TamperedError("identity document", detail="self-signature")
        if fields["appliance_id"] != appliance_id_for(fields["sign_pub"], fields["box_pub"]):
            raise TamperedError("identity document", detail="appliance id does not match keys")
        return cls(**fields)


def verify_signature(pub: bytes, message: bytes, signature: bytes, *, purpose: str) -> bool:
    """True only for a valid Ed25519 signature over ``purpose NUL message``; never raises for
    malformed keys or signatures (they are simply not valid)."""
    signed = _signed_bytes(purpose, message)
    if not isinstance(pub, bytes) or len(pub) != 32 or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(bytes(signature), signed)
    except (InvalidSignature, ValueError):
        return False
    return True


def _signed_bytes(purpose: str, message: bytes) -> bytes:
    if (
        not isinstance(purpose, str)
        or not 1 <= len(purpose) <= 128
        or not purpose.isascii()
        or not purpose.isprintable()
    ):
        raise ValueError("A signature purpose must be 1..128 printable ASCII characters.")
    return purpose.encode("ascii") + b"\x00" + bytes(message)


def _sealed_aad(sign_pub: bytes, box_pub: bytes, created_at: int) -> bytes:
    return b"kapp/v1 identity-seal\x00" + sign_pub + box_pub + u64(created_at)


def _parse_document(data: bytes) -> tuple[bytes, bytes, dict[str, Any]]:
    """Split an identity document into (exact payload bytes, signature, checked fields)."""
    what = "identity document"
    outer = parse_json_object(data, what=what, limit=_MAX_DOC_BYTES)
    if set(outer) != {"format", "payload", "sig", "v"} or outer["format"] != DOC_FORMAT:
        raise FormatError(f"This is not an {what}.")
    if get_field(outer, "v", int, what=what) != DOC_VERSION:
        raise FormatError(f"The {what} has version {outer['v']}; this release reads {DOC_VERSION}.")
    payload = get_field(outer, "payload", str, what=what).encode("utf-8", "surrogatepass")
    signature = b64d(outer["sig"], what=f"{what} signature", size=64)
    body = parse_json_object(payload, what=what, limit=_MAX_DOC_BYTES)
    names = {"appliance_id", "box_pub", "created_at", "host_factors", "host_k", "sign_pub"}
    if set(body) != names:
        raise FormatError(f"The {what} has unexpected or missing fields.")
    fields = {
        "appliance_id": get_field(body, "appliance_id", str, what=what),
        "sign_pub": b64d(body["sign_pub"], what=f"{what} signing key", size=32),
        "box_pub": b64d(body["box_pub"], what=f"{what} box key", size=32),
        "host_factors": get_field(body, "host_factors", dict, what=what),
        "host_k": get_field(body, "host_k", int, what=what),
        "created_at": _time_field(body, "created_at", what),
    }
    _check_public(fields["sign_pub"], fields["box_pub"], fields["host_factors"], fields["host_k"])
    return payload, signature, fields


def _check_public(sign_pub: bytes, box_pub: bytes, factors: Any, k: Any) -> None:
    """Field rules shared by construction and parsing; :class:`FormatError` on any violation."""
    if not isinstance(sign_pub, bytes) or not isinstance(box_pub, bytes):
        raise FormatError("Identity public keys must be bytes.")
    if len(sign_pub) != 32 or len(box_pub) != 32:
        raise FormatError("Identity public keys are 32 bytes each.")
    try:  # refuse low-order X25519 points now rather than when an issuer seals to them
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(box_pub))
    except ValueError:
        raise FormatError("The identity box key is not a usable X25519 key.") from None
    if not isinstance(factors, dict) or len(factors) > MAX_FACTORS:
        raise FormatError(f"Host factors must be a mapping of at most {MAX_FACTORS} entries.")
    for name, value in factors.items():
        if not _is_factor_name(name) or not _is_hex_digest(value):
            raise FormatError("Host factors must map short names to 64-hex-digit HMACs.")
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= len(factors):
        raise FormatError("host_k must be an integer between 0 and the number of factors.")


def _is_factor_name(name: object) -> bool:
    return isinstance(name, str) and 1 <= len(name) <= 128 and name.isascii() and name.isprintable()


def _is_hex_digest(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def _time_field(obj: dict[str, Any], name: str, what: str) -> int:
    value = get_field(obj, name, int, what=what)
    if not 0 <= value <= _MAX_TIME:
        raise FormatError(f"The {what} field '{name}' is out of range.")
    return int(value)
