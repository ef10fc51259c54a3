"""The secure part of an appliance home: sealed root key, identity, keyring, state and audit.

`create_home` makes them; `unlock_home` unseals the root key with the passphrase and returns an
:class:`UnlockedHome` that holds the derived keys in memory only. Failed unseal attempts cannot
be MACed into the audit log (the audit key derives from the root key), so they go to a plain
`unseal-failures.log` (time, actor, reason: no secrets) and are moved into the audit log, as
refused `root_key.unseal` entries, at the next successful unlock.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ._encoding import atomic_write, canonical_json, parse_json_object
from .audit import AuditEntry, AuditLog
from .errors import SealedError, SecureError
from .host import collect_host_factors, hash_factors
from .identity import PURPOSE_AUDIT_CHECKPOINT, ApplianceIdentity, PublicIdentity
from .keyring import Keyring
from .keys import (
    LABEL_AUDIT_MAC,
    LABEL_HOST_FACTORS,
    LABEL_QUESTION_HMAC,
    LABEL_STATE_MAC,
    KdfParams,
    derive_key,
    new_root_key,
    seal_root_key,
    unseal_root_key,
)
from .state import StateFile


@dataclass(frozen=True)
class HomeLayout:
    """Where each secure file of a home lives."""

    root: Path

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def sealed_root_key(self) -> Path:
        return self.keys / "root.sealed"

    @property
    def identity(self) -> Path:
        return self.keys / "identity.sealed"

    @property
    def keyring(self) -> Path:
        return self.keys / "keyring.json"

    @property
    def state(self) -> Path:
        return self.keys / "state.json"

    @property
    def unseal_failures(self) -> Path:
        return self.keys / "unseal-failures.log"

    @property
    def audit(self) -> Path:
        return self.root / "audit" / "audit.log"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def policies(self) -> Path:
        return self.root / "policies"

    @property
    def key_stores(self) -> Path:
        return self.keys / "stores"

    def exists(self) -> bool:
        return self.sealed_root_key.exists()


@dataclass(frozen=True)
class HostContext:
    """This host as policies see it: hashed factors plus the binding strength label."""

    factors: Mapping[str, str]
    strength: str


class UnlockedHome:
    """A home whose root key is unsealed; derived keys live in this object only."""

    def __init__(self, layout: HomeLayout, ark: bytes, *, checkpoint_every: int = 100) -> None:
        self.layout = layout
        self._ark = ark
        self.identity = ApplianceIdentity.unseal(layout.identity.read_bytes(), ark)
        self.keyring = Keyring.load(layout.keyring, ark)
        self.state = StateFile.load(layout.state, derive_key(ark, LABEL_STATE_MAC))
        self.audit = AuditLog(
            layout.audit,
            mac_key=derive_key(ark, LABEL_AUDIT_MAC),
            protect_key=derive_key(ark, LABEL_QUESTION_HMAC),
            signer=lambda msg: self.identity.sign(msg, purpose=PURPOSE_AUDIT_CHECKPOINT),
            checkpoint_every=checkpoint_every,
        )

    def derive(self, label: str) -> bytes:
        return derive_key(self._ark, label)

    def reload_state(self) -> None:
        """Re-read the state file (a long-running server sees revocations made by the CLI)."""
        self.state = StateFile.load(self.layout.state, derive_key(self._ark, LABEL_STATE_MAC))

    def record(
        self,
        action: str,
        *,
        actor: str,
        now: int,
        object: str = "",
        outcome: str = "ok",
        reason: str = "",
        details: Mapping[str, str | int | bool] | None = None,
    ) -> AuditEntry:
        """Append one audit entry; raises AuditUnavailable (fail closed) if it cannot."""
        return self.audit.append(
            time=now,
            actor=actor,
            action=action,
            object=object,
            outcome=outcome,
            reason=reason,
            details=dict(details or {}),
        )

    def host(self, root: Path = Path("/")) -> HostContext:
        from .host import binding_strength

        raw = collect_host_factors(root)
        return HostContext(hash_factors(raw, self.derive(LABEL_HOST_FACTORS)), binding_strength())

    def public_identity(self, host: HostContext, *, now: int) -> PublicIdentity:
        return self.identity.public(host_factors=dict(host.factors))

    def identity_document(self, host: HostContext, *, now: int) -> bytes:
        return self.public_identity(host, now=now).to_document(self.identity)

    def _flush_unseal_failures(self, *, now: int) -> None:
        path = self.layout.unseal_failures
        if not path.exists():
            return
        for line in path.read_bytes().splitlines()[-1000:]:
            try:
                item = parse_json_object(line, what="unseal failure record")
                when, actor = int(item.get("time", now)), str(item.get("actor", "unknown"))[:256]
            except (SecureError, ValueError):
                continue
            self.record(
                "root_key.unseal",
                actor=actor,
                now=when,
                outcome="refused",
                reason=str(item.get("reason", "WRONG_PASSPHRASE"))[:128],
                details={"recorded_at_unlock": now},
            )
        path.unlink()


def create_home(
    layout: HomeLayout,
    passphrase: str,
    *,
    now: int,
    actor: str,
    params: KdfParams | None = None,
    checkpoint_every: int = 100,
) -> UnlockedHome:
    """Make the secure files of a new home. Refuses to touch an existing one."""
    if layout.exists():
        raise SecureError(
            f"{layout.root} already holds an appliance home.",
            code="EXISTS",
            hint="Use another --home, or remove the old home deliberately first.",
        )
    for directory in (
        layout.keys,
        layout.audit.parent,
        layout.models,
        layout.policies,
        layout.key_stores,
    ):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ark = new_root_key()
    atomic_write(layout.identity, ApplianceIdentity.generate(created_at=now).seal(ark))
    Keyring.create(layout.keyring, ark)
    StateFile.create(layout.state, derive_key(ark, LABEL_STATE_MAC))
    # The sealed root key is written last: a home "exists" only once everything else does.
    atomic_write(layout.sealed_root_key, seal_root_key(ark, passphrase, params=params))
    home = UnlockedHome(layout, ark, checkpoint_every=checkpoint_every)
    home.record("home.init", actor=actor, now=now, object=home.identity.appliance_id)
    return home


def unlock_home(
    layout: HomeLayout, passphrase: str, *, now: int, actor: str, checkpoint_every: int = 100
) -> UnlockedHome:
    """Unseal the root key; a wrong passphrase is recorded and audited at the next unlock."""
    if not layout.exists():
        raise SecureError(
            f"{layout.root} is not an appliance home.",
            code="NO_HOME",
            hint="Run `appliance init` first, or pass the right --home.",
        )
    try:
        ark = unseal_root_key(layout.sealed_root_key.read_bytes(), passphrase)
    except SealedError as exc:
        _note_unseal_failure(layout, now=now, actor=actor, reason=exc.code)
        raise
    home = UnlockedHome(layout, ark, checkpoint_every=checkpoint_every)
    home._flush_unseal_failures(now=now)
    return home


def _note_unseal_failure(layout: HomeLayout, *, now: int, actor: str, reason: str) -> None:
    line = canonical_json({"time": now, "actor": actor, "reason": reason}) + b"\n"
    fd = os.open(layout.unseal_failures, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
