"""The MACed state file: the appliance's memory of what it has already seen.

It holds the trusted-time high-water mark, the time of the last signed artifact, policy serial
high-water marks per (issuer, model), revoked policy ids, pinned issuers and a generation counter.
Each of these exists to make a rollback detectable: an older policy, a clock set back, a revoked
policy re-installed. The file is a MACed JSON file (see ``_macjson``) under
``derive_key(ark, LABEL_STATE_MAC)`` and is replaced atomically on every :meth:`StateFile.save`.

Limit (threat T6): without a TPM monotonic counter, restoring an *older intact copy* of this file
cannot be detected here; the generation counter makes it visible to anything that remembers a
later value (the audit log records it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import _macjson
from ._encoding import atomic_write, b64d, b64e, field
from .errors import FormatError, StateError, TamperedError

FORMAT = "kapp-state"
VERSION = 1
MAX_STATE_BYTES = 4 << 20
MAX_NAME = 256
MAX_ISSUER_KEY = 4096
_MAX_INT = 2**63 - 1
_FIELDS = {"generation", "issuers", "last_signed_at", "revoked", "serials", "time_high_water"}


class StateFile:
    """In-memory state plus the path and key to persist it; mutators change memory only, so a
    caller groups changes and then calls :meth:`save` once (one atomic write)."""

    def __init__(self, path: Path, mac_key: bytes, body: dict[str, Any]) -> None:
        if len(mac_key) < 16:
            raise ValueError("The state MAC key must be at least 16 bytes.")
        self.path = Path(path)
        self._key = mac_key
        self.generation: int = body["generation"]
        self._high_water: int = body["time_high_water"]
        self._last_signed: int = body["last_signed_at"]
        self._serials: dict[str, dict[str, int]] = body["serials"]
        self._revoked: set[str] = set(body["revoked"])
        self._issuers: dict[str, bytes] = body["issuers"]

    @classmethod
    def create(cls, path: Path, mac_key: bytes) -> StateFile:
        """Write a fresh state file; refuses to overwrite one (it would erase rollback memory)."""
        path = Path(path)
        if path.exists():
            raise StateError(
                f"A state file already exists at {path}; refusing to overwrite it.",
                hint="Load it instead.",
            )
        state = cls(path, mac_key, _empty_body())
        state.save()
        return state

    @classmethod
    def load(cls, path: Path, mac_key: bytes) -> StateFile:
        """Read and verify; an edited or corrupt file raises :class:`TamperedError`."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StateError(
                f"The state file {path} is missing.",
                hint="Restore it from backup. Starting without it would forget revocations "
                "and trusted time.",
            ) from None
        return cls.from_bytes(path, data, mac_key)

    @classmethod
    def from_bytes(cls, path: Path, data: bytes, mac_key: bytes) -> StateFile:
        what = "state file"
        raw = _macjson.load(
            data, name=FORMAT, version=VERSION, key=mac_key, what=what, limit=MAX_STATE_BYTES
        )
        try:
            body = _parse_body(raw)
        except (FormatError, ValueError) as exc:
            raise TamperedError(what, detail=str(exc)) from None
        return cls(path, mac_key, body)

    def save(self) -> None:
        """Persist atomically (temp, fsync, rename, fsync dir) with the generation bumped.

        Refuses (``STATE_STALE``) if the file on disk is not the generation this object loaded:
        a stale copy must never roll back revocations or trusted time written by another process.
        """
        on_disk = _macjson.disk_generation(
            self.path,
            name=FORMAT,
            version=VERSION,
            key=self._key,
            what="state file",
            limit=MAX_STATE_BYTES,
        )
        if on_disk != (self.generation or None):
            raise StateError(
                f"The state file {self.path} changed on disk since it was loaded "
                f"(generation {on_disk}, expected {self.generation}); nothing was written.",
                code="STATE_STALE",
                hint="Another process changed it; reload and retry.",
            )
        body = {
            "generation": self.generation + 1,
            "issuers": {name: b64e(key) for name, key in sorted(self._issuers.items())},
            "last_signed_at": self._last_signed,
            "revoked": sorted(self._revoked),
            "serials": {i: dict(sorted(m.items())) for i, m in sorted(self._serials.items())},
            "time_high_water": self._high_water,
        }
        atomic_write(self.path, _macjson.dump(body, name=FORMAT, version=VERSION, key=self._key))
        self.generation += 1

    # -- trusted time ---------------------------------------------------------------------

    @property
    def time_high_water(self) -> int:
        return self._high_water

    @property
    def last_signed_artifact_at(self) -> int:
        return self._last_signed

    def advance_time(self, now: int) -> bool:
        """Raise the high-water mark to ``now`` (never lowers it); True if it moved."""
        _check_int(now, "now")
        if now <= self._high_water:
            return False
        self._high_water = now
        return True

    def note_signed_artifact(self, at: int) -> bool:
        """Remember the issue time of a verified signed artifact (policy, package) if newer."""
        _check_int(at, "at")
        if at <= self._last_signed:
            return False
        self._last_signed = at
        return True

    # -- policy serials and revocation ------------------------------------------------------

    def serial_high_water(self, issuer: str, model: str) -> int:
        """Highest serial seen for (issuer, model); -1 when none, so serial 0 is accepted."""
        return self._serials.get(issuer, {}).get(model, -1)

    def serials(self, issuer: str) -> dict[str, int]:
        """model → highest serial seen from ``issuer``."""
        return dict(self._serials.get(issuer, {}))

    def raise_serial(self, issuer: str, model: str, serial: int) -> bool:
        """Record ``serial`` if higher than the mark (never lowers it); True if it moved."""
        _check_name(issuer, "issuer")
        _check_name(model, "model")
        _check_int(serial, "serial")
        if serial <= self.serial_high_water(issuer, model):
            return False
        self._serials.setdefault(issuer, {})[model] = serial
        return True

    @property
    def revoked(self) -> frozenset[str]:
        return frozenset(self._revoked)

    def is_revoked(self, policy_id: str) -> bool:
        return policy_id in self._revoked

    def revoke(self, policy_id: str) -> bool:
        """Revoke for good (there is no un-revoke); True if newly revoked."""
        _check_name(policy_id, "policy id")
        if policy_id in self._revoked:
            return False
        self._revoked.add(policy_id)
        return True

    # -- pinned issuers ---------------------------------------------------------------------

    def trusted_issuers(self) -> dict[str, bytes]:
        """name → public key bytes (opaque here: e.g. ``IssuerPublic.to_bytes()``)."""
        return dict(self._issuers)

    def trust_issuer(self, name: str, public_key: bytes) -> None:
        _check_name(name, "issuer")
        if not isinstance(public_key, bytes) or not 1 <= len(public_key) <= MAX_ISSUER_KEY:
            raise ValueError(f"An issuer public key must be 1..{MAX_ISSUER_KEY} bytes.")
        self._issuers[name] = public_key

    def distrust_issuer(self, name: str) -> bool:
        return self._issuers.pop(name, None) is not None


def _empty_body() -> dict[str, Any]:
    return {
        "generation": 0,
        "time_high_water": 0,
        "last_signed_at": 0,
        "serials": {},
        "revoked": [],
        "issuers": {},
    }


def _parse_body(raw: dict[str, Any]) -> dict[str, Any]:
    """Check every field of a (MAC-verified) body; FormatError/ValueError on any violation."""
    what = "state file"
    if set(raw) != _FIELDS:
        raise ValueError("unexpected or missing fields")
    body: dict[str, Any] = {
        name: _nonneg(field(raw, name, int, what=what))
        for name in ("generation", "time_high_water", "last_signed_at")
    }
    serials: dict[str, dict[str, int]] = {}
    for issuer, models in field(raw, "serials", dict, what=what).items():
        if not isinstance(models, dict):
            raise ValueError("serials must map issuer → {model: serial}")
        serials[_name(issuer)] = {_name(m): _nonneg(s) for m, s in models.items()}
    revoked = field(raw, "revoked", list, what=what)
    body["revoked"] = [_name(r) for r in revoked]
    issuers = field(raw, "issuers", dict, what=what)
    body["issuers"] = {_name(n): b64d(k, what="issuer key") for n, k in issuers.items()}
    body["serials"] = serials
    return body


def _nonneg(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT:
        raise ValueError("expected a non-negative integer")
    return value


def _name(value: Any) -> str:
    _check_name(value, "name")
    return str(value)


def _check_name(value: Any, what: str) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME:
        raise ValueError(f"The {what} must be a string of 1..{MAX_NAME} characters.")


def _check_int(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT:
        raise ValueError(f"{what} must be a non-negative integer (seconds or a serial).")
