"""Unsigned local settings cannot weaken trusted time: a clock skew above the cap stops start.

`security.clock_skew_s` comes from `appliance.toml` or `APPLIANCE__SECURITY__CLOCK_SKEW_S`;
a huge value would switch off the clock-rollback and before-issued checks. The real CLI in
subprocesses refuses it before it unlocks anything.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.errors import ConfigError
from secure.clock import MAX_SKEW
from tests.appliance.test_cli_flow import Shell
from tests.support.server import free_port

SKEW_ENV = "APPLIANCE__SECURITY__CLOCK_SKEW_S"


@pytest.fixture(scope="module")
def shell(tmp_path_factory: pytest.TempPathFactory) -> Shell:
    sh = Shell(tmp_path_factory.mktemp("local-settings"))
    (sh.tmp / "admin.pw").write_text("admin password 123\n")
    sh.run("init", "--admin-user", "alice", "--admin-password-file", "admin.pw")
    return sh


def test_settings_accept_the_cap_and_refuse_beyond_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SKEW_ENV, str(MAX_SKEW))
    assert load_settings(tmp_path).security.clock_skew_s == MAX_SKEW == 3600
    monkeypatch.setenv(SKEW_ENV, str(MAX_SKEW + 1))
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path)
    assert "security.clock_skew_s" in info.value.message and "3600" in info.value.message
    monkeypatch.delenv(SKEW_ENV)
    (tmp_path / "appliance.toml").write_text("[security]\nclock_skew_s = 864000\n")
    with pytest.raises(ConfigError, match="clock_skew_s"):
        load_settings(tmp_path)


@pytest.mark.parametrize(
    "args",
    [("status",), ("serve", "--no-ui", "--host", "127.0.0.1", "--port", "0")],
    ids=["status", "serve"],
)
def test_start_refuses_a_skew_above_the_cap_from_the_environment(
    shell: Shell, args: tuple[str, ...]
) -> None:
    if args[0] == "serve":
        args = (*args[:-1], str(free_port()))
    env = dict(shell.env, **{SKEW_ENV: str(10 * 86400)})
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        cwd=shell.tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,  # a `serve` that started would run on and fail the test here
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Invalid settings (security.clock_skew_s: " in proc.stderr
    assert "less than or equal to 3600" in proc.stderr and "APPLIANCE__" in proc.stderr
