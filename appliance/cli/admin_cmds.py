"""`keys …`, `audit …`, `users …`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from secure.audit import verify_log
from secure.keyring import retire_old_keys
from secure.keys import LABEL_AUDIT_MAC

from ..errors import UsageError
from ..sessions import SESSIONS_FILE, SessionStore
from ._context import CliContext, emit_json, iso, pass_ctx, resolve_secret
from ._open import open_home

_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group()
def keys() -> None:
    """Key-encryption-key versions (rotation and crypto-shredding)."""


@keys.command("status")
@_json
@pass_ctx
def keys_status(ctx: CliContext, as_json: bool) -> None:
    """Current and minimum key versions and the key stores that use them."""
    ring = open_home(ctx).secure.keyring
    stores = [str(p) for p in ring.stores()]
    info = {
        "current": ring.current_version,
        "minimum": ring.min_version,
        "versions": ring.versions,
        "stores": stores,
    }
    if as_json:
        emit_json(info)
        return
    click.echo(
        f"kek versions {info['versions']}, current {ring.current_version}, "
        f"minimum {ring.min_version}, {len(stores)} key stores"
    )


@keys.command("rotate")
@pass_ctx
def keys_rotate(ctx: CliContext) -> None:
    """Add a new key-encryption key; everything keeps loading."""
    app = open_home(ctx)
    app.secure.record(
        "keys.rotate",
        actor=ctx.actor(),
        now=ctx.now(),
        details={"from": app.secure.keyring.current_version},
    )
    version = app.secure.keyring.rotate()
    click.echo(
        f"New key-encryption key kek:{version}; run `appliance keys rewrap` to move "
        "data keys onto it."
    )


@keys.command("rewrap")
@click.option(
    "--set-minimum",
    is_flag=True,
    help="Afterwards refuse keys wrapped by older versions (prepares `trim`).",
)
@pass_ctx
def keys_rewrap(ctx: CliContext, set_minimum: bool) -> None:
    """Rewrap every data key to the current key version (payloads are not re-encrypted)."""
    app = open_home(ctx)
    ring = app.secure.keyring
    app.secure.record(
        "keys.rewrap",
        actor=ctx.actor(),
        now=ctx.now(),
        details={"to": ring.current_version, "set_minimum": set_minimum},
    )
    done = ring.rewrap_stores()
    if set_minimum:
        ring.set_min_version(ring.current_version)
    click.echo(
        f"Rewrapped {len(done)} key stores to kek:{ring.current_version}"
        + (f"; minimum version now {ring.min_version}." if set_minimum else ".")
    )


@keys.command("trim")
@pass_ctx
def keys_trim(ctx: CliContext) -> None:
    """Rewrap, raise the minimum version and delete older keys: old backups become unreadable."""
    app = open_home(ctx)
    app.secure.record(
        "keys.trim",
        actor=ctx.actor(),
        now=ctx.now(),
        details={"minimum": app.secure.keyring.current_version},
    )
    gone = retire_old_keys(app.secure.keyring)
    click.echo(f"Deleted key versions {gone or 'none'}; kept {app.secure.keyring.versions}.")


@click.group()
def audit() -> None:
    """The tamper-evident audit log."""


@audit.command("tail")
@click.option("-n", "count", type=click.IntRange(1, 10000), default=20, show_default=True)
@_json
@pass_ctx
def audit_tail(ctx: CliContext, count: int, as_json: bool) -> None:
    """The newest audit entries (reading needs no key; `verify` checks them)."""
    entries = open_home(ctx).secure.audit.tail(count)
    if as_json:
        emit_json([e.body() | {"mac": e.mac} for e in entries])
        return
    for e in entries:
        extra = f" {json.dumps(dict(e.details), ensure_ascii=False)}" if e.details else ""
        reason = f" [{e.reason}]" if e.reason else ""
        click.echo(
            f"{e.seq:>6} {iso(e.time)} {e.actor} {e.action} {e.object} {e.outcome}{reason}{extra}"
        )


@audit.command("verify")
@pass_ctx
def audit_verify(ctx: CliContext) -> None:
    """Check every entry's MAC, the hash chain and the signed checkpoints."""
    app = open_home(ctx)
    ident = app.secure.identity
    result = verify_log(
        app.secure.layout.audit,
        mac_key=app.secure.derive(LABEL_AUDIT_MAC),
        verifier=lambda msg, sig: ident.public().verify(
            msg, sig, purpose="kapp/v1 audit-checkpoint"
        ),
    )
    if result.ok:
        click.echo(f"Audit log intact: {result.entries} entries verified.")
        return
    click.echo(
        f"Audit log BROKEN at line {result.first_bad_line} (seq {result.first_bad_seq}): "
        f"{result.problem}",
        err=True,
    )
    raise SystemExit(1)


@click.group()
def users() -> None:
    """User accounts: groups decide which documents, roles what a user may do."""


def _password(name: str, file: Path | None) -> str:
    return resolve_secret(
        what=f"password for {name}", file=file, env="APPLIANCE_USER_PASSWORD", confirm=True
    )


_password_file = click.option(
    "--password-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File holding the password (else APPLIANCE_USER_PASSWORD or a prompt).",
)


@users.command("add")
@click.argument("name")
@click.option("--groups", default="", help="Comma-separated groups, e.g. finance,public.")
@click.option("--role", type=click.Choice(["staff", "admin"]), default="staff", show_default=True)
@_password_file
@pass_ctx
def users_add(
    ctx: CliContext, name: str, groups: str, role: str, password_file: Path | None
) -> None:
    """Add an account."""
    app = open_home(ctx)
    group_list = [g.strip() for g in groups.split(",") if g.strip()]
    password = _password(name, password_file)
    app.secure.record(
        "user.add",
        actor=ctx.actor(),
        now=ctx.now(),
        object=name,
        details={"role": role, "groups": ",".join(group_list)},
    )
    user = app.users.add_user(name, role=role, groups=group_list, password=password, now=ctx.now())
    click.echo(f"Added {user.name} ({user.role}; groups {', '.join(user.groups) or '-'}).")


@users.command("list")
@_json
@pass_ctx
def users_list(ctx: CliContext, as_json: bool) -> None:
    """All accounts."""
    app = open_home(ctx)
    rows = [
        {"name": u.name, "role": u.role, "groups": list(u.groups), "disabled": u.disabled}
        for u in app.users.list_users()
    ]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        flag = " (disabled)" if r["disabled"] else ""
        click.echo(f"{r['name']}: {r['role']}, groups {', '.join(r['groups']) or '-'}{flag}")  # type: ignore[arg-type]


@users.command("passwd")
@click.argument("name")
@_password_file
@pass_ctx
def users_passwd(ctx: CliContext, name: str, password_file: Path | None) -> None:
    """Set a new password."""
    app = open_home(ctx)
    password = _password(name, password_file)
    app.secure.record("user.passwd", actor=ctx.actor(), now=ctx.now(), object=name)
    app.users.set_password(name, password, now=ctx.now())
    click.echo(f"Password of {name} changed.")


@users.command("disable")
@click.argument("name")
@pass_ctx
def users_disable(ctx: CliContext, name: str) -> None:
    """Disable an account (and revoke its API tokens)."""
    app = open_home(ctx)
    app.secure.record("user.disable", actor=ctx.actor(), now=ctx.now(), object=name)
    app.users.disable(name)
    app.users.revoke_tokens(name)
    click.echo(f"Disabled {name}.")


@users.command("unlock")
@click.argument("name")
@pass_ctx
def users_unlock(ctx: CliContext, name: str) -> None:
    """Clear an account's failed logins and its login delay for unrecognised clients."""
    app = open_home(ctx)
    app.secure.record("user.unlock", actor=ctx.actor(), now=ctx.now(), object=name)
    app.users.unlock(name)
    click.echo(f"Cleared the failed logins of {name}.")


@users.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def users_remove(ctx: CliContext, name: str, yes: bool) -> None:
    """Delete an account and crypto-shred its history.

    Its API tokens, sessions and trusted devices go too; the key of its conversation history is
    destroyed, so a new account of the same name starts empty."""
    if not yes and not click.confirm(f"Remove {name}?", default=False):
        raise UsageError("Not confirmed; nothing removed.")
    app = open_home(ctx)
    user = app.users.get(name)
    app.secure.record(
        "user.remove", actor=ctx.actor(), now=ctx.now(), object=user.name, details={"id": user.id}
    )
    app.users.disable(user.name)  # its sessions end now; nothing new is written meanwhile
    gone = app.conversations.forget(user.id)
    sessions = SessionStore(app.settings.home / SESSIONS_FILE, app.users, app.secure)
    sessions.end_user_sessions(user.name)
    sessions.trust.forget_user(user.id)
    app.users.remove(user.name)
    click.echo(f"Removed {user.name}; {gone} conversations and their key destroyed.")


@users.command("token")
@click.argument("name")
@click.option("--label", default="", help="What the token is for.")
@pass_ctx
def users_token(ctx: CliContext, name: str, label: str) -> None:
    """Issue an API token (shown once; only its hash is stored)."""
    app = open_home(ctx)
    app.secure.record(
        "user.token",
        actor=ctx.actor(),
        now=ctx.now(),
        object=name,
        details={"label": label} if label else None,
    )
    click.echo(app.users.issue_token(name, now=ctx.now(), label=label))
