"""The foundation's "Done when" as a new user types it: the real CLI in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.secure.helpers import write_model_dir


class Shell:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = {
            **os.environ,
            "APPLIANCE_HOME": str(tmp / "home"),
            "APPLIANCE_PASSPHRASE": "correct horse battery staple",
            "APPLIANCE_ISSUER_PASSPHRASE": "issuer passphrase here",
            "APPLIANCE__SECURITY__KDF_COST_LOG2": "12",
            "APPLIANCE__USERS__PASSWORD_COST_LOG2": "10",
        }

    def run(
        self, *args: str, home: Path | None = None, ok: bool = True, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, APPLIANCE_HOME=str(home)) if home else self.env
        proc = subprocess.run(
            [sys.executable, "-m", "appliance", *args],
            cwd=self.tmp,
            env=env,
            capture_output=True,
            text=True,
            input=stdin,
            timeout=120,
        )
        if ok:
            assert proc.returncode == 0, proc.stderr + proc.stdout
        return proc


@pytest.fixture(scope="module")
def shell(tmp_path_factory: pytest.TempPathFactory) -> Shell:
    tmp = tmp_path_factory.mktemp("flow")
    sh = Shell(tmp)
    (tmp / "admin.pw").write_text("admin password 123\n")
    write_model_dir(tmp / "model")
    sh.run("init", "--admin-user", "alice", "--admin-password-file", "admin.pw")
    sh.run("issuer", "init", "iss", "--name", "vendor", "--kdf-cost-log2", "12")
    sh.run(
        "model",
        "package",
        "model",
        "--name",
        "qwen-ft",
        "--issuer-pub",
        "iss/issuer.pub",
        "--out",
        "pkg",
    )
    sh.run("identity", "export", "--out", "ident.json")
    sh.run(
        "policy",
        "issue",
        "--issuer",
        "iss",
        "--identity",
        "ident.json",
        "--package",
        "pkg",
        "--roles",
        "staff,admin",
        "--not-before",
        "now",
        "--not-after",
        "2099-01-01",
        "--max-offline",
        "30d",
        "--serial",
        "10",
        "--out",
        "pol.json",
    )
    sh.run("model", "install", "pkg")
    sh.run("policy", "install", "pol.json")
    return sh


def test_verify_succeeds_after_the_flow(shell: Shell) -> None:
    out = shell.run("model", "verify", "qwen-ft").stdout
    assert "OK, integrity verified" in out
    status = json.loads(shell.run("model", "list", "--json").stdout)[0]
    assert status["unlockable_now"] and status["host_binding"] == "soft"
    assert status["roles"] == ["staff", "admin"]


def test_init_refuses_existing_home(shell: Shell) -> None:
    proc = shell.run("init", ok=False)
    assert proc.returncode == 1 and "already holds an appliance home" in proc.stderr


def test_usage_error_exits_2(shell: Shell) -> None:
    assert shell.run("model", "verify", ok=False).returncode == 2
    assert shell.run("policy", "issue", "--issuer", "iss", ok=False).returncode == 2


def test_flipped_byte_fails_verify_with_reason_and_audit(shell: Shell) -> None:
    container = sorted((shell.tmp / "home" / "models" / "qwen-ft" / "files").glob("*.kpc"))[-1]
    original = container.read_bytes()
    try:
        blob = bytearray(original)
        blob[len(blob) // 2] ^= 1
        container.write_bytes(bytes(blob))
        proc = shell.run("model", "verify", "qwen-ft", ok=False)
        assert proc.returncode == 1 and "[TAMPERED]" in proc.stderr
    finally:
        container.write_bytes(original)
    tail = shell.run("audit", "tail", "-n", "3", "--json").stdout
    assert any(e["reason"] == "TAMPERED" for e in json.loads(tail))


def test_policy_for_another_appliance_refused(shell: Shell) -> None:
    other = shell.tmp / "other-home"
    shell.run("init", home=other)
    shell.run("identity", "export", "--out", "other.json", home=other)
    shell.run(
        "policy",
        "issue",
        "--issuer",
        "iss",
        "--identity",
        "other.json",
        "--package",
        "pkg",
        "--roles",
        "staff",
        "--not-before",
        "now",
        "--not-after",
        "2099-01-01",
        "--serial",
        "11",
        "--out",
        "other-pol.json",
    )
    proc = shell.run("policy", "install", "other-pol.json", ok=False)
    assert proc.returncode == 1 and "issued for appliance" in proc.stderr
    entries = json.loads(shell.run("audit", "tail", "-n", "1", "--json").stdout)
    assert (entries[-1]["action"], entries[-1]["reason"]) == ("policy.install", "WRONG_APPLIANCE")


def test_expired_policy_fails_verify_then_audit_detects_edit(shell: Shell) -> None:
    shell.run(
        "policy",
        "issue",
        "--issuer",
        "iss",
        "--identity",
        "ident.json",
        "--package",
        "pkg",
        "--roles",
        "staff",
        "--not-before",
        "2025-01-01",
        "--not-after",
        "2025-06-01T00:00:00Z",
        "--serial",
        "20",
        "--out",
        "expired.json",
    )
    proc = shell.run("policy", "install", "expired.json")
    assert "not valid now [EXPIRED]" in proc.stderr
    proc = shell.run("model", "verify", "qwen-ft", ok=False)
    assert proc.returncode == 1 and "[EXPIRED]" in proc.stderr and "expired at" in proc.stderr
    assert "Audit log intact" in shell.run("audit", "verify").stdout
    log = shell.tmp / "home" / "audit" / "audit.log"
    lines = log.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b'"outcome":"ok"', b'"outcome":"refused"')
    log.write_bytes(b"".join(lines))
    proc = shell.run("audit", "verify", ok=False)
    assert proc.returncode == 1 and "line 4" in proc.stderr


def test_users_commands(shell: Shell) -> None:
    (shell.tmp / "bob.pw").write_text("bob password 4567\n")
    shell.run(
        "users",
        "add",
        "bob",
        "--groups",
        "finance,public",
        "--role",
        "staff",
        "--password-file",
        "bob.pw",
    )
    users = json.loads(shell.run("users", "list", "--json").stdout)
    assert {u["name"]: u["groups"] for u in users} == {
        "alice": ["public"],
        "bob": ["finance", "public"],
    }
    token = shell.run("users", "token", "bob").stdout.strip()
    assert token.startswith("kapp_")
    db = (shell.tmp / "home" / "appliance.db").read_bytes()
    assert token.encode() not in db and b"bob password" not in db
    shell.run("users", "disable", "bob")
    assert json.loads(shell.run("users", "list", "--json").stdout)[1]["disabled"] is True


def test_users_remove_shreds_history_and_a_new_namesake_starts_empty(shell: Shell) -> None:
    import time

    from appliance.config import load_settings
    from appliance.conversations import Turn
    from appliance.wiring import open_appliance

    home = shell.tmp / "home"
    (shell.tmp / "carl.pw").write_text("carl password 4567\n")
    shell.run("users", "add", "carl", "--groups", "hr", "--password-file", "carl.pw")

    def server() -> Any:  # the server's side of the home, in this process
        settings = load_settings(home)
        now = int(time.time())
        return open_appliance(settings, shell.env["APPLIANCE_PASSPHRASE"], now=now, actor="t")

    app = server()
    carl = app.users.get("carl")
    conv = app.conversations.start(carl.id, "What is the CEO's salary?", now=1)
    app.conversations.add_turn(carl.id, conv, Turn("q", "a secret answer", "q-1"), now=2)
    app.conversations.rate(carl.id, "q-1", 1, now=3)
    key = home / "keys" / "stores" / "conversations" / f"{carl.id}.json"
    assert key.is_file()

    proc = shell.run("users", "remove", "carl", "--yes")
    assert "1 conversations and their key destroyed" in proc.stdout
    assert not key.exists()
    shell.run("users", "add", "carl", "--groups", "hr", "--password-file", "carl.pw")
    app = server()
    new = app.users.get("carl")
    assert new.id != carl.id
    assert app.conversations.history(new.id) == [] and app.conversations.feedback_rows() == []
    removal = [e for e in app.secure.audit.tail(50) if e.action == "user.remove"][-1]
    assert removal.details["id"] == carl.id
    assert "Cleared" in shell.run("users", "unlock", "carl").stdout
    assert shell.run("users", "remove", "nobody", "--yes", ok=False).returncode != 0


def test_keys_rotate_and_status(shell: Shell) -> None:
    before = json.loads(shell.run("keys", "status", "--json").stdout)
    shell.run("keys", "rotate")
    after = json.loads(shell.run("keys", "status", "--json").stdout)
    assert after["current"] == before["current"] + 1
    shell.run("keys", "trim")
    assert json.loads(shell.run("keys", "status", "--json").stdout)["versions"] == [
        after["current"]
    ]


def test_no_secret_in_argv_or_output(shell: Shell) -> None:
    proc = shell.run("model", "list")
    assert "correct horse" not in proc.stdout + proc.stderr
