"""Unlock the home for a command."""

from __future__ import annotations

from ..wiring import Appliance, open_appliance
from ._context import CliContext, require_home


def open_home(ctx: CliContext) -> Appliance:
    require_home(ctx)
    return open_appliance(ctx.settings(), ctx.passphrase(), now=ctx.now(), actor=ctx.actor())
