"""Policy issuer keys: Ed25519 to sign policies, X25519 to receive sealed package keys.

An issuer (the model vendor or the customer's security office) keeps `issuer.key` offline,
encrypted with its own passphrase, and hands `issuer.pub` to whoever packages models. Both key
pairs derive from one random 32-byte seed, so the sealed file holds a single secret.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ._encoding import atomic_write, b64d, b64e, canonical_json, field, parse_json_object
from .errors import FormatError, SecureError
from .keys import KdfParams, seal_root_key, unseal_root_key

PUB_TYPE = "kapp-issuer-public/1"
SEED_LEN = 32


def _derive(seed: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=b"kapp/v1 issuer " + label).derive(
        seed
    )


def _raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def issuer_id_for(sign_pub: bytes, box_pub: bytes) -> str:
    return "iss-" + hashlib.sha256(sign_pub + box_pub).hexdigest()[:16]


@dataclass(frozen=True)
class IssuerPublic:
    """The public half of an issuer: what packagers and appliances pin."""

    issuer_id: str
    name: str
    sign_pub: bytes
    box_pub: bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": PUB_TYPE,
            "issuer_id": self.issuer_id,
            "name": self.name,
            "sign_pub": b64e(self.sign_pub),
            "box_pub": b64e(self.box_pub),
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict()) + b"\n"

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> IssuerPublic:
        what = "issuer public key"
        if obj.get("type") != PUB_TYPE:
            raise FormatError(f"This is not an issuer public key (type must be {PUB_TYPE}).")
        sign_pub = b64d(field(obj, "sign_pub", str, what=what), what="issuer signing key", size=32)
        box_pub = b64d(field(obj, "box_pub", str, what=what), what="issuer sealing key", size=32)
        issuer_id = field(obj, "issuer_id", str, what=what)
        if issuer_id != issuer_id_for(sign_pub, box_pub):
            raise FormatError("The issuer id does not match the issuer's keys.")
        name = field(obj, "name", str, what=what)
        if set(obj) != {"type", "issuer_id", "name", "sign_pub", "box_pub"}:
            raise FormatError("The issuer public key has unexpected fields.")
        return cls(issuer_id=issuer_id, name=name, sign_pub=sign_pub, box_pub=box_pub)

    @classmethod
    def from_bytes(cls, data: bytes) -> IssuerPublic:
        return cls.from_dict(parse_json_object(data.strip(), what="issuer public key"))

    def box_public_key(self) -> X25519PublicKey:
        return X25519PublicKey.from_public_bytes(self.box_pub)

    def verify(self, message: bytes, signature: bytes, *, purpose: str) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            Ed25519PublicKey.from_public_bytes(self.sign_pub).verify(
                signature, purpose.encode() + b"\x00" + message
            )
        except (InvalidSignature, ValueError):
            return False
        return True


class IssuerKey:
    """The private issuer key; only ever in memory, sealed by a passphrase on disk."""

    def __init__(self, seed: bytes, name: str) -> None:
        if len(seed) != SEED_LEN:
            raise ValueError(f"issuer seed must be {SEED_LEN} bytes")
        self._seed = seed
        self.name = name
        self._sign = Ed25519PrivateKey.from_private_bytes(_derive(seed, b"sign"))
        self._box = X25519PrivateKey.from_private_bytes(_derive(seed, b"box"))

    @classmethod
    def generate(cls, name: str) -> IssuerKey:
        return cls(os.urandom(SEED_LEN), name)

    def public(self) -> IssuerPublic:
        sign_pub = _raw_public(self._sign.public_key())
        box_pub = _raw_public(self._box.public_key())
        return IssuerPublic(issuer_id_for(sign_pub, box_pub), self.name, sign_pub, box_pub)

    def sign(self, message: bytes, *, purpose: str) -> bytes:
        return self._sign.sign(purpose.encode() + b"\x00" + message)

    @property
    def box_private_key(self) -> X25519PrivateKey:
        return self._box

    def seal(self, passphrase: str, *, params: KdfParams | None = None) -> bytes:
        """The seed sealed by ``passphrase`` (same sealed format as the root key)."""
        return seal_root_key(self._seed, passphrase, params=params or KdfParams())

    @classmethod
    def unseal(cls, blob: bytes, passphrase: str, *, public: IssuerPublic) -> IssuerKey:
        """Open a sealed seed and check that it belongs to ``public`` (its `issuer.pub`)."""
        key = cls(unseal_root_key(blob, passphrase), public.name)
        if key.public() != public:
            raise FormatError("issuer.key and issuer.pub belong to different issuers.")
        return key


KEY_FILE = "issuer.key"
PUB_FILE = "issuer.pub"


def load_issuer(directory: Path, passphrase: str) -> IssuerKey:
    public = IssuerPublic.from_bytes((directory / PUB_FILE).read_bytes())
    return IssuerKey.unseal((directory / KEY_FILE).read_bytes(), passphrase, public=public)


def create_issuer(
    directory: Path, name: str, passphrase: str, *, params: KdfParams | None = None
) -> IssuerPublic:
    """Write a new `issuer.key` (sealed) and `issuer.pub`; refuses to overwrite either."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for fname in (KEY_FILE, PUB_FILE):
        if (directory / fname).exists():
            raise SecureError(
                f"{directory / fname} already exists.",
                code="EXISTS",
                hint="Choose an empty directory for a new issuer.",
            )
    key = IssuerKey.generate(name)
    atomic_write(directory / KEY_FILE, key.seal(passphrase, params=params), mode=0o600)
    atomic_write(directory / PUB_FILE, key.public().to_bytes(), mode=0o644)
    return key.public()
