"""D3: no core dumps and no same-user ptrace once keys or weights are in memory; offline env."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance.llm.hardening import OFFLINE_ENV, offline_env

REPO = Path(__file__).resolve().parents[2]

# Checks through independent channels (raw prctl, getrlimit, /proc) rather than the module itself.
_SCRIPT = textwrap.dedent(
    """
    import ctypes, json, resource
    libc = ctypes.CDLL(None, use_errno=True)
    PR_GET_DUMPABLE = 3
    def state():
        limits = [l for l in open("/proc/self/limits") if l.startswith("Max core file size")]
        return {"dumpable": libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0),
                "rlimit": list(resource.getrlimit(resource.RLIMIT_CORE)),
                "proc_limits": limits[0].split()[4:6]}
    before = state()
    from appliance.llm.hardening import disable_core_dumps, is_dumpable
    disable_core_dumps()
    print(json.dumps({"before": before, "after": state(), "is_dumpable": is_dumpable()}))
    """
)


def _run(script: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_disable_core_dumps_in_a_fresh_process() -> None:
    report = _run(_SCRIPT)
    assert report["before"]["dumpable"] == 1, "the test must start from a dumpable process"
    assert report["after"]["dumpable"] == 0
    assert report["after"]["rlimit"] == [0, 0]
    assert report["after"]["proc_limits"] == ["0", "0"]
    assert report["is_dumpable"] is False


_CRASH = textwrap.dedent(
    """
    import contextlib, os, resource, signal, sys
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))  # a core file would be written
    if sys.argv[1] == "harden":
        from appliance.llm.hardening import disable_core_dumps
        disable_core_dumps()
        with contextlib.suppress(ValueError, OSError):  # root may raise it again: prctl holds
            resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    os.kill(os.getpid(), signal.SIGABRT)
    """
)


def _crash(cwd: Path, mode: str) -> list[Path]:
    cwd.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", _CRASH, mode],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=cwd,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == -6, result.stderr[-2000:]
    return list(cwd.iterdir())


def test_a_hardened_process_that_crashes_leaves_no_core_file(tmp_path: Path) -> None:
    if Path("/proc/sys/kernel/core_pattern").read_text().strip() not in ("core", "core.%p"):
        pytest.skip("core files go to a handler, not the working directory, on this host")
    if not _crash(tmp_path / "control", "plain"):
        pytest.skip("this host writes no core file even for an unhardened process")
    assert _crash(tmp_path / "hardened", "harden") == []


def test_offline_env_sets_every_variable_in_a_given_mapping() -> None:
    env = {"HF_HUB_OFFLINE": "0", "OTHER": "x"}
    offline_env(env)
    assert env == {**OFFLINE_ENV, "OTHER": "x"}
    assert {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"} <= set(env)
    assert all(env[key] == "1" for key in OFFLINE_ENV)


def test_offline_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in OFFLINE_ENV:
        monkeypatch.setenv(key, "0")
    offline_env()
    assert all(os.environ[key] == "1" for key in OFFLINE_ENV)
