"""Canonical encodings shared by the secure formats (private to `secure/`).

Canonical JSON: UTF-8, sorted keys, no insignificant whitespace, no NaN/Infinity. Bytes travel as
unpadded URL-safe base64 strings. Parsers never re-serialise to verify: signatures and MACs are
always computed over the exact bytes that were received.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import FormatError

MAX_JSON_BYTES = 1 << 20  # no header, policy or manifest of ours is near 1 MiB


def canonical_json(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def parse_json_object(data: bytes, *, what: str, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """Parse bytes that must hold one JSON object, refusing oversize or duplicate-key input."""
    if len(data) > limit:
        raise FormatError(f"The {what} is {len(data)} bytes, over the {limit}-byte limit.")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise FormatError(f"The {what} has a duplicate key.")
        return dict(pairs)

    try:
        obj = json.loads(
            data.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError) as exc:  # incl. decode errors and over-long integers
        raise FormatError(f"The {what} is not valid UTF-8 JSON.") from exc
    if not isinstance(obj, dict):
        raise FormatError(f"The {what} must be a JSON object.")
    return obj


def _reject_constant(name: str) -> Any:
    raise FormatError(f"Non-finite number {name} is not allowed.")


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: Any, *, what: str, size: int | None = None) -> bytes:
    if not isinstance(text, str) or len(text) > 4 * MAX_JSON_BYTES:
        raise FormatError(f"The {what} must be a base64 string.")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise FormatError(f"The {what} is not valid base64.") from exc
    if b64e(raw) != text:
        raise FormatError(f"The {what} is not canonical base64.")
    if size is not None and len(raw) != size:
        raise FormatError(f"The {what} must be {size} bytes, not {len(raw)}.")
    return raw


def field(obj: dict[str, Any], name: str, kind: type, *, what: str) -> Any:
    """Fetch a required field of an exact type (bool is not accepted as int)."""
    if name not in obj:
        raise FormatError(f"The {what} lacks the field '{name}'.")
    value = obj[name]
    if kind is int and isinstance(value, bool):
        raise FormatError(f"The {what} field '{name}' must be an integer.")
    if not isinstance(value, kind):
        raise FormatError(f"The {what} field '{name}' must be of type {kind.__name__}.")
    return value


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` so that a crash leaves either the old or the new file, never a mix.

    temp file in the same directory → fsync → rename → fsync the directory.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def locked_dir(directory: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on ``directory`` (serialises writers of the
    files in it across processes; the files themselves are replaced, so they cannot carry it)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
