"""Writing model packages: encrypt a model directory, or in-memory model files, into a package.

The format (manifest, containers, MAC, sealed key) is defined in :mod:`secure.package`, which
re-exports :func:`package_model` and :func:`package_files`; see its module doc.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from ._encoding import b64e, canonical_json
from .container import encrypt_stream
from .errors import FormatError, SecureError
from .issuer import IssuerPublic
from .package import (
    FILES_DIR,
    KEY_ID,
    MANIFEST,
    MANIFEST_MAC,
    MAX_FILES,
    PACKAGE_TYPE,
    Manifest,
    PackageFile,
    _check_relative,
    _mac_key,
    _seal_info,
    validate_model_name,
)
from .provenance import BufferReader, HashingReader, PackageSource, SourceFile
from .seal import seal_to


def _source_files(src_dir: Path) -> list[tuple[str, Path]]:
    found = []
    for path in sorted(src_dir.rglob("*")):
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            raise SecureError(
                f"{path} is a symbolic link; package real files only.", code="INVALID_SOURCE"
            )
        if stat.S_ISREG(mode):
            rel = path.relative_to(src_dir).as_posix()
            if not rel.startswith("."):
                found.append((rel, path))
    if not found:
        raise SecureError(f"{src_dir} holds no files to package.", code="INVALID_SOURCE")
    return found


class _HashingWriter:
    def __init__(self, fh: BinaryIO) -> None:
        self._fh, self.hash = fh, hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.hash.update(data)
        return self._fh.write(data)


#: Encrypts the package's files into ``tmp``: (temp dir, data key, package id) -> entries, source.
_Encrypt = Callable[[Path, bytes, str], tuple[list[PackageFile], PackageSource]]


def package_model(
    src_dir: Path, out_dir: Path, *, name: str, issuer: IssuerPublic, now: int
) -> Manifest:
    """Encrypt every file of ``src_dir`` into a new package at ``out_dir``.

    The source is only read. The package is built in a sibling temp directory and renamed into
    place, so a crash never leaves a half package under ``out_dir``. The manifest records the
    source as ``hf-dir`` with the SHA-256 of every file, hashed while it is encrypted.
    """
    validate_model_name(name)
    src_dir, out_dir = src_dir.resolve(), out_dir.resolve()
    _check_new_output(out_dir)
    if out_dir.is_relative_to(src_dir):
        raise SecureError(
            "The package directory must lie outside the model directory.", code="INVALID_SOURCE"
        )
    sources = _source_files(src_dir)

    def encrypt(tmp: Path, data_key: bytes, package_id: str) -> tuple[list, PackageSource]:
        done = [
            _encrypt_path(rel, path, tmp, i, data_key, package_id)
            for i, (rel, path) in enumerate(sources)
        ]
        source = PackageSource("hf-dir", tuple(digest for _entry, digest in done))
        return [entry for entry, _digest in done], source

    return _build_package(out_dir, name=name, issuer=issuer, now=now, encrypt=encrypt)


def package_files(
    files: Mapping[str, Any],
    out_dir: Path,
    *,
    name: str,
    issuer: IssuerPublic,
    now: int,
    source: PackageSource,
) -> Manifest:
    """Encrypt in-memory model files (name -> buffer) into a new package at ``out_dir``.

    For models converted in memory (a dequantised GGUF): the plaintext is read from the buffers
    chunk by chunk and never written anywhere; the caller keeps ownership and should zero them.
    ``source`` is recorded in the manifest as it is (the digests of the original file).
    """
    validate_model_name(name)
    out_dir = out_dir.resolve()
    _check_new_output(out_dir)
    if not 0 < len(files) <= MAX_FILES:
        raise SecureError(f"A package holds 1 to {MAX_FILES} files.", code="INVALID_SOURCE")
    for rel in files:
        try:
            _check_relative(rel)
        except FormatError as exc:
            raise SecureError(exc.message, code="INVALID_SOURCE") from None

    def encrypt(tmp: Path, data_key: bytes, package_id: str) -> tuple[list, PackageSource]:
        entries = [
            _encrypt_reader(
                rel, BufferReader(files[rel]), _nbytes(files[rel]), tmp, i, data_key, package_id
            )
            for i, rel in enumerate(sorted(files))
        ]
        return entries, source

    return _build_package(out_dir, name=name, issuer=issuer, now=now, encrypt=encrypt)


def _nbytes(buf: Any) -> int:
    return memoryview(buf).nbytes


def _check_new_output(out_dir: Path) -> None:
    if out_dir.exists():
        raise SecureError(
            f"{out_dir} already exists.", code="EXISTS", hint="Choose a new output directory."
        )


def _build_package(
    out_dir: Path, *, name: str, issuer: IssuerPublic, now: int, encrypt: _Encrypt
) -> Manifest:
    data_key, package_id = os.urandom(32), "pkg-" + os.urandom(12).hex()
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    (tmp / FILES_DIR).mkdir(parents=True, mode=0o700)
    try:
        entries, source = encrypt(tmp, data_key, package_id)
        sealed = seal_to(issuer.box_public_key(), data_key, info=_seal_info(package_id))
        raw = canonical_json(
            {
                "type": PACKAGE_TYPE,
                "package_id": package_id,
                "model": name,
                "created_at": now,
                "issuer": issuer.to_dict(),
                "files": [e.to_dict() for e in entries],
                "sealed_key": b64e(sealed),
                "source": source.to_dict(),
            }
        )
        (tmp / MANIFEST).write_bytes(raw)
        mac = hmac.new(_mac_key(data_key), raw, hashlib.sha256).hexdigest()
        (tmp / MANIFEST_MAC).write_text(mac + "\n", encoding="ascii")
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Manifest.from_bytes(raw)


def _encrypt_path(
    rel: str, path: Path, pkg: Path, index: int, data_key: bytes, package_id: str
) -> tuple[PackageFile, SourceFile]:
    with path.open("rb") as src:
        reader = HashingReader(src)
        size = os.fstat(src.fileno()).st_size
        entry = _encrypt_reader(rel, reader, size, pkg, index, data_key, package_id)
    return entry, SourceFile(rel, reader.size, reader.hash.hexdigest())


def _encrypt_reader(
    rel: str, src: Any, size: int, pkg: Path, index: int, data_key: bytes, package_id: str
) -> PackageFile:
    container = f"{FILES_DIR}/{index:04d}.kpc"
    with (pkg / container).open("wb") as dst:
        writer = _HashingWriter(dst)
        encrypt_stream(
            src,
            writer,  # type: ignore[arg-type]  # a write-only, hashing file object
            data_key=data_key,
            object_id=package_id,
            name=rel,
            key_id=KEY_ID,
            size=size,
        )
        dst.flush()
        os.fsync(dst.fileno())
    return PackageFile(rel, container, size, writer.hash.hexdigest())
