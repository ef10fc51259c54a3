"""The appliance root key (ARK): sealing it under a passphrase and deriving purpose keys from it.

The ARK is 256 random bits that never touch the disk in plaintext. At start it is unsealed from a
*sealed-root-key file* with the operator's passphrase (scrypt, then AES-256-GCM); every other key of
the appliance is either derived from it with HKDF under a fixed label (state MAC, audit MAC, BM25
term hashing, ...) or wrapped by the keyring, whose key-encryption keys are sealed under it.

Sealed-root-key file layout (all integers big-endian)::

    b"KAPPARK" | version u8 (=1) | header length u32 | header (canonical JSON) | ciphertext (48)

The header holds the KDF name and parameters, the salt and the GCM nonce. Everything before the
ciphertext is the GCM associated data, so no header field can be edited without detection. The
scrypt parameters are capped before any work is done, so a crafted file cannot ask for 100 GB of
memory or hours of CPU.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import unicodedata
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ._encoding import b64d, b64e, canonical_json, field, parse_json_object, u32
from .errors import FormatError, SealedError

ARK_LEN = 32
SALT_LEN = 16
NONCE_LEN = 12
TAG_LEN = 16

MAGIC = b"KAPPARK"
VERSION = 1
_PREFIX_LEN = len(MAGIC) + 1 + 4
_MAX_HEADER = 4096
_ARK_AAD_LABEL = "kapp/v1 sealed-root-key"

# Fixed HKDF labels: one key per purpose, so a key leaked from one use says nothing about another.
LABEL_STATE_MAC = "kapp/v1 state-mac"
LABEL_AUDIT_MAC = "kapp/v1 audit-mac"
LABEL_BM25_TERMS = "kapp/v1 bm25-terms"
LABEL_HOST_FACTORS = "kapp/v1 host-factors"
LABEL_QUESTION_HMAC = "kapp/v1 question-hmac"
LABEL_IDENTITY_SEAL = "kapp/v1 identity-seal"
LABEL_KEYRING = "kapp/v1 keyring"
LABEL_KEYRING_MAC = "kapp/v1 keyring-mac"
LABEL_CONTENT_HMAC = "kapp/v1 content-hmac"  # keyed hashes of document contents (registry)
LABELS = frozenset(
    {
        LABEL_STATE_MAC,
        LABEL_AUDIT_MAC,
        LABEL_BM25_TERMS,
        LABEL_HOST_FACTORS,
        LABEL_QUESTION_HMAC,
        LABEL_IDENTITY_SEAL,
        LABEL_KEYRING,
        LABEL_KEYRING_MAC,
        LABEL_CONTENT_HMAC,
    }
)
_HKDF_SALT = b"kapp/v1 ark-hkdf-salt"

# Caps on scrypt parameters accepted from a file: at most 1 GiB of memory and 2**24 block mixes.
_MIN_LOG2_N = 10
_MAX_LOG2_N = 20
_MAX_R = 16
_MAX_P = 16
_MAX_MEMORY = 1 << 30
_MAX_WORK = 1 << 25


@dataclass(frozen=True)
class KdfParams:
    """scrypt cost. The default (~128 MiB, ~0.3 s) is for production; tests may pass n=2**10."""

    n: int = 2**17
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        try:
            check_kdf_params(self.n, self.r, self.p)
        except FormatError as exc:
            raise ValueError(exc.message) from None


def check_kdf_params(n: object, r: object, p: object) -> None:
    """Refuse parameters outside the caps (a power-of-two ``n`` in 2**10..2**20, bounded memory)."""
    for name, value in (("n", n), ("r", r), ("p", p)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise FormatError(f"The scrypt parameter {name} must be a positive integer.")
    assert isinstance(n, int) and isinstance(r, int) and isinstance(p, int)
    if n & (n - 1) or not (1 << _MIN_LOG2_N) <= n <= (1 << _MAX_LOG2_N):
        raise FormatError(f"The scrypt parameter n={n} must be a power of two in 2**10..2**20.")
    if r > _MAX_R or p > _MAX_P or 128 * n * r > _MAX_MEMORY or n * r * p > _MAX_WORK:
        raise FormatError(f"The scrypt parameters n={n} r={r} p={p} exceed the allowed cost.")


def new_root_key() -> bytes:
    """A fresh 256-bit appliance root key from the OS CSPRNG."""
    return os.urandom(ARK_LEN)


def derive_key(ark: bytes, label: str, length: int = 32) -> bytes:
    """HKDF-SHA256 of the ARK under one of the fixed :data:`LABELS`.

    Unknown labels are refused so that two call sites cannot silently share a key by typo.
    """
    _check_ark(ark)
    if label not in LABELS:
        raise ValueError(f"Unknown key label {label!r}; use one of secure.keys.LABELS.")
    if not 16 <= length <= 64:
        raise ValueError("Derived keys must be 16..64 bytes long.")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=_HKDF_SALT, info=label.encode())
    return hkdf.derive(ark)


def seal_root_key(ark: bytes, passphrase: str, *, params: KdfParams | None = None) -> bytes:
    """Return the bytes of a sealed-root-key file holding ``ark`` under ``passphrase``."""
    _check_ark(ark)
    if not isinstance(passphrase, str) or not passphrase:
        raise ValueError("The passphrase must be a non-empty string.")
    params = params or KdfParams()
    salt, nonce = os.urandom(SALT_LEN), os.urandom(NONCE_LEN)
    header = canonical_json(
        {
            "aead": "AES-256-GCM",
            "kdf": "scrypt",
            "n": params.n,
            "nonce": b64e(nonce),
            "p": params.p,
            "r": params.r,
            "salt": b64e(salt),
        }
    )
    prefix = MAGIC + bytes([VERSION]) + u32(len(header)) + header
    key = _passphrase_key(passphrase, salt, params)
    return prefix + AESGCM(key).encrypt(nonce, ark, _aad(prefix))


def unseal_root_key(sealed: bytes, passphrase: str) -> bytes:
    """Recover the ARK; a wrong passphrase raises :class:`SealedError` (``WRONG_PASSPHRASE``)."""
    prefix, params, salt, nonce, ciphertext = _parse_sealed(sealed)
    key = _passphrase_key(passphrase, salt, params)
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, _aad(prefix))
    except InvalidTag:
        raise SealedError(
            "The passphrase did not unseal the appliance root key.",
            code="WRONG_PASSPHRASE",
            hint="Check the passphrase (case, keyboard layout) and try again; if the sealed-root-"
            "key file was restored from elsewhere, make sure it belongs to this appliance.",
        ) from None


def _parse_sealed(sealed: bytes) -> tuple[bytes, KdfParams, bytes, bytes, bytes]:
    """Split and check a sealed-root-key file before any crypto (sizes, magic, caps)."""
    what = "sealed-root-key file"
    if not isinstance(sealed, bytes | bytearray) or len(sealed) < _PREFIX_LEN:
        raise FormatError(f"The {what} is too short.")
    sealed = bytes(sealed)
    if sealed[: len(MAGIC)] != MAGIC:
        raise FormatError(f"This is not a {what} (bad magic).")
    if sealed[len(MAGIC)] != VERSION:
        raise FormatError(
            f"The {what} has version {sealed[len(MAGIC)]}; this release reads version {VERSION}."
        )
    (header_len,) = struct.unpack(">I", sealed[len(MAGIC) + 1 : _PREFIX_LEN])
    if header_len > _MAX_HEADER:
        raise FormatError(f"The {what} header is too large.")
    end = _PREFIX_LEN + header_len
    if len(sealed) != end + ARK_LEN + TAG_LEN:
        raise FormatError(f"The {what} has the wrong size.")
    header = parse_json_object(sealed[_PREFIX_LEN:end], what=f"{what} header")
    params, salt, nonce = _parse_header(header, what)
    return sealed[:end], params, salt, nonce, sealed[end:]


def _parse_header(header: dict[str, object], what: str) -> tuple[KdfParams, bytes, bytes]:
    expected = {"aead", "kdf", "n", "nonce", "p", "r", "salt"}
    if set(header) != expected:
        raise FormatError(f"The {what} header has unexpected fields.")
    if header["kdf"] != "scrypt" or header["aead"] != "AES-256-GCM":
        raise FormatError(f"The {what} uses an unsupported KDF or cipher.")
    n, r, p = (field(header, name, int, what=what) for name in ("n", "r", "p"))
    check_kdf_params(n, r, p)
    params = KdfParams(n=n, r=r, p=p)
    salt = b64d(header["salt"], what=f"{what} salt", size=SALT_LEN)
    nonce = b64d(header["nonce"], what=f"{what} nonce", size=NONCE_LEN)
    return params, salt, nonce


def _passphrase_key(passphrase: str, salt: bytes, params: KdfParams) -> bytes:
    """scrypt over the NFC-normalised UTF-8 passphrase, so the same words typed on another
    keyboard or OS produce the same key."""
    if not isinstance(passphrase, str):
        raise ValueError("The passphrase must be a string.")
    secret = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    kdf = Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p)
    return kdf.derive(secret)


def _aad(prefix: bytes) -> bytes:
    return _ARK_AAD_LABEL.encode() + b"\x00" + prefix


def _check_ark(ark: bytes) -> None:
    if not isinstance(ark, bytes | bytearray) or len(ark) != ARK_LEN:
        raise ValueError(f"The appliance root key must be {ARK_LEN} bytes.")


# -- k-of-n Shamir shares of the ARK (GF(2^8), AES polynomial) ------------------------------

SHARE_PREFIX = "kapp-share-v1"
_SHARE_CHECK_LABEL = b"kapp/v1 share-check"


def split_root_key(ark: bytes, *, k: int, n: int) -> list[str]:
    """Split the ARK into ``n`` text shares, any ``k`` of which rebuild it (Shamir over GF(256)).

    Each share reads ``kapp-share-v1:K:N:X:CHECK:HEX``; CHECK (8 bytes of an HMAC of the ARK under a
    fixed label) lets :func:`combine_shares` tell a wrong or mistyped share from a right one
    without revealing anything useful: fewer than k shares leave all 2**256 keys equally likely.
    """
    _check_ark(ark)
    if not 2 <= k <= n <= 255:
        raise ValueError("Shares need 2 <= k <= n <= 255.")
    coefficients = [bytes(ark)] + [os.urandom(ARK_LEN) for _ in range(k - 1)]
    check = _share_check(ark)
    shares = []
    for x in range(1, n + 1):
        y = bytes(_poly_at([c[i] for c in coefficients], x) for i in range(ARK_LEN))
        shares.append(f"{SHARE_PREFIX}:{k}:{n}:{x}:{check}:{y.hex()}")
    return shares


def combine_shares(shares: list[str]) -> bytes:
    """Rebuild the ARK from at least k shares of one split; otherwise :class:`SealedError`."""
    parsed = {}
    for text in shares:
        k, n, x, check, y = _parse_share(text)
        parsed[x] = (k, n, check, y)
    if len({v[:3] for v in parsed.values()}) > 1:
        raise SealedError(
            "These shares come from different splits.",
            code="SHARES_MISMATCH",
            hint="Use shares made together by one split of this appliance's root key.",
        )
    if not parsed:
        raise SealedError("No shares were given.", code="NOT_ENOUGH_SHARES")
    k, _, check, _ = next(iter(parsed.values()))
    if len(parsed) < k:
        raise SealedError(
            f"{len(parsed)} distinct shares given; {k} are needed.", code="NOT_ENOUGH_SHARES"
        )
    points = sorted(parsed.items())[:k]
    ark = bytes(_interpolate_at_zero([(x, v[3][i]) for x, v in points]) for i in range(ARK_LEN))
    if not hmac.compare_digest(_share_check(ark), check):
        raise SealedError(
            "The shares did not rebuild the root key (one is wrong or mistyped).",
            code="BAD_SHARE",
            hint="Check each share character by character.",
        )
    return ark


def _parse_share(text: str) -> tuple[int, int, int, str, bytes]:
    parts = text.strip().split(":") if isinstance(text, str) else []
    if len(parts) != 6 or parts[0] != SHARE_PREFIX or len(text) > 256:
        raise FormatError("This is not a root-key share (kapp-share-v1:K:N:X:CHECK:HEX).")
    try:
        k, n, x = (int(p, 10) for p in parts[1:4])
        y = bytes.fromhex(parts[5])
    except ValueError:
        raise FormatError("A root-key share has a malformed number or hex part.") from None
    if not (2 <= k <= n <= 255 and 1 <= x <= n) or len(y) != ARK_LEN or len(parts[4]) != 16:
        raise FormatError("A root-key share is out of range or has the wrong length.")
    return k, n, x, parts[4].lower(), y


def _share_check(ark: bytes) -> str:
    return hmac.new(ark, _SHARE_CHECK_LABEL, hashlib.sha256).hexdigest()[:16]


def _gf_mul(a: int, b: int) -> int:
    """Multiply in GF(2^8) modulo x^8+x^4+x^3+x+1 (the AES field)."""
    out = 0
    for _ in range(8):  # branch-free on the operands' bits
        out ^= a & -(b & 1)
        a = (a << 1) ^ (0x11B & -(a >> 7))
        b >>= 1
    return out


def _gf_inv(a: int) -> int:
    out, power = 1, a
    for _ in range(7):  # a^254 = a^(2+4+...+128) = a^-1
        power = _gf_mul(power, power)
        out = _gf_mul(out, power)
    return out


def _poly_at(coefficients: list[int], x: int) -> int:
    out = 0
    for c in reversed(coefficients):
        out = _gf_mul(out, x) ^ c
    return out


def _interpolate_at_zero(points: list[tuple[int, int]]) -> int:
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num = den = 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num, den = _gf_mul(num, xj), _gf_mul(den, xi ^ xj)
        secret ^= _gf_mul(yi, _gf_mul(num, _gf_inv(den)))
    return secret
