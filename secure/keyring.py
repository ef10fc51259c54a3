"""Versioned key-encryption keys (kek:1..N) under the appliance root key, and wrapped data keys.

Why a keyring: data keys (one per container collection or vault) are wrapped by a kek instead of
by the ARK directly, so rotation is cheap (add kek:N+1, rewrap the small key-store files, no
payload re-encryption) and crypto-shredding is possible (raise the minimum version, then ``trim``
deletes the old keks: an old backup of a key-store file can then no longer be unwrapped).

``keyring.json`` is a MACed JSON file (see ``_macjson``) whose keks are each AES-256-GCM encrypted
under ``derive_key(ark, LABEL_KEYRING)``; the MAC key is ``derive_key(ark, LABEL_KEYRING_MAC)``.
It also lists the key-store files it knows of, so that ``trim`` can refuse to shred a kek that a
known store still needs.

Crash safety (K3): every change is one :func:`atomic_write`, ordered so a kill at any point leaves
the old or the new state. ``rotate`` writes the new kek before anything is wrapped with it; each
store's rewrap is its own atomic write and the old kek stays until ``trim``; ``KeyStore.create``
registers the store before writing it (a registered but absent store is harmless).
A writer whose in-memory copy is stale (another process wrote a newer generation) is refused with
``KEYRING_STALE`` instead of overwriting newer keks; the check and the write hold an exclusive
``flock`` on the keyring's directory, so two processes cannot both pass the check and then
overwrite each other. A long-running process that was refused can :meth:`Keyring.refresh` (re-read
the newer file) and retry. Crypto-shredding also needs old copies of ``keyring.json`` itself to be
gone: a restored old keyring still holds the old keks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import _macjson
from ._encoding import atomic_write, b64d, b64e, field, locked_dir, u32
from ._keystore import DATA_KEY_LEN, NONCE_LEN, KeyStore, WrappedKey, read_store_file
from .errors import FormatError, KeyringError, StateError, TamperedError
from .keys import LABEL_KEYRING, LABEL_KEYRING_MAC, derive_key

__all__ = ["DATA_KEY_LEN", "KeyStore", "Keyring", "WrappedKey", "retire_old_keys"]

FORMAT = "kapp-keyring"
VERSION = 1
MAX_KEYRING_BYTES = 8 << 20
MAX_VERSION = 2**31 - 1
KEK_LEN = 32
_MAX_STORES = 100_000


class Keyring:
    """The in-memory view of ``keyring.json``; every mutator persists atomically first.

    Build it with :meth:`create` or :meth:`load`; the constructor is internal.
    """

    def __init__(
        self, path: Path, ark: bytes, body: dict[str, Any], keks: dict[int, bytes]
    ) -> None:
        self.path = Path(path)
        self._enc_key = derive_key(ark, LABEL_KEYRING)
        self._mac_key = derive_key(ark, LABEL_KEYRING_MAC)
        self._keks = keks
        self.current_version: int = body["current"]
        self.min_version: int = body["min"]
        self.generation: int = body["generation"]
        self._stores: list[str] = list(body["stores"])
        self._sealed: dict[int, dict[str, str]] = dict(body["sealed"])

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, ark: bytes) -> Keyring:
        """Create a keyring with kek:1. Refuses to overwrite an existing keyring (it holds keys)."""
        path = Path(path)
        if path.exists():
            raise KeyringError(
                f"A keyring already exists at {path}; refusing to overwrite it.",
                hint="Load it instead, or move it away first if you really mean to start over.",
            )
        ring = cls(path, ark, _empty_body(), {})
        kek = os.urandom(KEK_LEN)
        sealed = {1: ring._seal_kek(1, kek)}
        ring._persist(current=1, min_=1, keks={1: kek}, sealed=sealed, stores=[])
        return ring

    @classmethod
    def load(cls, path: Path, ark: bytes) -> Keyring:
        """Load and verify ``keyring.json`` (MAC, every kek's GCM tag, structure)."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StateError(
                f"The keyring file {path} is missing.",
                hint="Restore it from backup; without it no stored data key can be unwrapped.",
            ) from None
        return cls.from_bytes(path, data, ark)

    @classmethod
    def from_bytes(cls, path: Path, data: bytes, ark: bytes) -> Keyring:
        """Parse keyring bytes as if read from ``path`` (lets fuzz tests skip the file system)."""
        mac_key = derive_key(ark, LABEL_KEYRING_MAC)
        what = "keyring"
        raw = _macjson.load(
            data, name=FORMAT, version=VERSION, key=mac_key, what=what, limit=MAX_KEYRING_BYTES
        )
        try:
            body = _parse_body(raw)
            ring = cls(path, ark, body, {})
            ring._keks = {v: ring._open_kek(v, sealed) for v, sealed in body["sealed"].items()}
        except (FormatError, ValueError) as exc:  # a MACed file that is inconsistent was forged
            raise TamperedError(what, detail=str(exc)) from None
        return ring

    def refresh(self) -> bool:
        """Adopt ``keyring.json`` as another process wrote it (same root key); True if it was
        newer. A server calls this after a write was refused as ``KEYRING_STALE``. A file of an
        older generation than the one in memory (a restored copy) is refused."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise StateError(
                f"The keyring file {self.path} is missing.",
                hint="Restore it from backup; without it no stored data key can be unwrapped.",
            ) from None
        raw = _macjson.load(
            data,
            name=FORMAT,
            version=VERSION,
            key=self._mac_key,
            what="keyring",
            limit=MAX_KEYRING_BYTES,
        )
        try:
            body = _parse_body(raw)
            keks = {v: self._open_kek(v, sealed) for v, sealed in body["sealed"].items()}
        except (FormatError, ValueError) as exc:
            raise TamperedError("keyring", detail=str(exc)) from None
        if body["generation"] < self.generation:
            raise KeyringError(
                f"The keyring {self.path} on disk is older (generation {body['generation']}) than "
                f"the one in use (generation {self.generation}); it was not adopted.",
                code="KEYRING_ROLLBACK",
                hint="Someone restored an old keyring file; restore the newest one.",
            )
        if body["generation"] == self.generation:
            return False
        self.current_version, self.min_version = body["current"], body["min"]
        self.generation, self._keks = body["generation"], keks
        self._sealed, self._stores = dict(body["sealed"]), sorted(body["stores"])
        return True

    # -- versions -----------------------------------------------------------------------------

    @property
    def versions(self) -> list[int]:
        """The kek versions still present (trimmed ones are gone for good)."""
        return sorted(self._keks)

    def rotate(self) -> int:
        """Add kek:N+1 and make it current; older keks stay until :meth:`trim`."""
        new = self.current_version + 1
        if new > MAX_VERSION:
            raise KeyringError("The keyring has reached its maximum version.")
        kek = os.urandom(KEK_LEN)
        keks = {**self._keks, new: kek}
        sealed = {**self._sealed, new: self._seal_kek(new, kek)}
        self._persist(
            current=new, min_=self.min_version, keks=keks, sealed=sealed, stores=self._stores
        )
        return new

    def set_min_version(self, v: int) -> None:
        """Refuse to unwrap anything wrapped below kek:v (only :meth:`rewrap` may still read it)."""
        if not self.min_version <= v <= self.current_version:
            raise KeyringError(
                f"The minimum key version must be between {self.min_version} (the present "
                f"minimum; it never goes down) and {self.current_version} (the current version)."
            )
        if v != self.min_version:
            self._persist(
                current=self.current_version,
                min_=v,
                keks=self._keks,
                sealed=self._sealed,
                stores=self._stores,
            )

    def trim(self, *, also_referenced: Iterable[int] = ()) -> list[int]:
        """Delete keks below the minimum version (crypto-shredding) and return their versions.

        Refuses while a registered key store, or a version in ``also_referenced`` (e.g. wrapped
        keys the caller keeps elsewhere), still needs one of them.
        """
        doomed = [v for v in self.versions if v < self.min_version]
        blockers = [
            f"{p} (kek:{v})" if v else f"{p} (unreadable)"
            for p, v in self._store_versions()
            if v < self.min_version
        ]
        blockers += [f"a caller-held key (kek:{v})" for v in also_referenced if v in doomed]
        if blockers:
            raise KeyringError(
                "Refusing to trim: still in use by " + ", ".join(sorted(set(blockers))) + ".",
                hint="Run the rewrap step first (e.g. `appliance keys rewrap`), then trim again.",
            )
        if doomed:
            keep = {v: k for v, k in self._keks.items() if v >= self.min_version}
            sealed = {v: s for v, s in self._sealed.items() if v >= self.min_version}
            self._persist(
                current=self.current_version,
                min_=self.min_version,
                keks=keep,
                sealed=sealed,
                stores=self._stores,
            )
        return doomed

    # -- wrapping -----------------------------------------------------------------------------

    def wrap(self, data_key: bytes, *, context: str) -> WrappedKey:
        """AES-256-GCM-wrap a 32-byte data key under the current kek; AAD binds version+context."""
        if not isinstance(data_key, bytes | bytearray) or len(data_key) != DATA_KEY_LEN:
            raise ValueError(f"A data key must be {DATA_KEY_LEN} bytes.")
        v = self.current_version
        nonce = os.urandom(NONCE_LEN)
        ct = AESGCM(self._keks[v]).encrypt(nonce, bytes(data_key), _wrap_aad(v, context))
        return WrappedKey(kek_version=v, nonce=nonce, ciphertext=ct)

    def unwrap(self, wrapped: WrappedKey, *, context: str) -> bytes:
        """Unwrap a data key; version problems raise :class:`KeyringError`, a bad tag
        :class:`TamperedError`."""
        if wrapped.kek_version < self.min_version and wrapped.kek_version in self._keks:
            raise KeyringError(
                f"The key was wrapped by kek:{wrapped.kek_version}, below the minimum version "
                f"kek:{self.min_version}.",
                code="KEK_BELOW_MIN",
                hint="Rewrap it to the current version (e.g. `appliance keys rewrap`).",
            )
        return self._unwrap(wrapped, context)

    def rewrap(self, wrapped: WrappedKey, *, context: str) -> WrappedKey:
        """Return ``wrapped`` re-wrapped under the current kek (unchanged if already current)."""
        if wrapped.kek_version == self.current_version:
            self._unwrap(wrapped, context)  # still verify it
            return wrapped
        return self.wrap(self._unwrap(wrapped, context), context=context)

    def _unwrap(self, wrapped: WrappedKey, context: str) -> bytes:
        v = wrapped.kek_version
        kek = self._keks.get(v)
        if kek is None:
            lowest = min(self._keks)
            if v < lowest:
                raise KeyringError(
                    f"The key was wrapped by kek:{v}, which was trimmed (crypto-shredded); it can "
                    "never be unwrapped again.",
                    code="KEK_TRIMMED",
                    hint="This is expected for backups older than the last trim.",
                )
            raise KeyringError(
                f"The key was wrapped by kek:{v}, which this keyring does not have (it ends at "
                f"kek:{self.current_version}).",
                code="KEK_UNKNOWN",
                hint="The keyring may be an older backup than the data; restore the newer one.",
            )
        try:
            return AESGCM(kek).decrypt(wrapped.nonce, wrapped.ciphertext, _wrap_aad(v, context))
        except InvalidTag:
            raise TamperedError("wrapped data key", detail=f"kek:{v} context={context}") from None

    # -- known key stores ---------------------------------------------------------------------

    def register_store(self, path: Path) -> None:
        """Remember a key-store file so that :meth:`trim` checks it (idempotent)."""
        rel = self._rel(path)
        if rel not in self._stores:
            if len(self._stores) >= _MAX_STORES:
                raise KeyringError("The keyring knows too many key stores.")
            self._persist(
                current=self.current_version,
                min_=self.min_version,
                keks=self._keks,
                sealed=self._sealed,
                stores=[*self._stores, rel],
            )

    def forget_store(self, path: Path) -> None:
        """Stop tracking a key store (after it was deleted)."""
        rel = self._rel(path)
        if rel in self._stores:
            self._persist(
                current=self.current_version,
                min_=self.min_version,
                keks=self._keks,
                sealed=self._sealed,
                stores=[s for s in self._stores if s != rel],
            )

    def stores(self) -> list[Path]:
        """Absolute paths of the registered key stores (some may not exist)."""
        return [self._abs(s) for s in self._stores]

    def rewrap_stores(self) -> list[Path]:
        """Rewrap every registered, existing store to the current kek; return those rewritten."""
        done = []
        for path in self.stores():
            if path.exists() and KeyStore.read(path, self).rewrap():
                done.append(path)
        return done

    def _store_versions(self) -> list[tuple[Path, int]]:
        """(path, kek version) of each existing registered store; version 0 if unreadable."""
        out = []
        for path in self.stores():
            try:
                out.append((path, read_store_file(path.read_bytes())[1].kek_version))
            except FileNotFoundError:
                continue
            except (OSError, FormatError):
                out.append((path, 0))
        return out

    def _rel(self, path: Path) -> str:
        base = os.path.abspath(self.path.parent)
        return Path(os.path.relpath(os.path.abspath(path), base)).as_posix()

    def _abs(self, rel: str) -> Path:
        return Path(os.path.normpath(self.path.parent / rel))

    # -- persistence --------------------------------------------------------------------------

    def _seal_kek(self, v: int, kek: bytes) -> dict[str, str]:
        nonce = os.urandom(NONCE_LEN)
        ct = AESGCM(self._enc_key).encrypt(nonce, kek, _kek_aad(v))
        return {"ct": b64e(ct), "nonce": b64e(nonce)}

    def _open_kek(self, v: int, sealed: dict[str, str]) -> bytes:
        nonce = b64d(sealed["nonce"], what="kek nonce", size=NONCE_LEN)
        ct = b64d(sealed["ct"], what="kek", size=KEK_LEN + 16)
        try:
            return AESGCM(self._enc_key).decrypt(nonce, ct, _kek_aad(v))
        except InvalidTag:
            raise TamperedError("keyring", detail=f"kek:{v} tag") from None

    def _persist(
        self,
        *,
        current: int,
        min_: int,
        keks: dict[int, bytes],
        sealed: dict[int, dict[str, str]],
        stores: list[str],
    ) -> None:
        """Write the proposed state atomically, then adopt it in memory."""
        gen = self.generation + 1
        body = {
            "current": current,
            "generation": gen,
            "keks": {str(v): sealed[v] for v in sorted(sealed)},
            "min": min_,
            "stores": sorted(stores),
        }
        data = _macjson.dump(body, name=FORMAT, version=VERSION, key=self._mac_key)
        with locked_dir(self.path.parent):  # no other writer between the check and the write
            on_disk = _macjson.disk_generation(
                self.path,
                name=FORMAT,
                version=VERSION,
                key=self._mac_key,
                what="keyring",
                limit=MAX_KEYRING_BYTES,
            )
            if on_disk != (self.generation or None):
                raise KeyringError(
                    f"The keyring {self.path} changed on disk since it was loaded "
                    f"(generation {on_disk}, expected {self.generation}); nothing was written.",
                    code="KEYRING_STALE",
                    hint="Another process changed it; reload (restart the service) and retry.",
                )
            atomic_write(self.path, data)
        self.current_version, self.min_version, self.generation = current, min_, gen
        self._keks, self._sealed, self._stores = dict(keks), dict(sealed), sorted(stores)


def retire_old_keys(keyring: Keyring) -> list[int]:
    """The full crypto-shredding sequence after a rotation: rewrap every registered store, raise
    the minimum version to the current one, then trim. Each step is crash-safe and re-runnable."""
    keyring.rewrap_stores()
    keyring.set_min_version(keyring.current_version)
    return keyring.trim()


def _empty_body() -> dict[str, Any]:
    return {"current": 0, "min": 0, "generation": 0, "stores": [], "sealed": {}}


def _parse_body(raw: dict[str, Any]) -> dict[str, Any]:
    """Check the invariants of a keyring body; raises FormatError/KeyError/ValueError on any."""
    what = "keyring"
    if set(raw) != {"current", "generation", "keks", "min", "stores"}:
        raise ValueError("unexpected fields")
    current = field(raw, "current", int, what=what)
    min_ = field(raw, "min", int, what=what)
    gen = field(raw, "generation", int, what=what)
    keks = field(raw, "keks", dict, what=what)
    stores = field(raw, "stores", list, what=what)
    if not 1 <= min_ <= current <= MAX_VERSION or gen < 1:
        raise ValueError("bad version numbers")
    sealed: dict[int, dict[str, str]] = {}
    for key, value in keks.items():
        if not key.isascii() or not key.isdigit() or str(int(key)) != key:
            raise ValueError("bad kek version key")
        if not isinstance(value, dict) or set(value) != {"ct", "nonce"}:
            raise ValueError("bad kek entry")
        sealed[int(key)] = value
    versions = sorted(sealed)
    if not versions or versions != list(range(versions[0], current + 1)) or versions[0] > min_:
        raise ValueError("kek versions are not contiguous up to the current one")
    if len(set(stores)) != len(stores) or not all(isinstance(s, str) and s for s in stores):
        raise ValueError("bad store list")
    return {"current": current, "min": min_, "generation": gen, "stores": stores, "sealed": sealed}


def _kek_aad(v: int) -> bytes:
    return b"kapp/v1 kek\x00" + u32(v)


def _wrap_aad(v: int, context: str) -> bytes:
    if not isinstance(context, str) or not context:
        raise ValueError("A wrapping context must be a non-empty string.")
    return b"kapp/v1 wrapped-key\x00" + u32(v) + context.encode("utf-8")
