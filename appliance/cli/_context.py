"""What every command shares: the home, settings, passphrase, clock, actor and output."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ..config import Settings, load_settings
from ..errors import ConfigError, UsageError

DEFAULT_HOME = Path("~/.local/share/knowledge-appliance")
# Secrets that may come from the environment. They are taken out of it when a command starts,
# before any thread or child process exists: parsers of hostile files, LibreOffice and
# Tesseract must never inherit them. (The kernel's copy in /proc/<pid>/environ of this process
# keeps the initial environment; only this process's user and root can read it.)
SECRET_ENV = (
    "APPLIANCE_PASSPHRASE",
    "APPLIANCE_ISSUER_PASSPHRASE",
    "APPLIANCE_ADMIN_PASSWORD",
    "APPLIANCE_USER_PASSWORD",
    "APPLIANCE__MILVUS__TOKEN",
)


def take_secret_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Remove every :data:`SECRET_ENV` variable from ``environ`` (default: this process's
    environment, so children started later lack them too) and return the non-empty ones."""
    target = os.environ if environ is None else environ
    taken = {name: target.pop(name, "") for name in SECRET_ENV}
    return {name: value for name, value in taken.items() if value}


@dataclass
class CliContext:
    home_option: Path | None
    passphrase_file: Path | None
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)
    _settings: Settings | None = field(default=None, init=False)

    @property
    def home(self) -> Path:
        return (self.home_option or DEFAULT_HOME).expanduser().resolve()

    def settings(self) -> Settings:
        if self._settings is None:
            token = self.secret_env.get("APPLIANCE__MILVUS__TOKEN")
            secrets: dict[str, object] = {"milvus": {"token": token}} if token else {}
            self._settings = load_settings(self.home, **secrets)
        return self._settings

    def passphrase(self, *, confirm: bool = False, option: Path | None = None) -> str:
        """The root-key passphrase: option file → APPLIANCE_PASSPHRASE → secrets dir → prompt."""
        return resolve_secret(
            what="appliance passphrase",
            file=option or self.passphrase_file,
            env="APPLIANCE_PASSPHRASE",
            secrets_file=self._secrets_file("passphrase"),
            confirm=confirm,
        )

    def _secrets_file(self, name: str) -> Path | None:
        directory = self.settings().secrets_dir if (self.home / "appliance.toml").exists() else None
        return directory / name if directory else None

    @staticmethod
    def now() -> int:
        return int(time.time())

    @staticmethod
    def actor() -> str:
        return os.environ.get("APPLIANCE_ACTOR") or f"cli:{getpass.getuser()}"


def resolve_secret(
    *,
    what: str,
    file: Path | None,
    env: str,
    secrets_file: Path | None = None,
    confirm: bool = False,
) -> str:
    if file is not None:
        return read_secret_file(file, what=what)
    if _secret_env().get(env):
        return _secret_env()[env]
    if secrets_file is not None and secrets_file.is_file():
        return read_secret_file(secrets_file, what=what)
    if not sys.stdin.isatty():
        raise UsageError(
            f"No {what} given.",
            hint=f"Pass --passphrase-file FILE or set {env} (stdin is not a terminal).",
        )
    return str(click.prompt(f"{what.capitalize()}", hide_input=True, confirmation_prompt=confirm))


def _secret_env() -> Mapping[str, str]:
    """The secrets the running command took from the environment at start (:func:`cli`);
    outside a command (library use), the environment itself."""
    click_ctx = click.get_current_context(silent=True)
    cli_ctx = click_ctx.find_object(CliContext) if click_ctx is not None else None
    return cli_ctx.secret_env if cli_ctx is not None else os.environ


def read_secret_file(path: Path, *, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"Cannot read the {what} file {path}: {exc.strerror}.") from exc
    secret = text.rstrip("\r\n")
    if not secret:
        raise UsageError(f"The {what} file {path} is empty.")
    return secret


def parse_time(text: str) -> int:
    """ISO 8601 (`2026-11-21`, `2026-11-21T08:00`, `…Z`, `…+01:00`) or `now`, as Unix seconds."""
    if text == "now":
        return int(time.time())
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(
            f"Cannot read the time {text!r}.", hint="Use ISO 8601, e.g. 2026-12-31T23:59:59Z."
        ) from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp())


_DURATION = re.compile(r"^(\d+)([smhdw]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """`90s`, `15m`, `12h`, `30d`, `2w` or plain seconds."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) <= 0:
        raise UsageError(f"Cannot read the duration {text!r}.", hint="Use e.g. 30d, 12h or 900.")
    return int(match.group(1)) * _UNIT[match.group(2)]


def iso(ts: int | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True))


def require_home(ctx: CliContext) -> None:
    if not (ctx.home / "keys" / "root.sealed").exists():
        raise ConfigError(
            f"{ctx.home} is not an appliance home.",
            hint="Run `appliance init` first, or pass --home / set APPLIANCE_HOME.",
        )


pass_ctx = click.make_pass_decorator(CliContext)
