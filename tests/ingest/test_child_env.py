"""The minimal environment of parse processes (``ingest.child_env``): an allow-list.

The end-to-end check (every process a real `appliance ingest` starts, read from /proc) is in
``tests/appliance/test_secret_env.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ingest.child_env import child_environment, exec_environment

PASSPHRASE = "correct horse battery staple"
CANARY = ("KAPP_TEST_CANARY", "canary-7f3c1e9a")
_PRINT_ENV = "import json, os; print(json.dumps(dict(os.environ)))"


def test_child_environment_is_an_allow_list() -> None:
    parent = {
        "APPLIANCE_PASSPHRASE": PASSPHRASE,
        "APPLIANCE__MILVUS__TOKEN": "u:p",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "HTTPS_PROXY": "http://user:pw@proxy:3128",
        "HOME": "/home/operator",
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": "/work/tree",
        "OMP_NUM_THREADS": "1",
        "TESSDATA_PREFIX": "/usr/share/tesseract-ocr/5/tessdata",
        CANARY[0]: CANARY[1],
    }
    env = child_environment(parent, home="/dev/shm/kapp-x", OMP_THREAD_LIMIT="1")
    assert env["HOME"] == "/dev/shm/kapp-x" and env["OMP_THREAD_LIMIT"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1" and env["DO_NOT_TRACK"] == "true"
    kept = {k for k in parent if k in env and k != "HOME"}
    assert kept == {"PATH", "LANG", "LC_ALL", "PYTHONPATH", "OMP_NUM_THREADS", "TESSDATA_PREFIX"}
    assert PASSPHRASE not in env.values() and CANARY[0] not in env


def test_exec_environment_is_what_a_program_started_without_env_gets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(*CANARY)
    monkeypatch.setenv("APPLIANCE_PASSPHRASE", PASSPHRASE)
    before = dict(os.environ)
    minimal = child_environment(home="/nonexistent-home")
    with exec_environment(minimal):
        assert dict(os.environ) == before  # Python readers see no change
        inside = _started_env()
    assert inside == minimal
    after = _started_env()
    assert after[CANARY[0]] == CANARY[1] and after["APPLIANCE_PASSPHRASE"] == PASSPHRASE
    assert dict(os.environ) == before


def test_replace_environ_leaves_nothing_behind_not_even_natively_set_variables() -> None:
    script = (
        "import os, subprocess, sys\n"
        "from ingest.child_env import replace_environ\n"
        "os.putenv('NATIVE_SECRET', 'x')  # behind os.environ, as native code would\n"
        "replace_environ({'PATH': os.environ['PATH'], 'HOME': '/h'})\n"
        "assert dict(os.environ) == {'PATH': os.environ['PATH'], 'HOME': '/h'}\n"
        f"subprocess.run([sys.executable, '-c', {_PRINT_ENV!r}], env=None, check=True)\n"
    )
    env = dict(os.environ, APPLIANCE_PASSPHRASE=PASSPHRASE)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    started = json.loads(done.stdout)
    started.pop("LC_CTYPE", None)  # Python may set the C locale variable at start
    assert started == {"PATH": os.environ["PATH"], "HOME": "/h"}


def _started_env() -> dict[str, str]:
    """The environment of a program started the way multiprocessing starts its fork server:
    ``exec`` with the C-level environment (``close_fds`` and ``env=None``)."""
    done = subprocess.run(
        [sys.executable, "-c", _PRINT_ENV], capture_output=True, text=True, check=True
    )
    env: dict[str, str] = json.loads(done.stdout)
    for name in ("LC_CTYPE",):  # Python itself may set the C locale variable at start
        if name not in os.environ:
            env.pop(name, None)
    return env
