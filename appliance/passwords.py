"""Password hashing: scrypt with its parameters stored beside the hash.

A stored hash is ``$scrypt$ln=15,r=8,p=1$salt$hash`` (URL-safe base64 without padding), so the
cost can be raised later and old hashes still verify. Parameters are bounded so that a damaged
database cannot make a login eat all memory.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import unicodedata
from dataclasses import dataclass

from .errors import ApplianceError, InvalidInput

MAX_PASSWORD = 1024

_HASH = re.compile(
    r"\$scrypt\$ln=([0-9]{1,2}),r=([0-9]{1,2}),p=([0-9]{1,2})\$([A-Za-z0-9_-]{22})\$([A-Za-z0-9_-]{43})"
)


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost; bounded so that a damaged database cannot make a login eat all memory."""

    n: int = 2**15
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        ok = 2 <= self.n <= 2**20 and self.n & (self.n - 1) == 0 and 1 <= self.r <= 32
        if not ok or not 1 <= self.p <= 16 or 128 * self.r * self.n > 2**30:
            raise ValueError(f"Unsupported scrypt parameters n={self.n}, r={self.r}, p={self.p}.")

    def derive(self, password: str, salt: bytes) -> bytes:
        data = unicodedata.normalize("NFC", password).encode("utf-8", "surrogatepass")
        maxmem = 128 * self.r * (self.n + self.p + 2) + (1 << 20)
        return hashlib.scrypt(
            data, salt=salt, n=self.n, r=self.r, p=self.p, maxmem=maxmem, dklen=32
        )

    def hash(self, password: str) -> str:
        salt = secrets.token_bytes(16)
        return self._format(salt, self.derive(password, salt))

    def unmatchable_hash(self) -> str:
        """A well-formed hash with these parameters that no password matches (its digest is
        random): checking a password against it costs exactly the work of a real check."""
        return self._format(secrets.token_bytes(16), secrets.token_bytes(32))

    def _format(self, salt: bytes, digest: bytes) -> str:
        return (
            f"$scrypt$ln={self.n.bit_length() - 1},r={self.r},p={self.p}${b64(salt)}${b64(digest)}"
        )


def parse_password_hash(stored: str) -> tuple[ScryptParams, bytes, bytes]:
    """(params, salt, hash) of a stored hash; ApplianceError if the database holds garbage."""
    match = _HASH.fullmatch(stored)
    try:
        if not match:
            raise ValueError("not an scrypt hash")
        params = ScryptParams(2 ** int(match[1]), int(match[2]), int(match[3]))
        return params, unb64(match[4]), unb64(match[5])
    except ValueError as exc:
        raise ApplianceError(
            "A stored password hash is damaged.",
            code="USER_STORE",
            hint="Set a new password with `appliance users passwd NAME`.",
        ) from exc


def verify_password(password: str, stored: str) -> bool:
    params, salt, expected = parse_password_hash(stored)
    return hmac.compare_digest(params.derive(password, salt), expected)


def check_password(password: str, name: str, *, min_length: int) -> None:
    """The password policy: long enough, not too long, not the user name."""
    length = len(unicodedata.normalize("NFC", password))
    if length < min_length:
        raise InvalidInput(
            f"The password is {length} characters; at least {min_length} are required.",
            hint="Use a passphrase of several words.",
        )
    if length > MAX_PASSWORD:
        raise InvalidInput(f"The password is longer than {MAX_PASSWORD} characters.")
    if password.strip().casefold() == name.casefold():
        raise InvalidInput("The password must not be the user name.")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    """Decode unpadded URL-safe base64; ValueError unless ``text`` is the canonical encoding."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64(data) != text:
        raise ValueError("not canonical base64")
    return data
