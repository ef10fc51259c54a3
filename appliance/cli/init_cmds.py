"""`init`, `identity export`, `issuer init`."""

from __future__ import annotations

from pathlib import Path

import click

from secure.issuer import create_issuer
from secure.keys import KdfParams

from ..config import load_settings
from ..errors import AlreadyExists, UsageError
from ..wiring import home_exists, init_appliance
from ._context import CliContext, pass_ctx, read_secret_file, require_home, resolve_secret
from ._open import open_home

_passphrase_file = click.option(
    "--passphrase-file",
    "passphrase_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File holding the passphrase.",
)


@click.command()
@_passphrase_file
@click.option("--admin-user", help="Name of the first admin account.")
@click.option(
    "--admin-password-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File holding the first admin's password (else APPLIANCE_ADMIN_PASSWORD or a prompt).",
)
@pass_ctx
def init(
    ctx: CliContext,
    passphrase_file: Path | None,
    admin_user: str | None,
    admin_password_file: Path | None,
) -> None:
    """Create a new appliance home (refuses to overwrite an existing one)."""
    if home_exists(ctx.home):
        raise AlreadyExists(
            f"{ctx.home} already holds an appliance home.",
            hint="Use another --home; an existing home is never overwritten.",
        )
    passphrase = ctx.passphrase(confirm=True, option=passphrase_file)
    if admin_user is None and admin_password_file is not None:
        raise UsageError("--admin-password-file needs --admin-user.")
    password = None
    if admin_user is not None:
        password = resolve_secret(
            what=f"password for {admin_user}",
            file=admin_password_file,
            env="APPLIANCE_ADMIN_PASSWORD",
            confirm=True,
        )
    settings = load_settings(ctx.home)
    app = init_appliance(settings, passphrase, now=ctx.now(), actor=ctx.actor())
    if admin_user is not None and password is not None:
        app.users.add_user(
            admin_user, role="admin", groups=["public"], password=password, now=ctx.now()
        )
        app.secure.record(
            "user.add",
            actor=ctx.actor(),
            now=ctx.now(),
            object=admin_user,
            details={"role": "admin"},
        )
    click.echo(f"Initialised appliance {app.secure.identity.appliance_id} in {ctx.home}")
    if admin_user is None:
        click.echo("No admin account yet: add one with `appliance users add NAME --role admin`.")


@click.group()
def identity() -> None:
    """The appliance's public identity."""


@identity.command("export")
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Where to write the identity document.",
)
@pass_ctx
def identity_export(ctx: CliContext, out: Path) -> None:
    """Write the public identity document (public keys + hashed host factors) for an issuer."""
    require_home(ctx)
    app = open_home(ctx)
    host = app.secure.host()
    out.write_bytes(app.secure.identity_document(host, now=ctx.now()))
    app.secure.record("identity.export", actor=ctx.actor(), now=ctx.now(), object=str(out))
    click.echo(
        f"Wrote the identity of {app.secure.identity.appliance_id} "
        f"({len(host.factors)} host factors, {host.strength} binding) to {out}"
    )


@click.group()
def issuer() -> None:
    """Policy issuer keys (kept by the model vendor or the security office)."""


@issuer.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--name", default="issuer", show_default=True, help="A label for this issuer.")
@_passphrase_file
@click.option(
    "--kdf-cost-log2",
    type=click.IntRange(10, 22),
    default=17,
    show_default=True,
    help="scrypt cost for sealing the issuer key.",
)
def issuer_init(
    directory: Path, name: str, passphrase_file: Path | None, kdf_cost_log2: int
) -> None:
    """Create DIR/issuer.key (sealed by its own passphrase) and DIR/issuer.pub."""
    passphrase = resolve_secret(
        what="issuer passphrase",
        file=passphrase_file,
        env="APPLIANCE_ISSUER_PASSPHRASE",
        confirm=True,
    )
    public = create_issuer(directory, name, passphrase, params=KdfParams(n=2**kdf_cost_log2))
    click.echo(f"Created issuer {public.issuer_id} ({name}) in {directory}")
    click.echo(
        f"Hand {directory / 'issuer.pub'} to whoever packages models; keep issuer.key offline."
    )


def issuer_passphrase(passphrase_file: Path | None) -> str:
    if passphrase_file is not None:
        return read_secret_file(passphrase_file, what="issuer passphrase")
    return resolve_secret(what="issuer passphrase", file=None, env="APPLIANCE_ISSUER_PASSPHRASE")
