"""Secrets in the environment are read once and never reach a parser of hostile files.

The root passphrase (and the other secrets a command may take from the environment) is removed
from the process environment when a command starts. Every process started for parsing (the
fork server, each parse child, LibreOffice, pdftoppm, Tesseract) gets a minimal environment.
The end-to-end test runs the real `appliance ingest` on real documents and reads the
environments of all its descendants from /proc while they run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import cli
from appliance.cli._context import SECRET_ENV, CliContext, take_secret_env
from ingest.child_env import ALLOWED
from tests.appliance.test_cli_flow import Shell
from tests.ingest.conftest import corpus_file, require_tool

PASSPHRASE = "correct horse battery staple"
CANARY = ("KAPP_TEST_CANARY", "canary-7f3c1e9a")


def test_a_command_takes_the_passphrase_out_of_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPLIANCE_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("APPLIANCE__SECURITY__KDF_COST_LOG2", "12")
    home = tmp_path / "home"
    run = CliRunner().invoke(cli, ["--home", str(home), "init"])
    assert run.exit_code == 0, run.output
    assert "APPLIANCE_PASSPHRASE" not in os.environ  # read once, then gone
    monkeypatch.setenv("APPLIANCE_PASSPHRASE", PASSPHRASE)
    run = CliRunner().invoke(cli, ["--home", str(home), "keys", "status", "--json"])
    assert run.exit_code == 0, run.output  # the home opened with the passphrase taken
    assert "APPLIANCE_PASSPHRASE" not in os.environ


def test_the_milvus_token_is_taken_too_and_still_configures_milvus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPLIANCE__MILVUS__TOKEN", "appliance:s3cret")
    monkeypatch.setenv("APPLIANCE__MILVUS__URI", "http://milvus:19530")
    ctx = CliContext(tmp_path, None, secret_env=take_secret_env())
    assert "APPLIANCE__MILVUS__TOKEN" not in os.environ
    milvus = ctx.settings().milvus
    assert (milvus.uri, milvus.token) == ("http://milvus:19530", "appliance:s3cret")


def test_take_secret_env_removes_every_secret_and_keeps_the_rest() -> None:
    environ = {name: f"value of {name}" for name in SECRET_ENV}
    environ |= {"APPLIANCE_HOME": "/srv/home", "APPLIANCE_ISSUER_PASSPHRASE": ""}
    taken = take_secret_env(environ)
    assert environ == {"APPLIANCE_HOME": "/srv/home"}
    assert set(taken) == set(SECRET_ENV) - {"APPLIANCE_ISSUER_PASSPHRASE"}  # empty: not a secret


# ----- end to end: every descendant of a real `appliance ingest` -----------------------------


@dataclass(frozen=True)
class Seen:
    parent: int
    command: str
    env: tuple[tuple[str, str], ...]

    @property
    def environ(self) -> dict[str, str]:
        return dict(self.env)


@dataclass
class Descendants:
    """Environments of a process's descendants, read from /proc while they run.

    Each process is read at every poll, because ``exec`` changes what it shows. A child that
    has forked but not yet called ``exec`` still shows the start environment of the process it
    was forked from; such copies of the command itself are left out (:meth:`observed`).
    """

    root: int
    seen: dict[int, set[Seen]] = field(default_factory=dict)
    root_commands: set[str] = field(default_factory=set)

    def poll(self) -> None:
        for pid, parent in _family(self.root).items():
            try:
                cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes()
                raw = (Path("/proc") / str(pid) / "environ").read_bytes()
            except OSError:
                continue  # gone already
            if not raw or not cmdline:
                continue  # exiting: a zombie has no memory left to show
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            if pid == self.root:
                self.root_commands.add(command)
                continue
            pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
            env = tuple(
                sorted(
                    (k.decode(errors="replace"), v.decode(errors="replace")) for k, _, v in pairs
                )
            )
            self.seen.setdefault(pid, set()).add(Seen(parent, command, env))

    def observed(self) -> dict[int, list[Seen]]:
        """Every state of every descendant, but copies of the command not yet exec'd."""
        found = {
            pid: [s for s in states if s.command not in self.root_commands]
            for pid, states in self.seen.items()
        }
        return {pid: states for pid, states in found.items() if states}

    def parse_tree(self) -> dict[int, list[Seen]]:
        """multiprocessing's fork server and resource tracker, and everything they started."""
        observed = self.observed()
        roots = ("multiprocessing.forkserver", "resource_tracker")
        tree = {
            p: ss for p, ss in observed.items() if any(r in s.command for s in ss for r in roots)
        }
        while more := {
            p: ss
            for p, ss in observed.items()
            if p not in tree and any(s.parent in tree for s in ss)
        }:
            tree |= more
        return tree


def _family(root: int) -> dict[int, int]:
    """``root`` and its descendants, each with its parent's pid."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    family = {root: parent.get(root, 0)}
    while more := {pid: ppid for pid, ppid in parent.items() if ppid in family} - family.keys():
        family |= {pid: parent[pid] for pid in more}
    return family


def _watch(proc: subprocess.Popen[str], into: Descendants) -> threading.Thread:
    def loop() -> None:
        while proc.poll() is None:
            into.poll()
            time.sleep(0.02)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _ingest(shell: Shell, env: dict[str, str]) -> tuple[str, Descendants]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "ingest", "--once"],
        cwd=shell.tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    children = Descendants(proc.pid)
    watcher = _watch(proc, children)
    out, err = proc.communicate(timeout=300)
    watcher.join(5)
    assert proc.returncode == 0, out + err
    return out, children


def test_parse_processes_of_a_real_ingest_never_see_the_passphrase(tmp_path: Path) -> None:
    require_tool("soffice", "libreoffice-writer-nogui")
    require_tool("tesseract", "tesseract-ocr")
    shell = Shell(tmp_path)
    shell.run("init")
    drop = tmp_path / "home" / "drop" / "public"
    drop.mkdir(parents=True)
    shutil.copy(corpus_file("unstructured/fake.doc"), drop / "legacy.doc")  # LibreOffice
    shutil.copy(corpus_file("unstructured/pdf/loremipsum-flat.pdf"), drop / "scan.pdf")  # OCR
    out, children = _ingest(shell, dict(shell.env, **{CANARY[0]: CANARY[1]}))
    assert "2 indexed" in out, out
    for pid, states in children.observed().items():  # Milvus Lite included
        for seen in states:
            assert PASSPHRASE not in str(seen.env), f"{pid} {seen.command[:80]}"
    tree = children.parse_tree()
    commands = [s.command for states in tree.values() for s in states]
    assert any("multiprocessing.forkserver" in c for c in commands), commands
    assert any("soffice" in c for c in commands), commands
    assert any("tesseract" in c for c in commands), commands
    assert len(tree) >= 5, commands  # server, tracker, children, converters, OCR
    for pid, states in tree.items():
        for seen in states:
            where, env = f"{pid} {seen.command[:80]}", seen.environ
            assert CANARY[0] not in env and CANARY[1] not in env.values(), where
            assert not [k for k in env if k.startswith("APPLIANCE")], where
            assert set(env) <= ALLOWED | _extra_names(env), where
            assert env["HOME"] != os.environ.get("HOME"), where


def _extra_names(env: dict[str, str]) -> set[str]:
    """Names a minimal environment may hold besides the allow-list: HOME, locale, the offline
    switches, and what a shell wrapper (LibreOffice's `soffice` script) exports itself."""
    from ingest.nlp_offline import OFFLINE_ENVIRONMENT

    # LibreOffice sets LIBO_VERSION for what it runs itself (seen in `sh -c paperconf` when a
    # fresh profile is made, e.g. on a clean CI clone).
    own = {k for k in env if k.startswith(("LC_", "SAL_", "URE_", "UNO_", "LIBO_"))}
    return own | set(OFFLINE_ENVIRONMENT) | {"HOME", "PWD", "SHLVL", "_", "OLDPWD"}
