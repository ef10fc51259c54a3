"""`appliance`: the admin command line (one command group; `python -m appliance` works too).

Exit codes everywhere: 0 success, 1 refused or failed check (one-line reason and what to do),
2 usage error. Errors of all three packages are caught here, once.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ingest.errors import IngestError
from secure.errors import SecureError

from .. import __version__
from ..errors import ApplianceError
from ._context import CliContext, take_secret_env
from .admin_cmds import audit, keys, users
from .docs_cmds import docs, ingest, search
from .eval_cmds import eval_group
from .finetune_cmds import finetune
from .init_cmds import identity, init, issuer
from .model_cmds import model, policy
from .ops_cmds import report, status
from .serve_cmds import ask, serve
from .verify_cmds import verify


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--home",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="APPLIANCE_HOME",
    help="The appliance's data directory (default: ~/.local/share/knowledge-appliance; "
    "env APPLIANCE_HOME).",
)
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File holding the root-key passphrase (else APPLIANCE_PASSPHRASE, the secrets "
    "directory, or a prompt).",
)
@click.version_option(__version__, prog_name="appliance")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, passphrase_file: Path | None) -> None:
    """Enterprise knowledge appliance: keys, policies, models, users, documents, audit."""
    ctx.obj = CliContext(home, passphrase_file, secret_env=take_secret_env())


for command in (
    init,
    identity,
    issuer,
    model,
    policy,
    keys,
    audit,
    users,
    ingest,
    docs,
    search,
    eval_group,
    finetune,
    status,
    report,
    serve,
    ask,
):
    cli.add_command(command)
docs.add_command(verify)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="appliance", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (ApplianceError, SecureError, IngestError) as exc:
        click.echo(f"error: {exc.diagnostics()}", err=True)
        sys.exit(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)
