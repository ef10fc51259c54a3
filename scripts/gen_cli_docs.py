"""Regenerate docs/cli.md from the CLI's own help (a test fails when the two differ)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from appliance.cli import cli

HEADER = """# Command reference

Generated from `appliance --help` by `python -m scripts.gen_cli_docs`; a test keeps it in step.
Every command takes the global options `--home DIR` (or `APPLIANCE_HOME`) and
`--passphrase-file F` (else `APPLIANCE_PASSPHRASE`, the secrets directory, or a prompt).
Exit codes: 0 success, 1 refused or failed check, 2 usage error.
"""


def walk(command: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            found += walk(command.commands[name], [*path, name])
    return found


def render() -> str:
    """Each command's help as `appliance ... --help` prints it: every context has its parent's,
    and the root applies the group's context settings (its ``-h``), as click's own invocation
    does. (A context without them shows ``--help`` only, and click caches each command's help
    option on first use, so the page would depend on what ran before in the process.)"""
    parts = [HEADER]
    contexts: dict[tuple[str, ...], click.Context] = {}
    for path, command in walk(cli, ["appliance"]):
        parent = contexts.get(tuple(path[:-1]))
        settings = {**command.context_settings, "terminal_width": 100, "max_content_width": 100}
        ctx = command.context_class(command, info_name=path[-1], parent=parent, **settings)
        contexts[tuple(path)] = ctx
        parts.append(f"\n## `{' '.join(path)}`\n\n```\n{command.get_help(ctx)}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    target.write_text(render(), encoding="utf-8")
    print(f"wrote {target}", file=sys.stderr)
