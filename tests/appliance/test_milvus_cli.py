"""The operator's view of a Milvus server that fails (issue 16), through the real CLI.

- `appliance ingest --once` of 40 files while the server is killed for 4 s and started again
  on the same data file: every document is indexed once and `appliance docs verify` finds
  nothing to repair (the issue's "done when");
- the server's data file replaced by an older copy (a restored backup): `appliance status`
  warns that index and registry disagree and says what to do, `docs verify` lists what
  differs, `docs verify --repair` re-indexes from the encrypted vault, after which it agrees.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from appliance.cli import cli
from appliance.config import load_settings
from appliance.wiring import init_appliance
from ingest.registry import Registry
from tests.support.milvus_server import MilvusBackend, MilvusServer

pytestmark = pytest.mark.slow
PASSPHRASE = "milvus cli passphrase"
FILES = {
    f"hr/memo-{i:02d}.txt": f"Memo {i}: the meeting room {i} is booked on day {i % 7} for "
    f"the quarterly review of project number {1000 + i}."
    for i in range(40)
}


@dataclass
class Home:
    path: Path
    server: MilvusServer
    env: dict[str, str]

    def cli(self, *args: str) -> Result:
        return CliRunner().invoke(cli, list(args), env=self.env)

    def registry(self) -> Registry:
        return Registry(self.path / "registry.db")

    def drop(self, files: dict[str, str]) -> None:
        for rel, text in files.items():
            target = self.path / "drop" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    root = tmp_path_factory.mktemp("milvus-cli")
    with MilvusBackend("server") as backend:
        server = backend.server(root / "milvus-data" / "chunks.db")
        env = {
            "APPLIANCE_HOME": str(root / "home"),
            "APPLIANCE_PASSPHRASE": PASSPHRASE,
            "APPLIANCE__SECURITY__KDF_COST_LOG2": "10",
            "APPLIANCE__USERS__PASSWORD_COST_LOG2": "10",
            "APPLIANCE__MILVUS__URI": server.uri,
            "APPLIANCE__MILVUS__RETRY_INITIAL_S": "0.2",
            "APPLIANCE__MILVUS__RETRY_MAX_S": "1.0",
            "APPLIANCE__INGEST__OCR": "false",
        }
        settings = load_settings(
            root / "home",
            security={"kdf_cost_log2": 10},
            users={"password_cost_log2": 10},
            milvus={"uri": server.uri},
        )
        init_appliance(settings, PASSPHRASE, now=int(time.time()), actor="test")
        yield Home(root / "home", server, env)


def test_killed_for_4_s_during_ingest_every_document_is_indexed_once(home: Home) -> None:
    home.drop(FILES)
    env = {**os.environ, **home.env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "ingest", "--once"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while len(home.registry().documents(status="indexed")) < 5:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the ingest did not start indexing"
            time.sleep(0.05)
        home.server.kill()
        time.sleep(4.0)
        assert proc.poll() is None  # still waiting for Milvus, not failed
        home.server.start()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    assert "40 indexed, 0 unchanged, 0 quarantined" in out
    assert "Milvus was unavailable during this run" in err and "nothing was quarantined" in err
    docs = json.loads(home.cli("docs", "list", "--json").output)
    assert sorted(d["path"] for d in docs) == sorted(FILES)
    assert {d["status"] for d in docs} == {"indexed"}
    verified = home.cli("docs", "verify")
    assert verified.exit_code == 0, verified.output
    assert "registry: 40 indexed documents, 40 chunks; index: 40 rows" in verified.output
    assert "nothing to repair" in verified.output
    assert not (home.path / "drop" / "_failed").exists()


def _data_files(server: MilvusServer) -> list[Path]:
    return [p for p in server.data.parent.iterdir() if p.name.startswith(server.data.name)]


def test_a_restored_older_milvus_backup_is_detected_and_repaired(
    home: Home, tmp_path: Path
) -> None:
    home.drop(
        {
            "finance/keep.txt": "The archive room key is kept by the facilities manager.",
            "finance/change.txt": "Invoices above 5,000 euros need two signatures.",
            "finance/delete.txt": "The old expense form is still accepted until June.",
        }
    )
    assert home.cli("ingest", "--once").exit_code == 0
    home.server.stop()  # back up Milvus' data with the server stopped
    backup = tmp_path / "backup"
    backup.mkdir()
    for path in _data_files(home.server):
        shutil.copy2(path, backup / path.name)
    home.server.start()

    # Life goes on after the backup: new documents, a changed one, a deleted one.
    home.drop(
        {
            "finance/after-1.txt": "Parking permits are renewed every January at the desk.",
            "finance/after-2.txt": "The gym in building C opens at six in the morning.",
            "finance/change.txt": "Invoices above 8,000 euros now need two signatures.",
        }
    )
    assert home.cli("ingest", "--once").exit_code == 0
    registry = home.registry()
    gone = registry.find("inbox", "finance/delete.txt")
    assert gone is not None
    assert home.cli("docs", "delete", gone.doc_id).exit_code == 0
    assert home.cli("docs", "verify").exit_code == 0

    home.server.kill()  # the disk is replaced by last night's backup
    for path in _data_files(home.server):
        if path.suffix != ".log":
            path.unlink()
    for path in backup.iterdir():
        shutil.copy2(path, home.server.data.parent / path.name)
    home.server.start()

    status = home.cli("status", "--json")
    problems = {p["code"]: p["message"] for p in json.loads(status.output)["overall"]["problems"]}
    assert "older backup" in problems["INDEX_DISAGREES"]
    assert "appliance docs verify --repair" in problems["INDEX_DISAGREES"]

    found = home.cli("docs", "verify", "--json")
    assert found.exit_code == 1
    report = json.loads(found.output)
    kinds = {(f["kind"], f["doc_id"]) for f in report["findings"]}
    changed = registry.find("inbox", "finance/change.txt")
    new = [registry.find("inbox", f"finance/after-{i}.txt") for i in (1, 2)]
    assert changed is not None and all(new)
    assert ("missing", changed.doc_id) in kinds and ("stale", changed.doc_id) in kinds
    assert {("missing", d.doc_id) for d in new if d} <= kinds
    assert ("orphan", gone.doc_id) in kinds
    assert {k for k, _ in kinds} == {"missing", "stale", "orphan"}

    repaired = home.cli("docs", "verify", "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert "repaired: missing" in repaired.output and "nothing to repair" in repaired.output
    assert home.cli("docs", "verify").exit_code == 0
    status = home.cli("status", "--json")
    codes = {p["code"] for p in json.loads(status.output)["overall"]["problems"]}
    assert "INDEX_DISAGREES" not in codes
    assert not (home.path / "drop" / "_failed").exists()
