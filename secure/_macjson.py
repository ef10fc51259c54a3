"""MACed JSON files: the shared shape of the keyring and the state file (private to `secure/`).

File = canonical JSON ``{"body": "<canonical JSON text>", "format": NAME, "mac": b64, "v": 1}``
with ``mac = HMAC-SHA256(key, "kapp/v1 mac" NUL NAME NUL v NUL body-bytes)``. The body travels as a
string so the MAC is checked over the exact bytes received (nothing is re-serialised to verify), the
file name and version are bound into the MAC, and the file stays readable JSON for an operator.

Everything that is not a well-formed, correctly MACed file of the expected kind is reported as
:class:`TamperedError`: we write these files atomically, so a malformed one is corrupt or edited.
Only a genuine file of a *newer* version gets the friendlier :class:`FormatError`.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

from ._encoding import b64d, b64e, canonical_json, parse_json_object
from .errors import FormatError, TamperedError

MAC_LEN = 32
_FIELDS = {"body", "format", "mac", "v"}


def dump(body: dict[str, Any], *, name: str, version: int, key: bytes) -> bytes:
    """Serialise ``body`` into a MACed file of kind ``name``."""
    text = canonical_json(body)
    mac = _mac(key, name, version, text)
    outer = {"body": text.decode("utf-8"), "format": name, "mac": b64e(mac), "v": version}
    return canonical_json(outer) + b"\n"


def load(
    data: bytes, *, name: str, version: int, key: bytes, what: str, limit: int
) -> dict[str, Any]:
    """Verify a MACed file of kind ``name``; return its body for the caller to check."""
    try:
        outer = parse_json_object(bytes(data), what=what, limit=limit)
    except FormatError as exc:
        raise TamperedError(what, detail=exc.message) from None
    if set(outer) != _FIELDS or outer["format"] != name:
        raise TamperedError(what, detail="unexpected outer fields or format name")
    if outer["v"] != version or isinstance(outer["v"], bool):
        if isinstance(outer["v"], int) and not isinstance(outer["v"], bool):
            raise FormatError(
                f"The {what} has version {outer['v']}; this release reads version {version}.",
                hint="Use the appliance release that wrote it, or restore a backup.",
            )
        raise TamperedError(what, detail="version is not an integer")
    if not isinstance(outer["body"], str):
        raise TamperedError(what, detail="body is not a string")
    try:
        mac = b64d(outer["mac"], what=f"{what} MAC", size=MAC_LEN)
        body_bytes = outer["body"].encode("utf-8")
    except (FormatError, UnicodeEncodeError) as exc:
        raise TamperedError(what, detail=str(exc)) from None
    if not hmac.compare_digest(mac, _mac(key, name, version, body_bytes)):
        raise TamperedError(what, detail="MAC mismatch")
    try:
        return parse_json_object(body_bytes, what=what, limit=limit)
    except FormatError as exc:
        raise TamperedError(what, detail=exc.message) from None


def disk_generation(
    path: Path, *, name: str, version: int, key: bytes, what: str, limit: int
) -> int | None:
    """The ``generation`` of the verified file at ``path`` (None if absent).

    Writers compare it with the generation they loaded, so a process holding a stale copy cannot
    overwrite newer state (e.g. a server that still has the keyring from before a CLI rotation).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    body = load(data, name=name, version=version, key=key, what=what, limit=limit)
    generation = body.get("generation")
    if not isinstance(generation, int) or isinstance(generation, bool):
        raise TamperedError(what, detail="generation is not an integer")
    return generation


def _mac(key: bytes, name: str, version: int, body: bytes) -> bytes:
    if len(key) < 16:
        raise ValueError("A MAC key must be at least 16 bytes.")
    msg = b"kapp/v1 mac\x00" + name.encode() + b"\x00" + str(version).encode() + b"\x00" + body
    return hmac.new(key, msg, hashlib.sha256).digest()
