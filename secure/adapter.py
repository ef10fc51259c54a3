"""Encrypted adapter packages: LoRA weights trained on this appliance, usable only with their base.

```
<home>/adapters/NAME/
  manifest.json   canonical JSON: adapter id, name, the base package it was trained on (model,
                  package id, manifest SHA-256), the training data's SHA-256, the settings, files
  manifest.mac    HMAC-SHA256 (hex) of manifest.json under a key derived from the data key
  files/0000.kpc  one container per file (adapter weights, adapter config)
<home>/keys/stores/adapters/<adapter id>.json   the data key, wrapped by the keyring
```

The data key is made on the appliance and never leaves it unwrapped, so a copied adapter opens
nowhere else (T2) and removing it crypto-shreds it. The manifest's MAC commits to the data key,
so the base it names cannot be edited; :meth:`AdapterStore.open` then refuses (as tampered) an
adapter whose base digest differs from the base package installed now: its weights were trained
on other weights. The base's own policy decides whether, where, when and for whom the adapter
may be used: callers open the base through :meth:`secure.models.ModelStore.open_model` first.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import _membuf
from ._encoding import canonical_json, field, fsync_dir, parse_json_object
from .container import Container, encrypt_stream
from .errors import FormatError, KeyringError, SecureError, TamperedError
from .home import UnlockedHome
from .keyring import Keyring, KeyStore
from .package import PackageFile, PlainBuffer, _decrypt_entry, validate_model_name

ADAPTER_TYPE = "kapp-adapter-package/1"
MANIFEST = "manifest.json"
MANIFEST_MAC = "manifest.mac"
FILES_DIR = "files"
KEY_ID = "adapter"
MAX_FILES = 16
_FIELDS = {"type", "adapter_id", "name", "created_at", "base", "data", "training", "files"}
_BASE_FIELDS = {"model", "package_id", "manifest_sha256"}


def _mac_key(data_key: bytes) -> bytes:
    return HKDF(SHA256(), 32, salt=None, info=b"kapp/v1 adapter-manifest-mac").derive(data_key)


def _context(adapter_id: str) -> str:
    return f"kapp/v1 adapter:{adapter_id}"


@dataclass(frozen=True)
class BaseRef:
    model: str
    package_id: str
    manifest_sha256: str

    def to_dict(self) -> dict[str, str]:
        return {
            "model": self.model,
            "package_id": self.package_id,
            "manifest_sha256": self.manifest_sha256,
        }


@dataclass(frozen=True)
class AdapterManifest:
    raw: bytes
    adapter_id: str
    name: str
    created_at: int
    base: BaseRef
    data: dict[str, Any]
    training: dict[str, Any]
    files: tuple[PackageFile, ...]

    @classmethod
    def from_bytes(cls, raw: bytes) -> AdapterManifest:
        obj = parse_json_object(raw, what="adapter manifest")
        if set(obj) != _FIELDS or obj.get("type") != ADAPTER_TYPE:
            raise FormatError("This is not an adapter manifest (missing or extra fields).")
        base = obj["base"]
        if not isinstance(base, dict) or set(base) != _BASE_FIELDS:
            raise FormatError("The adapter manifest's base is malformed.")
        files = obj["files"]
        if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
            raise FormatError(f"An adapter lists 1 to {MAX_FILES} files.")
        if not isinstance(obj["data"], dict) or not isinstance(obj["training"], dict):
            raise FormatError("The adapter manifest's data and training must be objects.")
        entries = tuple(PackageFile.from_dict(f) for f in files)
        if len({e.name for e in entries}) != len(entries):
            raise FormatError("The adapter manifest lists a file twice.")
        return cls(
            raw=raw,
            adapter_id=field(obj, "adapter_id", str, what="adapter manifest"),
            name=field(obj, "name", str, what="adapter manifest"),
            created_at=field(obj, "created_at", int, what="adapter manifest"),
            base=BaseRef(**{k: field(base, k, str, what="adapter base") for k in _BASE_FIELDS}),
            data=dict(obj["data"]),
            training=dict(obj["training"]),
            files=entries,
        )

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


class AdapterStore:
    """The adapters installed in one home."""

    def __init__(self, home: UnlockedHome) -> None:
        self.home = home
        self.root = home.layout.root / "adapters"

    def _key_path(self, adapter_id: str) -> Path:
        return self.home.layout.key_stores / "adapters" / f"{adapter_id}.json"

    # ----- install ---------------------------------------------------------------------------
    def install(
        self,
        name: str,
        files: Mapping[str, bytes | bytearray],
        *,
        base: BaseRef,
        data: dict[str, Any],
        training: dict[str, Any],
        actor: str,
        now: int,
    ) -> AdapterManifest:
        """Encrypt ``files`` into a new adapter package ``name`` (refused if the name is taken
        by a model or another adapter). Built in a temp directory and renamed into place."""
        validate_model_name(name)
        dest = self.root / name
        if dest.exists() or (self.home.layout.models / name).exists():
            raise SecureError(
                f"A model or adapter named {name} is installed already.",
                code="EXISTS",
                hint="Choose another --name, or remove the old adapter first.",
            )
        adapter_id = "adp-" + os.urandom(12).hex()
        self.home.record(
            "adapter.install",
            actor=actor,
            now=now,
            object=name,
            details={"adapter_id": adapter_id, "base": base.model, "data": data.get("sha256", "")},
        )
        key_path = self._key_path(adapter_id)
        key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data_key = _create_key(self.home.keyring, key_path, _context(adapter_id))
        tmp = self.root / f".{name}.partial-{os.getpid()}"
        try:
            (tmp / FILES_DIR).mkdir(parents=True, mode=0o700)
            entries = [
                _encrypt(tmp, i, rel, content, data_key, adapter_id)
                for i, (rel, content) in enumerate(sorted(files.items()))
            ]
            raw = canonical_json(
                {
                    "type": ADAPTER_TYPE,
                    "adapter_id": adapter_id,
                    "name": name,
                    "created_at": now,
                    "base": base.to_dict(),
                    "data": data,
                    "training": training,
                    "files": [e.to_dict() for e in entries],
                }
            )
            (tmp / MANIFEST).write_bytes(raw)
            mac = hmac.new(_mac_key(data_key), raw, hashlib.sha256).hexdigest()
            (tmp / MANIFEST_MAC).write_text(mac + "\n", encoding="ascii")
            os.replace(tmp, dest)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            _destroy_key(self.home.keyring, key_path)
            raise
        return AdapterManifest.from_bytes(raw)

    # ----- inventory -------------------------------------------------------------------------
    def installed(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / MANIFEST).is_file())

    def manifest(self, name: str) -> AdapterManifest:
        validate_model_name(name)
        path = self.root / name / MANIFEST
        try:
            raw = path.read_bytes()
        except OSError:
            raise SecureError(
                f"Adapter {name} is not installed.",
                code="NOT_INSTALLED",
                hint="See `appliance model list`.",
            ) from None
        try:
            return AdapterManifest.from_bytes(raw)
        except FormatError as exc:
            raise TamperedError("adapter manifest", detail=exc.message) from None

    def integrity_problems(self, name: str) -> list[str]:
        """Key-less check: every container present, parsing and hashing as listed."""
        from .package import iter_integrity_problems

        manifest = self.manifest(name)
        return list(iter_integrity_problems(self.root / name, _as_package(manifest)))

    # ----- use -------------------------------------------------------------------------------
    def open(self, name: str, *, base_manifest_sha256: str) -> dict[str, PlainBuffer]:
        """Decrypt the adapter's files into memory, after checking that it was trained on the
        base installed now and that its manifest is intact (TamperedError otherwise)."""
        manifest = self.manifest(name)
        if manifest.base.manifest_sha256 != base_manifest_sha256:
            raise TamperedError(
                "adapter",
                detail=f"trained on base {manifest.base.manifest_sha256[:16]}, installed base is "
                f"{base_manifest_sha256[:16]}",
            )
        try:
            key = KeyStore.load(
                self._key_path(manifest.adapter_id),
                self.home.keyring,
                context=_context(manifest.adapter_id),
            )[1]
        except KeyringError as exc:
            raise TamperedError("adapter", detail=f"key store: {exc.message}") from None
        pkg = self.root / name
        _verify_mac(pkg, manifest, key)
        out: dict[str, PlainBuffer] = {}
        try:
            for entry in manifest.files:
                out[entry.name] = _decrypt_entry(pkg, _as_package(manifest), entry, key, 1)
        except BaseException:
            for buf in out.values():
                _membuf.release(buf)
            raise
        return out

    def remove(self, name: str, *, actor: str, now: int) -> AdapterManifest:
        """Crypto-shred: the key store first, then the package."""
        manifest = self.manifest(name)
        self.home.record(
            "adapter.remove",
            actor=actor,
            now=now,
            object=name,
            details={"adapter_id": manifest.adapter_id},
        )
        _destroy_key(self.home.keyring, self._key_path(manifest.adapter_id))
        shutil.rmtree(self.root / name)
        return manifest


def _as_package(manifest: AdapterManifest) -> Any:
    """The adapter seen as a package: what the package helpers read of a manifest."""
    from types import SimpleNamespace

    return SimpleNamespace(package_id=manifest.adapter_id, files=manifest.files, raw=manifest.raw)


def _verify_mac(pkg: Path, manifest: AdapterManifest, key: bytes) -> None:
    try:
        stored = (pkg / MANIFEST_MAC).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TamperedError("adapter manifest", detail="manifest.mac unreadable") from exc
    expected = hmac.new(_mac_key(key), manifest.raw, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(stored.encode(), expected.encode()):
        raise TamperedError("adapter manifest", detail="manifest MAC mismatch")


def _encrypt(
    pkg: Path, index: int, rel: str, content: bytes | bytearray, key: bytes, adapter_id: str
) -> PackageFile:
    container = f"{FILES_DIR}/{index:04d}.kpc"
    out = io.BytesIO()
    encrypt_stream(
        io.BytesIO(content),
        out,
        data_key=key,
        object_id=adapter_id,
        name=rel,
        key_id=KEY_ID,
        size=len(content),
    )
    blob = out.getvalue()
    with (pkg / container).open("xb") as fh:
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())
    Container.from_bytes(blob)  # structural self-check
    return PackageFile(rel, container, len(content), hashlib.sha256(blob).hexdigest())


def _create_key(keyring: Keyring, path: Path, context: str) -> bytes:
    """A new data key in its own key store (re-read the keyring first; retried once if another
    process wrote it in between)."""
    for attempt in range(2):
        keyring.refresh()
        try:
            return KeyStore.create(path, keyring, context=context)[1]
        except KeyringError as exc:
            if exc.code != "KEYRING_STALE" or attempt:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _destroy_key(keyring: Keyring, path: Path) -> None:
    if not path.exists():
        return
    for attempt in range(2):
        keyring.refresh()
        try:
            KeyStore.read(path, keyring).destroy()
            return
        except KeyringError as exc:
            if exc.code != "KEYRING_STALE" or attempt:
                raise
