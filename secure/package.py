"""Encrypted model packages: one container per file of a Hugging Face model directory.

```
PKG_DIR/
  manifest.json     canonical JSON: package id, model name, issuer, files, sealed data key,
                    and (packages made since the GGUF import) the source record: format and
                    SHA-256 of every plaintext source file (`secure.provenance`)
  manifest.mac      HMAC-SHA256 (hex) of manifest.json under a key derived from the data key
  files/0000.kpc …  one container per source file
```

Trust chain: the package's data key leaves the packager only sealed (HPKE) to the issuer. The
issuer opens it, checks ``manifest.mac`` (only a holder of the data key could have made it), and
signs policies that pin ``sha256(manifest.json)``; every container authenticates its own package
id and file name. So a manifest, container or file swap fails at the latest when the model is
opened, and an installed package is checked without any key by the ciphertext hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import _membuf
from ._encoding import b64d, field, parse_json_object
from ._membuf import PlainBuffer
from .container import Container
from .errors import FormatError, SecureError, TamperedError
from .issuer import IssuerKey, IssuerPublic
from .provenance import PackageSource, SourceFile
from .seal import open_sealed

PACKAGE_TYPE = "kapp-model-package/1"
MANIFEST = "manifest.json"
MANIFEST_MAC = "manifest.mac"
FILES_DIR = "files"
KEY_ID = "package"
MAX_FILES = 4096
#: Smaller files decrypt on the calling thread: starting workers would cost more than it saves.
_PARALLEL_MIN_BYTES = 8 << 20
_MANIFEST_FIELDS = {"type", "package_id", "model", "created_at", "issuer", "files", "sealed_key"}
_OPTIONAL_FIELDS = {"source"}  # absent in packages made before the source record existed


def _mac_key(data_key: bytes) -> bytes:
    return HKDF(SHA256(), 32, salt=None, info=b"kapp/v1 manifest-mac").derive(data_key)


def _seal_info(package_id: str) -> bytes:
    return b"kapp/v1 package-key\x00" + package_id.encode()


@dataclass(frozen=True)
class PackageFile:
    name: str  # path inside the model directory, POSIX form ("model.safetensors")
    container: str  # path inside the package ("files/0000.kpc")
    size: int  # plaintext bytes
    sha256: str  # of the container file (ciphertext)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "container": self.container,
            "size": self.size,
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, obj: Any) -> PackageFile:
        what = "manifest file entry"
        if not isinstance(obj, dict) or set(obj) != {"name", "container", "size", "sha256"}:
            raise FormatError("A manifest file entry has missing or unexpected fields.")
        entry = cls(
            field(obj, "name", str, what=what),
            field(obj, "container", str, what=what),
            field(obj, "size", int, what=what),
            field(obj, "sha256", str, what=what),
        )
        _check_relative(entry.name)
        _check_relative(entry.container)
        if not entry.container.startswith(FILES_DIR + "/") or entry.size < 0:
            raise FormatError("A manifest file entry points outside the package.")
        return entry


def _check_relative(name: str) -> None:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or len(name) > 512:
        raise FormatError(f"Unsafe path in manifest: {name!r}.")


@dataclass(frozen=True)
class Manifest:
    raw: bytes
    package_id: str
    model: str
    created_at: int
    issuer: IssuerPublic
    files: tuple[PackageFile, ...]
    sealed_key: bytes
    source: PackageSource | None = None  # None: packaged before sources were recorded

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        obj = parse_json_object(raw, what="package manifest")
        keys = set(obj)
        if (
            not _MANIFEST_FIELDS <= keys <= _MANIFEST_FIELDS | _OPTIONAL_FIELDS
            or obj.get("type") != PACKAGE_TYPE
        ):
            raise FormatError("This is not a model package manifest (missing or extra fields).")
        files = obj["files"]
        if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
            raise FormatError("The manifest must list 1 to 4096 files.")
        entries = tuple(PackageFile.from_dict(f) for f in files)
        if len({e.name for e in entries}) != len(entries) or len(
            {e.container for e in entries}
        ) != len(entries):
            raise FormatError("The manifest lists a file twice.")
        issuer = obj["issuer"]
        if not isinstance(issuer, dict):
            raise FormatError("The manifest's issuer must be an object.")
        return cls(
            raw=raw,
            package_id=field(obj, "package_id", str, what="manifest"),
            model=field(obj, "model", str, what="manifest"),
            created_at=field(obj, "created_at", int, what="manifest"),
            issuer=IssuerPublic.from_dict(issuer),
            files=entries,
            sealed_key=b64d(field(obj, "sealed_key", str, what="manifest"), what="sealed key"),
            source=PackageSource.from_dict(obj["source"]) if "source" in obj else None,
        )

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def validate_model_name(name: str) -> str:
    ok = name and len(name) <= 64 and all(c.isalnum() or c in "._-" for c in name)
    if not ok or name[0] in ".-":
        raise SecureError(
            f"Invalid model name {name!r}.",
            code="INVALID_NAME",
            hint="Use 1-64 letters, digits, '.', '_' or '-'.",
        )
    return name


def read_manifest(pkg_dir: Path) -> Manifest:
    try:
        raw = (pkg_dir / MANIFEST).read_bytes()
    except OSError as exc:
        raise SecureError(
            f"{pkg_dir} is not a model package ({exc.strerror}).",
            code="NOT_A_PACKAGE",
            hint="Point at the directory `model package` wrote.",
        ) from exc
    return Manifest.from_bytes(raw)


def verify_manifest_mac(pkg_dir: Path, manifest: Manifest, data_key: bytes) -> None:
    try:
        stored = (pkg_dir / MANIFEST_MAC).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TamperedError("package manifest", detail="manifest.mac unreadable") from exc
    expected = hmac.new(_mac_key(data_key), manifest.raw, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(stored.encode(), expected.encode()):
        raise TamperedError("package manifest", detail="manifest MAC mismatch")


def unseal_package_key(pkg_dir: Path, issuer: IssuerKey) -> tuple[Manifest, bytes]:
    """Issuer side: open the package's data key and authenticate its manifest with it."""
    manifest = read_manifest(pkg_dir)
    if manifest.issuer.issuer_id != issuer.public().issuer_id:
        raise SecureError(
            f"Package {manifest.package_id} was sealed to issuer "
            f"{manifest.issuer.issuer_id}, not to this issuer.",
            code="WRONG_ISSUER",
            hint="Use the issuer key whose issuer.pub was given to `model package`.",
        )
    key = open_sealed(
        issuer.box_private_key, manifest.sealed_key, info=_seal_info(manifest.package_id)
    )
    verify_manifest_mac(pkg_dir, manifest, key)
    return manifest, key


def iter_integrity_problems(pkg_dir: Path, manifest: Manifest) -> Iterator[str]:
    """Key-less integrity check: every container is present, parses and hashes as listed."""
    listed = {f.container for f in manifest.files}
    present = {p.relative_to(pkg_dir).as_posix() for p in (pkg_dir / FILES_DIR).glob("*")}
    for extra in sorted(present - listed):
        yield f"unexpected file {extra}"
    for entry in manifest.files:
        path = pkg_dir / entry.container
        try:
            header = Container.open(path).header
            digest = _sha256_file(path)
        except OSError as exc:
            yield f"{entry.name}: {exc.strerror}"
            continue
        except SecureError:
            yield f"{entry.name}: container failed its structural check"
            continue
        if digest != entry.sha256:
            yield f"{entry.name}: content hash differs from the manifest"
        elif (header.object_id, header.name, header.size) != (
            manifest.package_id,
            entry.name,
            entry.size,
        ):
            yield f"{entry.name}: container header does not match the manifest"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def decrypt_package(
    pkg_dir: Path, manifest: Manifest, data_key: bytes, *, threads: int = 0
) -> dict[str, PlainBuffer]:
    """Decrypt every file straight into its own final buffer (no other plaintext copy).

    Each buffer is a private anonymous map (``_membuf``: not zero-filled first, faulted in by
    the decrypt workers in batches, kept out of core dumps), or an empty bytearray for an empty
    file. Either is a writable buffer: ``torch.frombuffer`` views it, :func:`wipe_buffers`
    zeroes it. On any failure every buffer is zeroed before the error propagates (and unmapped
    once nothing refers to it any more).
    """
    verify_manifest_mac(pkg_dir, manifest, data_key)
    threads = threads or os.cpu_count() or 1
    out: dict[str, PlainBuffer] = {}
    try:
        for entry in manifest.files:
            out[entry.name] = _decrypt_entry(pkg_dir, manifest, entry, data_key, threads)
    except BaseException:
        for buf in out.values():
            _membuf.release(buf)
        raise
    return out


def _decrypt_entry(
    pkg_dir: Path, manifest: Manifest, entry: PackageFile, data_key: bytes, threads: int
) -> PlainBuffer:
    container = Container.open(pkg_dir / entry.container)
    header = container.header
    if (header.object_id, header.name, header.size) != (
        manifest.package_id,
        entry.name,
        entry.size,
    ):
        raise TamperedError("model package", detail=f"{entry.name}: header mismatch")
    buf = _membuf.allocate(entry.size)
    try:
        container.decrypt_into(  # wipes ``buf`` itself on a bad chunk
            data_key,
            buf,
            expect_object_id=manifest.package_id,
            expect_name=entry.name,
            threads=threads if entry.size > _PARALLEL_MIN_BYTES else 1,
        )
    except BaseException:
        _membuf.release(buf)
        raise
    return buf


def wipe_buffers(buffers: Any) -> None:
    """Zero plaintext buffers in place (no temporary copy of their size).

    Works on bytearrays and on the maps :func:`decrypt_package` returns, also while tensors still
    view them; a map stays mapped (zeroed) until its last reference is dropped.
    """
    for buf in buffers:
        _membuf.wipe(buf)


def copy_package(src: Path, dst: Path) -> None:
    """Copy a verified package into the home atomically (temp dir + rename)."""
    tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# The writing side lives in `secure.packager` (it imports this module's format definitions);
# re-exported here so that `secure.package` stays the one public entry point for packages.
from .packager import package_files, package_model  # noqa: E402

__all__ = [
    "Manifest",
    "PackageFile",
    "PackageSource",
    "PlainBuffer",
    "SourceFile",
    "copy_package",
    "decrypt_package",
    "iter_integrity_problems",
    "package_files",
    "package_model",
    "read_manifest",
    "unseal_package_key",
    "validate_model_name",
    "verify_manifest_mac",
    "wipe_buffers",
]
