"""Signed usage policies: who may unlock which model, where and when.

A policy is an Ed25519-signed envelope issued for ONE appliance identity. For each model it
carries the model's data key sealed (HPKE) to that appliance's X25519 key, so without a valid
policy for this host there is no key at all: the policy is a cryptographic gate, not an `if`.

Checks run in a fixed order, each failure with its own reason code (see :data:`REASONS`):
parse and size limits → signature by a pinned issuer → appliance id → serial and revocation →
time window against trusted time → host binding → app version → open the sealed key.
Per request, :func:`authorize` checks the caller's user and role.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._encoding import b64d, b64e, canonical_json, parse_json_object
from ._encoding import field as get
from .clock import check_skew, check_time
from .errors import FormatError, PolicyRefused, TamperedError
from .host import check_local_k, match_host, required_k
from .identity import ApplianceIdentity, PublicIdentity
from .issuer import IssuerKey, IssuerPublic
from .seal import open_sealed, seal_to

POLICY_TYPE = "kapp-policy/1"
SIGN_PURPOSE = "kapp/v1 policy"
MAX_POLICY_BYTES = 256 * 1024
MAX_MODELS = 64
MAX_NAMES = 256

REASONS = (
    "MALFORMED",
    "BAD_SIGNATURE",
    "UNKNOWN_ISSUER",
    "WRONG_APPLIANCE",
    "SERIAL_ROLLBACK",
    "REVOKED",
    "NOT_YET_VALID",
    "EXPIRED",
    "CLOCK_ROLLBACK",
    "BEFORE_ISSUED_AT",
    "OFFLINE_TOO_LONG",
    "HOST_MISMATCH",
    "APP_VERSION",
    "KEY_UNSEALABLE",
    "MODEL_NOT_COVERED",
    "MANIFEST_MISMATCH",
    "ROLE_DENIED",
    "USER_DENIED",
    "NO_POLICY",
    "FINETUNE_NOT_ALLOWED",
)


def _iso(ts: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key_info(policy_id: str, appliance_id: str, package_id: str) -> bytes:
    return b"\x00".join(
        [b"kapp/v1 policy-key", *(s.encode() for s in (policy_id, appliance_id, package_id))]
    )


@dataclass(frozen=True)
class ModelGrant:
    name: str
    package_id: str
    manifest_sha256: str
    sealed_key: bytes
    roles: tuple[str, ...]
    users: tuple[str, ...]  # empty: every user holding one of `roles`
    finetune: bool = False  # the model may be fine-tuned on this appliance (signed; default off)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "package_id": self.package_id,
            "manifest_sha256": self.manifest_sha256,
            "sealed_key": b64e(self.sealed_key),
            "roles": list(self.roles),
            "users": list(self.users),
        }
        if self.finetune:  # absent when off: such a grant is byte-identical to older releases'
            out["finetune"] = True
        return out

    @classmethod
    def from_dict(cls, obj: Any) -> ModelGrant:
        what = "policy model entry"
        if not isinstance(obj, dict) or set(obj) - {"finetune"} != _GRANT_FIELDS:
            raise FormatError("A policy model entry has missing or unexpected fields.")
        finetune = obj.get("finetune", False)
        if not isinstance(finetune, bool):
            raise FormatError("A policy model entry's finetune flag must be true or false.")
        return cls(
            name=get(obj, "name", str, what=what),
            package_id=get(obj, "package_id", str, what=what),
            manifest_sha256=get(obj, "manifest_sha256", str, what=what),
            sealed_key=b64d(get(obj, "sealed_key", str, what=what), what="sealed model key"),
            roles=_names(obj["roles"], "roles"),
            users=_names(obj["users"], "users"),
            finetune=finetune,
        )


#: The fields of a grant in every release; ``finetune`` (optional, older policies lack it and
#: mean "no") was added with fine-tuning.
_GRANT_FIELDS = {"name", "package_id", "manifest_sha256", "sealed_key", "roles", "users"}


def _names(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_NAMES:
        raise FormatError(f"The policy's {what} must be a list of at most {MAX_NAMES} names.")
    if not all(isinstance(v, str) and 0 < len(v) <= 128 for v in value):
        raise FormatError(f"The policy's {what} must be non-empty strings.")
    return tuple(value)


_PAYLOAD_FIELDS = {
    "type",
    "policy_id",
    "serial",
    "issuer_id",
    "appliance_id",
    "issued_at",
    "not_before",
    "not_after",
    "max_offline_s",
    "min_app_version",
    "host",
    "models",
}


@dataclass(frozen=True)
class Policy:
    """A parsed policy. Parsing checks structure only; :func:`check_policy` decides validity."""

    raw: bytes
    payload_raw: bytes
    signature: bytes
    policy_id: str
    serial: int
    issuer_id: str
    appliance_id: str
    issued_at: int
    not_before: int
    not_after: int
    max_offline_s: int | None
    min_app_version: str
    host_k: int
    host_factors: Mapping[str, str]
    models: tuple[ModelGrant, ...]

    @classmethod
    def from_bytes(cls, data: bytes) -> Policy:
        if len(data) > MAX_POLICY_BYTES:
            raise FormatError(f"The policy is {len(data)} bytes, over the limit.", code="MALFORMED")
        env = parse_json_object(data.strip(), what="policy envelope", limit=MAX_POLICY_BYTES)
        if env.get("type") != POLICY_TYPE or set(env) != {"type", "payload", "signature"}:
            raise FormatError("This is not a policy file of this appliance.", code="MALFORMED")
        payload_raw = b64d(get(env, "payload", str, what="policy"), what="policy payload")
        signature = b64d(get(env, "signature", str, what="policy"), what="signature", size=64)
        p = parse_json_object(payload_raw, what="policy payload")
        return cls._from_payload(data, payload_raw, signature, p)

    @classmethod
    def _from_payload(cls, raw: bytes, payload_raw: bytes, sig: bytes, p: dict[str, Any]) -> Policy:
        what = "policy"
        if set(p) != _PAYLOAD_FIELDS or p.get("type") != POLICY_TYPE:
            raise FormatError(
                "The policy payload has missing or unexpected fields.", code="MALFORMED"
            )
        host = p["host"]
        if not isinstance(host, dict) or set(host) != {"k", "factors"}:
            raise FormatError("The policy's host binding is malformed.", code="MALFORMED")
        factors = host["factors"]
        if not isinstance(factors, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in factors.items()
        ):
            raise FormatError("The policy's host factors are malformed.", code="MALFORMED")
        models = p["models"]
        if not isinstance(models, list) or not 0 < len(models) <= MAX_MODELS:
            raise FormatError("The policy must cover 1 to 64 models.", code="MALFORMED")
        max_offline = p["max_offline_s"]
        if max_offline is not None and (not isinstance(max_offline, int) or max_offline <= 0):
            raise FormatError("max_offline_s must be a positive integer or null.", code="MALFORMED")
        policy = cls(
            raw=raw,
            payload_raw=payload_raw,
            signature=sig,
            policy_id=get(p, "policy_id", str, what=what),
            serial=get(p, "serial", int, what=what),
            issuer_id=get(p, "issuer_id", str, what=what),
            appliance_id=get(p, "appliance_id", str, what=what),
            issued_at=get(p, "issued_at", int, what=what),
            not_before=get(p, "not_before", int, what=what),
            not_after=get(p, "not_after", int, what=what),
            max_offline_s=max_offline,
            min_app_version=get(p, "min_app_version", str, what=what),
            host_k=get(host, "k", int, what="policy host binding"),
            host_factors=dict(factors),
            models=tuple(ModelGrant.from_dict(m) for m in models),
        )
        if policy.not_after <= policy.not_before or policy.serial < 0 or policy.host_k < 0:
            raise FormatError("The policy's window, serial or host k is invalid.", code="MALFORMED")
        return policy

    def grant(self, model: str) -> ModelGrant | None:
        return next((g for g in self.models if g.name == model), None)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


def issue_policy(
    issuer: IssuerKey,
    *,
    identity: PublicIdentity,
    grants: Sequence[tuple[str, str, str, bytes, Sequence[str], Sequence[str]]],
    serial: int,
    issued_at: int,
    not_before: int,
    not_after: int,
    max_offline_s: int | None = None,
    min_app_version: str = "0",
    host_k: int | None = None,
    allow_finetune: bool = False,
) -> bytes:
    """Sign a policy for one appliance.

    ``grants`` holds, per model: (name, package_id, manifest_sha256, data_key, roles, users).
    Each data key is sealed to ``identity``; it never appears in the clear. ``allow_finetune``
    lets every model of the policy be fine-tuned on that appliance (signed with the rest).
    """
    if not_after <= not_before:
        raise ValueError("not_after must be later than not_before")
    policy_id = "pol-" + os.urandom(8).hex()
    factors = dict(identity.host_factors)
    k = host_k if host_k is not None else default_host_k(len(factors))
    models = []
    for name, package_id, manifest_sha256, key, roles, users in grants:
        sealed = seal_to(
            identity.box_public_key(),
            key,
            info=_key_info(policy_id, identity.appliance_id, package_id),
        )
        models.append(
            ModelGrant(
                name,
                package_id,
                manifest_sha256,
                sealed,
                tuple(roles),
                tuple(users),
                finetune=allow_finetune,
            ).to_dict()
        )
    payload = canonical_json(
        {
            "type": POLICY_TYPE,
            "policy_id": policy_id,
            "serial": serial,
            "issuer_id": issuer.public().issuer_id,
            "appliance_id": identity.appliance_id,
            "issued_at": issued_at,
            "not_before": not_before,
            "not_after": not_after,
            "max_offline_s": max_offline_s,
            "min_app_version": min_app_version,
            "host": {"k": k, "factors": factors},
            "models": models,
        }
    )
    signature = issuer.sign(payload, purpose=SIGN_PURPOSE)
    envelope = {"type": POLICY_TYPE, "payload": b64e(payload), "signature": b64e(signature)}
    return canonical_json(envelope) + b"\n"


def default_host_k(n: int) -> int:
    """All but one factor when there are three or more (a replaced NIC must not brick the box)."""
    return n - 1 if n >= 3 else n


@dataclass(frozen=True)
class TrustContext:
    """Everything a policy is judged against, passed in (never read from the clock or host here)."""

    now: int
    appliance_id: str
    host_factors: Mapping[str, str]  # this host's factors, hashed with the appliance's key
    app_version: str
    issuers: Mapping[str, IssuerPublic]  # pinned issuers by id
    serial_high_water: Mapping[str, int] = field(default_factory=dict)  # model name → serial
    revoked: frozenset[str] = frozenset()
    time_high_water: int = 0
    last_signed_at: int = 0
    skew_s: int = 300  # from local settings: at most clock.MAX_SKEW
    host_k_min: int = 0  # from local settings: raises the policy's k, never lowers it

    def __post_init__(self) -> None:
        check_skew(self.skew_s)
        check_local_k(self.host_k_min)


@dataclass(frozen=True)
class CheckResult:
    policy: Policy
    host_changed: tuple[str, ...]  # factors that drifted but stayed within k-of-n (audit them)
    host_matched: int
    host_required: int


def _refuse(code: str, message: str, hint: str = "") -> PolicyRefused:
    return PolicyRefused(message, code=code, hint=hint)


def check_signature(policy: Policy, issuers: Mapping[str, IssuerPublic]) -> None:
    issuer = issuers.get(policy.issuer_id)
    if issuer is None:
        raise _refuse(
            "UNKNOWN_ISSUER",
            f"Policy {policy.policy_id} is signed by issuer "
            f"{policy.issuer_id}, which this appliance does not trust.",
            "Install the model package from that issuer first (it pins the issuer).",
        )
    if not issuer.verify(policy.payload_raw, policy.signature, purpose=SIGN_PURPOSE):
        raise _refuse(
            "BAD_SIGNATURE",
            f"Policy {policy.policy_id} has an invalid signature.",
            "Ask the issuer for an intact copy of the policy.",
        )


def check_policy(policy: Policy, ctx: TrustContext, *, enforce_window: bool = True) -> CheckResult:
    """Run every check up to (not including) opening the sealed key, in the specified order.

    ``enforce_window=False`` (used when *installing* a policy) skips only the validity window,
    so a renewal can be installed before it starts; trusted time is still checked.
    """
    check_signature(policy, ctx.issuers)
    if policy.appliance_id != ctx.appliance_id:
        raise _refuse(
            "WRONG_APPLIANCE",
            f"Policy {policy.policy_id} was issued for appliance "
            f"{policy.appliance_id}, not this one ({ctx.appliance_id}).",
            "Send this appliance's identity (appliance identity export) to the issuer.",
        )
    _check_serial(policy, ctx)
    _check_window(policy, ctx, enforce_window)
    k = required_k(policy.host_k, ctx.host_k_min)
    host = match_host(dict(policy.host_factors), dict(ctx.host_factors), k=k)
    if not host.ok:
        raise _refuse(
            "HOST_MISMATCH",
            f"Policy {policy.policy_id} is bound to another host: "
            f"{host.matched} of {host.total} host factors match, {host.required} needed.",
            "Run the model on the appliance it was issued for, or ask for a new policy.",
        )
    if _version_tuple(ctx.app_version) < _version_tuple(policy.min_app_version):
        raise _refuse(
            "APP_VERSION",
            f"Policy {policy.policy_id} needs appliance version "
            f"{policy.min_app_version} or later (this is {ctx.app_version}).",
            "Upgrade the appliance.",
        )
    return CheckResult(policy, tuple(host.changed), host.matched, host.required)


def _check_serial(policy: Policy, ctx: TrustContext) -> None:
    if policy.policy_id in ctx.revoked:
        raise _refuse(
            "REVOKED",
            f"Policy {policy.policy_id} has been revoked.",
            "Ask the issuer for a new policy.",
        )
    for grant in policy.models:
        high = ctx.serial_high_water.get(grant.name, -1)
        if policy.serial < high:
            raise _refuse(
                "SERIAL_ROLLBACK",
                f"Policy {policy.policy_id} (serial {policy.serial}) "
                f"is older than serial {high} already seen for model {grant.name}.",
                "Install the newest policy from the issuer.",
            )


def _check_window(policy: Policy, ctx: TrustContext, enforce: bool = True) -> None:
    if enforce:
        check_validity(policy, ctx.now)
    check_time(
        ctx.now,
        high_water=ctx.time_high_water,
        issued_at=policy.issued_at,
        last_signed_at=max(ctx.last_signed_at, policy.issued_at),
        max_offline=policy.max_offline_s,
        skew=ctx.skew_s,
    )


def check_validity(policy: Policy, now: int) -> None:
    """The validity window alone: NOT_YET_VALID before it, EXPIRED at or after its end."""
    if now < policy.not_before:
        raise _refuse(
            "NOT_YET_VALID",
            f"Policy {policy.policy_id} is valid only from {_iso(policy.not_before)}.",
            "Wait until then or check the system clock.",
        )
    if now >= policy.not_after:
        raise _refuse(
            "EXPIRED",
            f"Policy {policy.policy_id} expired at {_iso(policy.not_after)}.",
            "Ask the issuer for a renewal, then run `appliance policy install FILE`.",
        )


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def open_model_key(
    policy: Policy,
    model: str,
    identity: ApplianceIdentity,
    *,
    manifest_sha256: str,
    package_id: str,
) -> bytes:
    """Open the sealed data key of ``model``: the last gate, after :func:`check_policy`."""
    grant = policy.grant(model)
    if grant is None:
        raise _refuse(
            "MODEL_NOT_COVERED",
            f"Policy {policy.policy_id} does not cover model {model}.",
            "Install a policy that names this model.",
        )
    if grant.package_id != package_id or grant.manifest_sha256 != manifest_sha256:
        raise _refuse(
            "MANIFEST_MISMATCH",
            f"Policy {policy.policy_id} was issued for another package of model {model}.",
            "Install the package the policy names.",
        )
    try:
        return open_sealed(
            identity.box_key,
            grant.sealed_key,
            info=_key_info(policy.policy_id, policy.appliance_id, package_id),
        )
    except TamperedError as exc:
        raise _refuse(
            "KEY_UNSEALABLE",
            f"The model key in policy {policy.policy_id} cannot be "
            "opened by this appliance's identity key.",
            "The policy was made for another appliance identity; ask for a new one.",
        ) from exc


def check_finetune(policy: Policy, model: str) -> None:
    """Whether ``policy`` lets ``model`` be fine-tuned here (FINETUNE_NOT_ALLOWED otherwise)."""
    grant = policy.grant(model)
    if grant is None or not grant.finetune:
        raise _refuse(
            "FINETUNE_NOT_ALLOWED",
            f"Policy {policy.policy_id} does not allow fine-tuning model {model}.",
            "Ask the issuer for a policy issued with --allow-finetune, then run "
            "`appliance policy install FILE`.",
        )


def authorize(grant: ModelGrant, *, user: str, role: str) -> None:
    """Per-request check of the caller against a model grant."""
    if role not in grant.roles:
        raise _refuse(
            "ROLE_DENIED",
            f"Role '{role}' may not use model {grant.name}.",
            f"Allowed roles: {', '.join(grant.roles) or 'none'}.",
        )
    if grant.users and user not in grant.users:
        raise _refuse(
            "USER_DENIED",
            f"User '{user}' may not use model {grant.name}.",
            "Ask the issuer to add the user to the policy.",
        )
