"""Where a model package came from: the source format and the SHA-256 of every source file.

A package records its provenance in the manifest's optional ``source`` field::

    "source": {"format": "gguf", "dtype": "fp32",
               "files": [{"name": "SmolLM2-135M-Instruct.Q4_1.gguf", "size": 101…, "sha256": "…"}]}
    "source": {"format": "hf-dir",
               "files": [{"name": "config.json", "size": 702, "sha256": "…"}, …]}

``format`` is ``hf-dir`` (a Hugging Face model directory, encrypted file by file) or ``gguf`` (a
GGUF file dequantised in memory to ``dtype`` and converted to a model directory). The digests are
of the *plaintext* source files, so an operator can compare them with ``sha256sum`` of what the
vendor shipped. The manifest is covered by ``manifest.mac`` and pinned by every policy (its
SHA-256), so the record cannot be altered without the package being refused. Packages made
before this field existed have none (``Manifest.source`` is None) and load as before.

A digest of plaintext confirms a guess but reveals nothing else: it tells a thief that a package
holds a given *public* model (which its name usually says anyway), never the weights of a
private one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, BinaryIO

from ._encoding import field
from .errors import FormatError

SOURCE_FORMATS = ("hf-dir", "gguf")
#: dtypes a GGUF import may dequantise to (names as in ``appliance.llm.loader.DTYPES``).
SOURCE_DTYPES = ("fp32", "bf16", "fp16")
MAX_SOURCE_FILES = 4096
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class SourceFile:
    """One plaintext source file: its name (relative, POSIX), size and SHA-256 (hex)."""

    name: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, obj: Any) -> SourceFile:
        what = "manifest source file"
        if not isinstance(obj, dict) or set(obj) != {"name", "size", "sha256"}:
            raise FormatError("A manifest source file entry has missing or unexpected fields.")
        entry = cls(
            field(obj, "name", str, what=what),
            field(obj, "size", int, what=what),
            field(obj, "sha256", str, what=what),
        )
        path = PurePosixPath(entry.name)
        if not entry.name or len(entry.name) > 512 or path.is_absolute() or ".." in path.parts:
            raise FormatError(f"Unsafe source file name in manifest: {entry.name[:80]!r}.")
        if entry.size < 0 or len(entry.sha256) != 64 or not set(entry.sha256) <= _HEX:
            raise FormatError("A manifest source file entry has an invalid size or digest.")
        return entry


@dataclass(frozen=True)
class PackageSource:
    """The provenance record of one package (see the module doc)."""

    format: str
    files: tuple[SourceFile, ...]
    dtype: str | None = None  # gguf only: what the tensors were dequantised to

    def __post_init__(self) -> None:
        if self.format not in SOURCE_FORMATS:
            raise FormatError(f"Unknown package source format {self.format!r}.")
        if (self.format == "gguf") != (self.dtype is not None):
            raise FormatError("A gguf source names its dtype; an hf-dir source has none.")
        if self.dtype is not None and self.dtype not in SOURCE_DTYPES:
            raise FormatError(f"Unknown source dtype {self.dtype!r}.")
        if not 0 < len(self.files) <= MAX_SOURCE_FILES:
            raise FormatError(f"A package source lists 1 to {MAX_SOURCE_FILES} files.")
        if len({f.name for f in self.files}) != len(self.files):
            raise FormatError("A package source lists a file twice.")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": self.format, "files": [f.to_dict() for f in self.files]}
        if self.dtype is not None:
            out["dtype"] = self.dtype
        return out

    @classmethod
    def from_dict(cls, obj: Any) -> PackageSource:
        if not isinstance(obj, dict) or not {"format", "files"} <= set(obj) <= {
            "format",
            "files",
            "dtype",
        }:
            raise FormatError("The manifest's source record has missing or unexpected fields.")
        files = obj["files"]
        if not isinstance(files, list):
            raise FormatError("The manifest's source files must be a list.")
        dtype = obj.get("dtype")
        if dtype is not None and not isinstance(dtype, str):
            raise FormatError("The manifest's source dtype must be a string.")
        return cls(
            format=field(obj, "format", str, what="manifest source"),
            files=tuple(SourceFile.from_dict(f) for f in files),
            dtype=dtype,
        )


def sha256_stream(handle: BinaryIO, *, block: int = 1 << 20) -> tuple[int, str]:
    """(size, SHA-256 hex) of everything left in ``handle``, read in blocks."""
    digest, size = hashlib.sha256(), 0
    while chunk := handle.read(block):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


class HashingReader:
    """A read-only file wrapper that hashes every byte read through ``readinto``/``read``."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle, self.hash, self.size = handle, hashlib.sha256(), 0

    def readinto(self, view: memoryview) -> int:
        got = self._handle.readinto(view)  # type: ignore[attr-defined]
        if got:
            self.hash.update(view[:got])
            self.size += got
        return int(got or 0)

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.hash.update(data)
        self.size += len(data)
        return data


class BufferReader:
    """A file-like reader over an in-memory buffer that copies only what is asked for."""

    def __init__(self, buf: Any) -> None:
        self._view, self._pos = memoryview(buf).cast("B"), 0

    def readinto(self, view: memoryview) -> int:
        n = min(len(view), len(self._view) - self._pos)
        view[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else min(len(self._view), self._pos + size)
        data = bytes(self._view[self._pos : end])
        self._pos = end
        return data


__all__ = [
    "SOURCE_DTYPES",
    "SOURCE_FORMATS",
    "BufferReader",
    "HashingReader",
    "PackageSource",
    "SourceFile",
    "sha256_stream",
]
