"""`model …` and `policy …`."""

from __future__ import annotations

from pathlib import Path

import click

from secure.errors import PolicyRefused
from secure.identity import PublicIdentity
from secure.issuer import IssuerPublic, load_issuer
from secure.models import ModelStatus
from secure.package import (
    Manifest,
    package_model,
    unseal_package_key,
    validate_model_name,
)
from secure.policy import Policy, check_validity, issue_policy

from ..errors import UsageError
from ._context import CliContext, emit_json, iso, parse_duration, parse_time, pass_ctx
from ._open import open_home
from .init_cmds import issuer_passphrase

_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group()
def model() -> None:
    """Encrypted model packages."""


@model.command("package")
@click.argument("src", type=click.Path(path_type=Path, exists=True))
@click.option("--name", required=True, help="Model name (letters, digits, . _ -).")
@click.option(
    "--issuer-pub",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="The issuer.pub the data key is sealed to.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="New directory for the package.",
)
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "bf16", "fp16"]),
    default=None,
    help="GGUF only: the dtype tensors are dequantised to (default fp32).",
)
@pass_ctx
def model_package(
    ctx: CliContext, src: Path, name: str, issuer_pub: Path, out_dir: Path, dtype: str | None
) -> None:
    """Encrypt a model into a package: a Hugging Face model directory (every file as it is) or a
    GGUF file (dequantised in memory; the plaintext weights never touch the disk)."""
    pub = IssuerPublic.from_bytes(issuer_pub.read_bytes())
    if src.is_dir():
        if dtype is not None:
            raise UsageError(
                "--dtype applies to GGUF files only.",
                hint="A model directory is packaged byte for byte; drop --dtype.",
            )
        manifest = package_model(src, out_dir, name=name, issuer=pub, now=ctx.now())
        origin = "a model directory"
    else:
        manifest = _package_gguf(ctx, src, name, pub, out_dir, dtype)
        origin = f"GGUF {src.name}, dequantised to {manifest.source.dtype}"  # type: ignore[union-attr]
    click.echo(
        f"Packaged {len(manifest.files)} files ({manifest.total_size} bytes) of {name} from "
        f"{origin}, as {manifest.package_id} in {out_dir}; key sealed to {pub.issuer_id}."
    )


def _package_gguf(
    ctx: CliContext,
    src: Path,
    name: str,
    pub: IssuerPublic,
    out_dir: Path,
    dtype: str | None,
) -> Manifest:
    """Dequantise in memory, encrypt from memory, zero the plaintext (no core dump meanwhile)."""
    from ..llm.gguf_import import DEFAULT_DTYPE, package_gguf

    validate_model_name(name)  # before the minute-long import, not after it
    if out_dir.exists():
        raise UsageError(f"{out_dir} already exists.", hint="Choose a new output directory.")
    click.echo(f"Reading and dequantising {src.name} in memory ...", err=True)
    return package_gguf(
        src, out_dir, name=name, issuer=pub, now=ctx.now(), dtype=dtype or DEFAULT_DTYPE
    )


@model.command("install")
@click.argument("pkg_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@pass_ctx
def model_install(ctx: CliContext, pkg_dir: Path) -> None:
    """Verify a package and copy it into the home."""
    app = open_home(ctx)
    manifest = app.models.install_package(pkg_dir, actor=ctx.actor(), now=ctx.now())
    click.echo(
        f"Installed model {manifest.model} ({manifest.package_id}); issuer "
        f"{manifest.issuer.issuer_id} pinned."
    )


def _status_dict(s: ModelStatus) -> dict[str, object]:
    return {
        "name": s.name,
        "package_id": s.package_id,
        "size": s.size,
        "integrity": "ok" if s.integrity_ok else "FAILED",
        "integrity_problems": list(s.integrity_problems),
        "policy": s.policy_id,
        "valid_from": iso(s.valid_from) if s.valid_from else None,
        "valid_until": iso(s.valid_until) if s.valid_until else None,
        "roles": list(s.roles),
        "users": list(s.users),
        "host_binding": s.binding,
        "unlockable_now": s.unlockable,
        "reason_code": s.reason_code,
        "reason": s.reason,
        "source": s.source.to_dict() if s.source else None,
        "base": s.base,
        "finetune_allowed": s.finetune,
    }


@model.command("list")
@_json
@pass_ctx
def model_list(ctx: CliContext, as_json: bool) -> None:
    """Installed models: integrity, policy state and whether each can be unlocked now."""
    app = open_home(ctx)
    host = app.secure.host()
    rows = [
        _status_dict(app.models.status(n, now=ctx.now(), host=host)) for n in app.models.installed()
    ]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("No models installed.")
    for r in rows:
        state = "unlockable now" if r["unlockable_now"] else f"LOCKED ({r['reason_code']})"
        source = r["source"]["format"] if r["source"] else "-"  # type: ignore[index]
        kind = f" (adapter of {r['base']})" if r["base"] else ""
        click.echo(
            f"{r['name']}{kind}: integrity {r['integrity']}, source {source}, "
            f"policy {r['policy'] or '-'}, "
            f"valid until {r['valid_until'] or '-'}, binding {r['host_binding']}, "
            f"roles {','.join(r['roles']) or '-'}: {state}"  # type: ignore[arg-type]
        )


@model.command("verify")
@click.argument("name")
@_json
@pass_ctx
def model_verify(ctx: CliContext, name: str, as_json: bool) -> None:
    """Check integrity and policy; exit 1 with the reason when NAME cannot be unlocked now."""
    app = open_home(ctx)
    status = app.models.status(name, now=ctx.now(), host=app.secure.host())
    outcome = "ok" if status.unlockable else "refused"
    app.secure.record(
        "model.verify",
        actor=ctx.actor(),
        now=ctx.now(),
        object=name,
        outcome=outcome,
        reason="" if status.unlockable else status.reason_code,
        details={"problems": "; ".join(status.integrity_problems)[:500]}
        if status.integrity_problems
        else None,
    )
    if as_json:
        emit_json(_status_dict(status))
    elif status.unlockable:
        click.echo(
            f"{name}: OK, integrity verified, policy {status.policy_id} valid until "
            f"{iso(status.valid_until)} ({status.binding} host binding)."
        )
    else:
        problems = "; ".join(status.integrity_problems)
        click.echo(
            f"{name}: cannot be unlocked [{status.reason_code}]: {status.reason}"
            + (f" ({problems})" if problems else ""),
            err=True,
        )
    if not status.unlockable:
        raise SystemExit(1)


@click.group()
def policy() -> None:
    """Signed usage policies."""


@policy.command("issue")
@click.option(
    "--issuer",
    "issuer_dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    help="Issuer directory (issuer.key, issuer.pub).",
)
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File holding the issuer passphrase (else APPLIANCE_ISSUER_PASSPHRASE).",
)
@click.option(
    "--identity",
    "identity_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="The appliance's identity document.",
)
@click.option(
    "--package",
    "pkg_dirs",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    required=True,
    multiple=True,
    help="Model package (repeatable).",
)
@click.option("--roles", required=True, help="Comma-separated roles allowed, e.g. staff,admin.")
@click.option(
    "--users",
    default="",
    help="Comma-separated users allowed (default: anyone holding one of the roles).",
)
@click.option("--not-before", required=True, help="Start of validity (ISO 8601 or 'now').")
@click.option("--not-after", required=True, help="End of validity (ISO 8601).")
@click.option("--max-offline", help="Longest time without a newer signed policy, e.g. 30d.")
@click.option(
    "--serial",
    type=click.IntRange(0),
    default=None,
    help="Policy serial (default: current Unix time, so newer policies win).",
)
@click.option(
    "--host-k",
    type=click.IntRange(0),
    default=None,
    help="Host factors that must match (default: all but one of three or more).",
)
@click.option(
    "--allow-finetune",
    is_flag=True,
    help="Let the appliance fine-tune these models (signed into the policy; default off).",
)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True)
@pass_ctx
def policy_issue(
    ctx: CliContext,
    issuer_dir: Path,
    passphrase_file: Path | None,
    identity_file: Path,
    pkg_dirs: tuple[Path, ...],
    roles: str,
    users: str,
    not_before: str,
    not_after: str,
    max_offline: str | None,
    serial: int | None,
    host_k: int | None,
    allow_finetune: bool,
    out: Path,
) -> None:
    """Sign a policy for one appliance, sealing each model key to its identity."""
    key = load_issuer(issuer_dir, issuer_passphrase(passphrase_file))
    ident = PublicIdentity.from_document(identity_file.read_bytes())
    role_list = [r.strip() for r in roles.split(",") if r.strip()]
    user_list = [u.strip() for u in users.split(",") if u.strip()]
    grants = []
    for pkg in pkg_dirs:
        manifest, data_key = unseal_package_key(pkg, key)
        grants.append(
            (manifest.model, manifest.package_id, manifest.sha256, data_key, role_list, user_list)
        )
    now = ctx.now()
    data = issue_policy(
        key,
        identity=ident,
        grants=grants,
        serial=serial if serial is not None else now,
        issued_at=now,
        not_before=parse_time(not_before),
        not_after=parse_time(not_after),
        max_offline_s=parse_duration(max_offline) if max_offline else None,
        host_k=host_k,
        allow_finetune=allow_finetune,
    )
    out.write_bytes(data)
    issued = Policy.from_bytes(data)
    click.echo(
        f"Issued policy {issued.policy_id} (serial {issued.serial}) for "
        f"{ident.appliance_id}: {', '.join(g.name for g in issued.models)}, "
        f"{iso(issued.not_before)} – {iso(issued.not_after)}, roles {roles}"
        + ("; fine-tuning allowed." if allow_finetune else ".")
    )


@policy.command("install")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@pass_ctx
def policy_install(ctx: CliContext, file: Path) -> None:
    """Verify a policy completely and keep it (refused with the reason otherwise)."""
    app = open_home(ctx)
    pol = app.models.install_policy(
        file.read_bytes(), actor=ctx.actor(), now=ctx.now(), host=app.secure.host()
    )
    click.echo(
        f"Installed policy {pol.policy_id} (serial {pol.serial}) for "
        f"{', '.join(g.name for g in pol.models)}, valid {iso(pol.not_before)} – "
        f"{iso(pol.not_after)}."
    )
    try:
        check_validity(pol, ctx.now())
    except PolicyRefused as exc:
        click.echo(
            f"warning: the policy is not valid now [{exc.code}]: {exc.diagnostics()} "
            "It supersedes older policies for its models.",
            err=True,
        )


def _policy_dict(p: Policy, revoked: set[str]) -> dict[str, object]:
    return {
        "policy_id": p.policy_id,
        "serial": p.serial,
        "issuer": p.issuer_id,
        "appliance": p.appliance_id,
        "issued_at": iso(p.issued_at),
        "not_before": iso(p.not_before),
        "not_after": iso(p.not_after),
        "max_offline_s": p.max_offline_s,
        "host_k": p.host_k,
        "host_factors": len(p.host_factors),
        "revoked": p.policy_id in revoked,
        "models": [
            {
                "name": g.name,
                "package_id": g.package_id,
                "roles": list(g.roles),
                "users": list(g.users),
                "finetune": g.finetune,
            }
            for g in p.models
        ],
    }


@policy.command("list")
@_json
@pass_ctx
def policy_list(ctx: CliContext, as_json: bool) -> None:
    """Installed policies."""
    app = open_home(ctx)
    revoked = set(app.secure.state.revoked)
    rows = [_policy_dict(p, revoked) for p in app.models.policies()]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("No policies installed.")
    for r in rows:
        models = ",".join(m["name"] for m in r["models"])  # type: ignore[attr-defined]
        flag = " REVOKED" if r["revoked"] else ""
        click.echo(
            f"{r['policy_id']} serial {r['serial']} {models} "
            f"{r['not_before']} – {r['not_after']}{flag}"
        )


@policy.command("show")
@click.argument("policy_id")
@pass_ctx
def policy_show(ctx: CliContext, policy_id: str) -> None:
    """One policy in full (without key material)."""
    app = open_home(ctx)
    emit_json(_policy_dict(app.models.policy(policy_id), set(app.secure.state.revoked)))


@policy.command("revoke")
@click.argument("policy_id")
@pass_ctx
def policy_revoke(ctx: CliContext, policy_id: str) -> None:
    """Revoke a policy on this appliance: its models no longer unlock under it."""
    app = open_home(ctx)
    app.models.revoke(policy_id, actor=ctx.actor(), now=ctx.now())
    click.echo(f"Revoked policy {policy_id}.")
