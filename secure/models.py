"""Installed models and their policies: install, inspect, revoke, and open for use.

This is the call the model loader uses: :meth:`ModelStore.open_model` opens an installed package
for a given user and role, at a given time, on a given host, and returns its files decrypted
straight into their final in-memory buffers. Every refusal raises a typed error with a reason
code and writes exactly one audit entry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._encoding import atomic_write
from .clock import DEFAULT_SKEW, check_skew
from .errors import FormatError, PolicyRefused, SecureError, TamperedError
from .home import HostContext, UnlockedHome
from .host import check_local_k
from .issuer import IssuerPublic
from .package import (
    Manifest,
    PlainBuffer,
    copy_package,
    decrypt_package,
    iter_integrity_problems,
    read_manifest,
    validate_model_name,
)
from .policy import (
    CheckResult,
    ModelGrant,
    Policy,
    TrustContext,
    authorize,
    check_finetune,
    check_policy,
    open_model_key,
)
from .provenance import PackageSource

APP_VERSION = "0.1.0"


@dataclass(frozen=True)
class ModelStatus:
    name: str
    package_id: str
    size: int
    integrity_ok: bool
    integrity_problems: tuple[str, ...]
    policy_id: str | None
    valid_from: int | None
    valid_until: int | None
    roles: tuple[str, ...]
    users: tuple[str, ...]
    binding: str  # "strong" | "soft"
    unlockable: bool
    reason_code: str
    reason: str
    source: PackageSource | None = None  # provenance from the manifest (None: older package)
    finetune: bool = False  # the effective policy allows fine-tuning this model here
    base: str | None = None  # for an adapter: the base model whose policy governs it


@dataclass
class OpenedModel:
    """Plaintext files of one model, in memory only. Call :meth:`wipe` when done."""

    name: str
    policy: Policy
    grant: ModelGrant
    manifest: Manifest
    files: dict[str, PlainBuffer]

    def wipe(self) -> None:
        from .package import wipe_buffers

        wipe_buffers(self.files.values())
        self.files.clear()


class ModelStore:
    def __init__(
        self, home: UnlockedHome, *, skew_s: int = DEFAULT_SKEW, host_k_min: int = 0
    ) -> None:
        """``skew_s`` (at most ``clock.MAX_SKEW``) and ``host_k_min`` come from unsigned local
        settings: they can only make a policy stricter. Out of range: ValueError, at once."""
        self.home = home
        self.skew_s = check_skew(skew_s)
        self.host_k_min = check_local_k(host_k_min)

    # ----- packages ---------------------------------------------------------------------------
    def install_package(self, pkg_dir: Path, *, actor: str, now: int) -> Manifest:
        try:
            manifest = read_manifest(pkg_dir)
            validate_model_name(manifest.model)
            if (self.home.layout.root / "adapters" / manifest.model).exists():
                raise SecureError(
                    f"An adapter named {manifest.model} is installed; models and adapters "
                    "share one namespace.",
                    code="EXISTS",
                    hint="Remove the adapter first, or package the model under another name.",
                )
            problems = list(iter_integrity_problems(pkg_dir, manifest))
            if problems:
                raise TamperedError("model package", detail="; ".join(problems[:5]))
            self._pin_issuer(manifest)
        except SecureError as exc:
            self._audit_refusal("model.install", actor, now, str(pkg_dir), exc)
            raise
        dest = self.home.layout.models / manifest.model
        if dest.exists():
            old = read_manifest(dest)
            if old.package_id == manifest.package_id:
                return manifest
            self._retire(dest)
        self.home.record(
            "model.install",
            actor=actor,
            now=now,
            object=manifest.model,
            details={"package_id": manifest.package_id, "issuer": manifest.issuer.issuer_id},
        )
        copy_package(pkg_dir, dest)
        return manifest

    def _retire(self, dest: Path) -> None:
        import shutil

        shutil.rmtree(dest)

    def _pin_issuer(self, manifest: Manifest) -> None:
        pinned = self.pinned_issuer(manifest.model)
        if pinned is None:
            self.home.state.trust_issuer(manifest.model, manifest.issuer.to_bytes())
            self.home.state.save()
        elif pinned.issuer_id != manifest.issuer.issuer_id:
            raise SecureError(
                f"Model {manifest.model} is pinned to issuer "
                f"{pinned.issuer_id}; this package comes from "
                f"{manifest.issuer.issuer_id}.",
                code="UNKNOWN_ISSUER",
                hint="Remove the installed model first if the change of issuer is intended.",
            )

    def pinned_issuer(self, model: str) -> IssuerPublic | None:
        """The issuer pinned for ``model`` when its first package was installed."""
        raw = self.home.state.trusted_issuers().get(model)
        return IssuerPublic.from_bytes(raw) if raw is not None else None

    def installed(self) -> list[str]:
        root = self.home.layout.models
        return (
            sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file())
            if root.exists()
            else []
        )

    def manifest(self, name: str) -> Manifest:
        validate_model_name(name)
        path = self.home.layout.models / name
        if not (path / "manifest.json").is_file():
            raise SecureError(
                f"Model {name} is not installed.",
                code="NOT_INSTALLED",
                hint="See `appliance model list`, or install it first.",
            )
        return read_manifest(path)

    # ----- policies ---------------------------------------------------------------------------
    def install_policy(self, data: bytes, *, actor: str, now: int, host: HostContext) -> Policy:
        """Verify a policy (signature, appliance, serial, trusted time, host, version, and that
        every model key opens) and keep it; refusals are audited.

        The validity window is not a reason to refuse: a renewal may be installed before it
        starts, and a newer policy that has already ended supersedes older ones (the issuer
        cut the term short). :meth:`status` and :meth:`open_model` enforce the window.
        """
        try:
            policy = _parse(data)
            check_policy(policy, self._trust(now, host), enforce_window=False)
            for grant in policy.models:
                manifest = self.manifest(grant.name)
                key = open_model_key(
                    policy,
                    grant.name,
                    self.home.identity,
                    manifest_sha256=manifest.sha256,
                    package_id=manifest.package_id,
                )
                del key  # bytes cannot be zeroed in place; drop the reference at once
        except SecureError as exc:
            self._audit_refusal("policy.install", actor, now, _policy_label(data), exc)
            raise
        self.home.record(
            "policy.install",
            actor=actor,
            now=now,
            object=policy.policy_id,
            details={
                "serial": policy.serial,
                "issuer": policy.issuer_id,
                "models": ",".join(g.name for g in policy.models),
                "not_before": policy.not_before,
                "not_after": policy.not_after,
            },
        )
        atomic_write(self.home.layout.policies / f"{policy.policy_id}.json", policy.raw)
        state = self.home.state
        for grant in policy.models:
            state.raise_serial(policy.issuer_id, grant.name, policy.serial)
        state.note_signed_artifact(policy.issued_at)
        state.advance_time(now)
        state.save()
        return policy

    def policies(self) -> list[Policy]:
        out = []
        for path in sorted(self.home.layout.policies.glob("*.json")):
            try:
                out.append(Policy.from_bytes(path.read_bytes()))
            except (SecureError, OSError):
                continue
        return out

    def policy(self, policy_id: str) -> Policy:
        for policy in self.policies():
            if policy.policy_id == policy_id:
                return policy
        raise SecureError(
            f"No installed policy {policy_id}.",
            code="NOT_FOUND",
            hint="See `appliance policy list`.",
        )

    def revoke(self, policy_id: str, *, actor: str, now: int) -> Policy:
        policy = self.policy(policy_id)
        self.home.record("policy.revoke", actor=actor, now=now, object=policy_id)
        self.home.state.revoke(policy_id)
        self.home.state.save()
        return policy

    def _trust(self, now: int, host: HostContext) -> TrustContext:
        state = self.home.state
        issuers: dict[str, IssuerPublic] = {}
        serials: dict[str, int] = {}
        for name in self.installed():
            pub = self.pinned_issuer(name)
            if pub is not None:
                issuers[pub.issuer_id] = pub
                serials[name] = state.serial_high_water(pub.issuer_id, name)
        return TrustContext(
            now=now,
            appliance_id=self.home.identity.appliance_id,
            host_factors=host.factors,
            app_version=APP_VERSION,
            issuers=issuers,
            serial_high_water=serials,
            revoked=state.revoked,
            time_high_water=state.time_high_water,
            last_signed_at=state.last_signed_artifact_at,
            skew_s=self.skew_s,
            host_k_min=self.host_k_min,
        )

    # ----- status and use ---------------------------------------------------------------------
    def _candidates(self, name: str) -> Iterator[Policy]:
        covering = [p for p in self.policies() if p.grant(name) is not None]
        yield from sorted(covering, key=lambda p: (p.serial, p.issued_at), reverse=True)

    def _effective(
        self, name: str, manifest: Manifest, now: int, host: HostContext
    ) -> tuple[CheckResult, bytes]:
        """The newest policy that passes every check, with the opened key; else the refusal."""
        first_error: SecureError | None = None
        for policy in self._candidates(name):
            try:
                result = check_policy(policy, self._trust(now, host))
                key = open_model_key(
                    policy,
                    name,
                    self.home.identity,
                    manifest_sha256=manifest.sha256,
                    package_id=manifest.package_id,
                )
                return result, key
            except PolicyRefused as exc:
                first_error = first_error or exc
        raise first_error or PolicyRefused(
            f"No policy for model {name} is installed.",
            code="NO_POLICY",
            hint="Ask the issuer for a policy and run `appliance policy install FILE`.",
        )

    def status(
        self, name: str, *, now: int, host: HostContext, check_integrity: bool = True
    ) -> ModelStatus:
        manifest = self.manifest(name)
        path = self.home.layout.models / name
        problems = tuple(iter_integrity_problems(path, manifest)) if check_integrity else ()
        newest = next(self._candidates(name), None)
        code, reason, unlockable, chosen = "OK", "can be unlocked now", False, newest
        try:
            result, key = self._effective(name, manifest, now, host)
            del key  # bytes cannot be zeroed in place; drop the reference at once
            chosen, unlockable = result.policy, not problems
        except PolicyRefused as exc:
            code, reason = exc.code, exc.diagnostics()
        if problems:
            code, reason, unlockable = "TAMPERED", "package integrity check failed", False
        grant = chosen.grant(name) if chosen else None
        return ModelStatus(
            name=name,
            package_id=manifest.package_id,
            size=manifest.total_size,
            integrity_ok=not problems,
            integrity_problems=problems,
            policy_id=chosen.policy_id if chosen else None,
            valid_from=chosen.not_before if chosen else None,
            valid_until=chosen.not_after if chosen else None,
            roles=grant.roles if grant else (),
            users=grant.users if grant else (),
            binding=host.strength,
            unlockable=unlockable,
            reason_code=code,
            reason=reason,
            source=manifest.source,
            finetune=bool(grant and grant.finetune and unlockable),
        )

    def open_model(
        self,
        name: str,
        *,
        user: str | None,
        role: str | None,
        now: int,
        host: HostContext,
        threads: int = 0,
        purpose: str = "serve",
    ) -> OpenedModel:
        """Unlock ``name`` for ``user``/``role``: every check, then decrypt into memory.

        ``user=None`` is the serving process itself loading a model it will later hand out per
        request: every policy check runs except :func:`authorize`, which the server then runs for
        each caller (see ``ModelStore.authorize``). ``purpose="finetune"`` (a training job,
        ``user=None``) also needs the policy's signed fine-tuning permission.
        """
        if purpose not in ("serve", "finetune"):
            raise ValueError(f"purpose must be 'serve' or 'finetune', not {purpose!r}")
        actor = f"user:{user}" if user is not None else f"service:{purpose}"
        try:
            manifest = self.manifest(name)
            result, key = self._effective(name, manifest, now, host)
            grant = result.policy.grant(name)
            assert grant is not None
            if purpose == "finetune":
                check_finetune(result.policy, name)
            if user is not None:
                authorize(grant, user=user, role=role or "")
            files = decrypt_package(self.home.layout.models / name, manifest, key, threads=threads)
        except SecureError as exc:
            self._audit_refusal("model.unlock", actor, now, name, exc)
            raise
        details: dict[str, str | int | bool] = {"policy": result.policy.policy_id}
        if purpose != "serve":
            details["purpose"] = purpose
        if role is not None:
            details["role"] = role
        if result.host_changed:
            details["host_factors_changed"] = ",".join(result.host_changed)
        self.home.record("model.unlock", actor=actor, now=now, object=name, details=details)
        self.home.state.advance_time(now)
        self.home.state.save()
        return OpenedModel(name, result.policy, grant, manifest, files)

    def _audit_refusal(self, action: str, actor: str, now: int, obj: str, exc: SecureError) -> None:
        details = {}
        detail = getattr(exc, "detail", "")
        if detail:
            details["detail"] = str(detail)[:500]
        self.home.record(
            action,
            actor=actor,
            now=now,
            object=obj,
            outcome="refused",
            reason=exc.code,
            details=details,
        )


def _parse(data: bytes) -> Policy:
    try:
        return Policy.from_bytes(data)
    except FormatError as exc:
        raise PolicyRefused(
            exc.message, code="MALFORMED", hint="Ask the issuer for an intact copy of the policy."
        ) from exc


def _policy_label(data: bytes) -> str:
    try:
        return Policy.from_bytes(data).policy_id
    except (SecureError, ValueError, json.JSONDecodeError):
        return "(unparseable policy)"
