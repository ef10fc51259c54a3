"""Wrapped data keys and key-store sidecar files (private; import them from `secure.keyring`).

A key store is one small file holding one data key wrapped by a kek, e.g.
``home/keys/collection-chunks.json``. The payloads it protects never change when it is rewrapped.
File: canonical JSON ``{"context": C, "format": "kapp-keystore", "v": 1, "wrapped": {...}}``. No
MAC is needed: the wrapped key's GCM tag covers the kek version and the context (AAD), so editing
any field makes the unwrap fail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ._encoding import atomic_write, b64d, b64e, canonical_json, field, parse_json_object
from .errors import FormatError, KeyringError, TamperedError

DATA_KEY_LEN = 32
NONCE_LEN = 12
WRAPPED_LEN = DATA_KEY_LEN + 16
MAX_CONTEXT = 1024
STORE_FORMAT = "kapp-keystore"
STORE_VERSION = 1
_MAX_STORE_BYTES = 16 << 10


@dataclass(frozen=True)
class WrappedKey:
    """A 32-byte data key AES-256-GCM-encrypted under kek:``kek_version``."""

    kek_version: int
    nonce: bytes
    ciphertext: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"ct": b64e(self.ciphertext), "kek": self.kek_version, "nonce": b64e(self.nonce)}

    @classmethod
    def from_dict(cls, obj: Any) -> WrappedKey:
        """Strictly parse the dict form (exact fields, sizes); :class:`FormatError` otherwise."""
        what = "wrapped key"
        if not isinstance(obj, dict) or set(obj) != {"ct", "kek", "nonce"}:
            raise FormatError(f"The {what} must have exactly the fields ct, kek, nonce.")
        version = field(obj, "kek", int, what=what)
        if not 1 <= version <= 2**31 - 1:
            raise FormatError(f"The {what} names an impossible kek version.")
        nonce = b64d(obj["nonce"], what=f"{what} nonce", size=NONCE_LEN)
        ct = b64d(obj["ct"], what=what, size=WRAPPED_LEN)
        return cls(kek_version=version, nonce=nonce, ciphertext=ct)


def read_store_file(data: bytes) -> tuple[str, WrappedKey]:
    """Parse key-store bytes into (context, wrapped key); :class:`FormatError` on anything odd."""
    what = "key-store file"
    obj = parse_json_object(data, what=what, limit=_MAX_STORE_BYTES)
    if set(obj) != {"context", "format", "v", "wrapped"} or obj["format"] != STORE_FORMAT:
        raise FormatError(f"This is not a {what}.")
    if field(obj, "v", int, what=what) != STORE_VERSION:
        raise FormatError(f"The {what} has version {obj['v']}; this release reads {STORE_VERSION}.")
    context = field(obj, "context", str, what=what)
    check_context(context)
    return context, WrappedKey.from_dict(obj["wrapped"])


def store_bytes(context: str, wrapped: WrappedKey) -> bytes:
    obj = {
        "context": context,
        "format": STORE_FORMAT,
        "v": STORE_VERSION,
        "wrapped": wrapped.to_dict(),
    }
    return canonical_json(obj) + b"\n"


def check_context(context: object) -> None:
    if not isinstance(context, str) or not context or len(context.encode("utf-8")) > MAX_CONTEXT:
        raise FormatError(f"A key context must be a non-empty string of <= {MAX_CONTEXT} bytes.")


class Wrapper(Protocol):
    """What a key store needs of the keyring that wraps its data key (`secure.keyring.Keyring`;
    named by this protocol so that the two modules do not import each other)."""

    def wrap(self, data_key: bytes, *, context: str) -> WrappedKey: ...
    def unwrap(self, wrapped: WrappedKey, *, context: str) -> bytes: ...
    def rewrap(self, wrapped: WrappedKey, *, context: str) -> WrappedKey: ...
    def register_store(self, path: Path) -> None: ...
    def forget_store(self, path: Path) -> None: ...


class KeyStore:
    """One wrapped data key in its own file, registered with the keyring that wraps it."""

    def __init__(self, path: Path, keyring: Wrapper, context: str, wrapped: WrappedKey) -> None:
        self.path = Path(path)
        self.keyring = keyring
        self.context = context
        self.wrapped = wrapped

    @classmethod
    def create(cls, path: Path, keyring: Wrapper, *, context: str) -> tuple[KeyStore, bytes]:
        """Make a new random data key, wrap it, register and write the store; return both.

        Refuses to overwrite an existing store: that would destroy the key to its data.
        """
        path = Path(path)
        try:
            check_context(context)
        except FormatError as exc:
            raise ValueError(exc.message) from None
        if path.exists():
            raise KeyringError(
                f"A key store already exists at {path}; refusing to overwrite its data key.",
                hint="Load it instead; delete it only if its data is meant to be destroyed.",
            )
        data_key = os.urandom(DATA_KEY_LEN)
        store = cls(path, keyring, context, keyring.wrap(data_key, context=context))
        keyring.register_store(path)  # first: a registered but unwritten store is harmless
        atomic_write(path, store_bytes(context, store.wrapped))
        return store, data_key

    @classmethod
    def read(cls, path: Path, keyring: Wrapper) -> KeyStore:
        """Parse a store file without unwrapping (for rewrap and inventory)."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyringError(
                f"The key store {path} is missing.",
                code="KEYSTORE_MISSING",
                hint="Restore it from backup; the data it protects cannot be read without it.",
            ) from None
        context, wrapped = read_store_file(data)
        return cls(path, keyring, context, wrapped)

    @classmethod
    def load(cls, path: Path, keyring: Wrapper, *, context: str) -> tuple[KeyStore, bytes]:
        """Read the store and unwrap its data key for ``context``."""
        store = cls.read(path, keyring)
        if store.context != context:
            raise TamperedError("key store", detail=f"context {store.context!r} != {context!r}")
        return store, keyring.unwrap(store.wrapped, context=context)

    def rewrap(self) -> bool:
        """Rewrap to the keyring's current kek in one atomic write; False if already current."""
        new = self.keyring.rewrap(self.wrapped, context=self.context)
        if new == self.wrapped:
            return False
        atomic_write(self.path, store_bytes(self.context, new))
        self.wrapped = new
        return True

    def destroy(self) -> None:
        """Delete the store and stop tracking it. Backups of the file still open until the kek
        that wrapped it is trimmed (rotate, then :func:`secure.keyring.retire_old_keys`)."""
        self.path.unlink(missing_ok=True)
        self.keyring.forget_store(self.path)
