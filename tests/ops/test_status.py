"""`collect_status` and `appliance status` on a real home with a model locked for a known reason."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from click.testing import CliRunner

from appliance.cli import cli
from appliance.ops import runtime_state
from appliance.ops.render import render_status
from appliance.ops.services import (
    dense_memory_status,
    query_path_status,
    redact_uri,
    tls_status,
)
from appliance.ops.status import collect_status, verdict
from appliance.ops.tasks import TaskStore
from tests.support.milvus_server import lite_only
from tests.support.tls import self_signed

from .conftest import DAY, PASSPHRASE, OpsHome


def _status(h: OpsHome, tasks: TaskStore) -> dict:
    return collect_status(h.app, h.knowledge, now=h.now, task_store=tasks, cpu_interval_s=0.0)


@lite_only
def test_locked_model_reason_and_days_left(ops_home: OpsHome, tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path / "tasks.db")
    s = _status(ops_home, tasks)
    models = {m["name"]: m for m in s["service"]["models"]}
    old, new = models["old-model"], models["new-model"]
    assert old["state"] == "locked" and old["reason_code"] == "EXPIRED"
    assert "expired" in old["reason"].lower() and old["days_left"] == -2.0
    assert old["policy"] == ops_home.expired_policy
    assert new["state"] == "unlockable" and new["days_left"] == 30.0
    assert new["policy"] == ops_home.valid_policy and new["reason_code"] == "OK"
    assert s["overall"]["state"] == "degraded"
    codes = {(p["code"], p["message"].split(":")[0]) for p in s["overall"]["problems"]}
    assert ("MODEL_LOCKED", "old-model") in codes
    text = render_status(s)
    assert "old-model: LOCKED [EXPIRED]" in text and "ended 2.0 days ago" in text
    assert "new-model: unlockable (policy " in text and "30.0 days left" in text
    json.dumps(s)  # the JSON view needs no custom encoder


def test_service_levels_are_real(ops_home: OpsHome, tmp_path: Path, milvus_kind: str) -> None:
    tasks = TaskStore(tmp_path / "tasks.db")
    s = _status(ops_home, tasks)
    milvus = s["service"]["milvus"]
    assert milvus["reachable"] is True and milvus["rows"] == 0 and milvus["kind"] == milvus_kind
    assert milvus["expected_rows"] == 0 and "disagrees" not in milvus
    assert s["service"]["audit"]["writable"] is True
    assert s["service"]["documents"] == {"indexed": 0, "failed": 0, "indexing": 0}
    assert s["service"]["tls"]["configured"] is False
    memory = s["service"]["dense_memory"]  # lives in the server, which is not running
    assert memory["state"] == ("not loaded" if milvus_kind == "lite" else "off")
    disks = {d["name"]: d for d in s["component"]["disks"]}
    if milvus_kind == "lite":  # the Lite file is in the home; a server keeps its own disk
        assert set(disks) == {"home", "drop", "vault", "milvus"}
        assert disks["home"]["bytes"] > disks["milvus"]["bytes"] > 0
    else:
        assert set(disks) == {"home", "drop", "vault"}
    assert s["component"]["gpu"]["available"] in (True, False)
    assert "reason" in s["component"]["gpu"] or s["component"]["gpu"]["devices"]
    node = s["node"]
    assert node["server"]["running"] is False and "no heartbeat" in node["server"]["reason"]
    uri = node["settings"]["milvus_uri"]
    assert uri.endswith("chunks.db") if milvus_kind == "lite" else uri.startswith("http://")
    assert "token" not in json.dumps(node["settings"])


@lite_only
def test_watcher_heartbeat_and_queue(ops_home: OpsHome, tmp_path: Path) -> None:
    drop = ops_home.settings.drop_dir / "finance"
    drop.mkdir(parents=True, exist_ok=True)
    for name in ("a.txt", "b.txt"):
        (drop / name).write_text("pending")
    home = ops_home.settings.home
    runtime_state.publish(home, "watch", {"passes": 3, "last_pass_at": ops_home.now})
    try:
        s = _status(ops_home, TaskStore(tmp_path / "tasks.db"))
    finally:
        runtime_state.clear(home, "watch")
        for name in ("a.txt", "b.txt"):
            (drop / name).unlink()
    ing = s["service"]["ingestion"]
    assert ing["watcher"]["alive"] is True and ing["watcher"]["passes"] == 3
    assert ing["queue"] == 2 and ing["mode"] == "inbox"
    procs = {p["role"]: p for p in s["component"]["processes"]}
    assert procs["watch"]["running"] and procs["watch"]["rss"] > 10 * 2**20
    assert "watcher alive" in render_status(s)


@lite_only
def test_task_level_shows_recent_work(ops_home: OpsHome, tmp_path: Path) -> None:
    tasks = TaskStore(tmp_path / "tasks.db")
    tasks.record_question(
        groups=["hr"],
        channel="api",
        mode="generative",
        outcome="answered",
        model="new-model",
        retrieval_ms=12.0,
        generation_ms=2000.0,
        tokens=50,
    )
    tasks.record_ingest(outcome="failed", group="hr", code="encrypted", stages={"parse_s": 0.5})
    s = _status(ops_home, tasks)
    q = s["task"]["questions"][0]
    assert q["tokens_per_s"] == 25.0 and q["retrieval_ms"] == 12.0
    assert s["task"]["summary"]["retrieval_p50_ms"] == 12.0
    assert s["node"]["last_errors"][0]["code"] == "encrypted"
    text = render_status(s)
    assert "25.0 tok/s" in text and "[encrypted]" in text


def test_cli_status_shows_every_level(ops_home: OpsHome, milvus_kind: str) -> None:
    env = {
        "APPLIANCE_HOME": str(ops_home.settings.home),
        "APPLIANCE_PASSPHRASE": PASSPHRASE,
        "APPLIANCE__SECURITY__KDF_COST_LOG2": "10",
        "APPLIANCE__MILVUS__URI": ops_home.settings.milvus.uri,
    }
    result = CliRunner().invoke(cli, ["status"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    for title in ("Component", "Service", "Appliance", "Tasks"):
        assert f"\n{title}\n" in out
    assert "old-model: LOCKED [EXPIRED]" in out and "30.0 days left" in out
    assert "DEGRADED" in out and f"milvus     {milvus_kind}" in out


def test_tls_expiry(tmp_path: Path) -> None:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    soon_pem, _ = self_signed(tmp_path / "soon", days=10, common_name="appliance.test")
    soon = tls_status(soon_pem, now=now)
    assert soon["state"] == "expiring" and 9.9 < soon["days_left"] <= 10.0
    assert "CN=appliance.test" in soon["subject"]
    assert tls_status(self_signed(tmp_path / "ok", days=200)[0], now=now)["state"] == "ok"
    assert tls_status(soon_pem, now=now + 11 * DAY)["state"] == "expired"
    (tmp_path / "bad.pem").write_text("not a certificate")
    assert tls_status(tmp_path / "bad.pem", now=now)["state"] == "unreadable"


def test_redact_uri() -> None:
    assert redact_uri("http://root:secret@milvus:19530/db") == "http://milvus:19530/db"
    assert redact_uri("/data/milvus/chunks.db") == "/data/milvus/chunks.db"


def test_a_server_watching_the_drop_folder_counts_as_the_watcher() -> None:
    from appliance.ops.runtime_state import Heartbeat
    from appliance.ops.status import _watcher

    gone = Heartbeat("watch", False, "no heartbeat file")
    serving = Heartbeat("serve", True, "", pid=42, info={"watching_drop": True})
    assert _watcher({"watch": gone, "serve": serving}) is serving
    not_watching = Heartbeat("serve", True, "", pid=42, info={"watching_drop": False})
    assert _watcher({"watch": gone, "serve": not_watching}) is gone
    alive = Heartbeat("watch", True, "", pid=7)
    assert _watcher({"watch": alive, "serve": serving}) is alive


@lite_only
def test_the_servers_dense_memory_index_is_reported(ops_home: OpsHome, tmp_path: Path) -> None:
    knowledge = ops_home.knowledge
    knowledge.start_dense_memory()
    try:
        assert knowledge.dense_memory is not None and knowledge.dense_memory.wait_ready()
        s = _status(ops_home, TaskStore(tmp_path / "tasks.db"))
        memory = s["service"]["dense_memory"]
        assert memory["state"] == "ready" and memory["rows"] == 0
        assert memory["max_mb"] == ops_home.settings.retrieval.dense_memory_mb
        assert "dense mem  ready, 0 chunks in " in render_status(s)
    finally:
        knowledge.close_dense_memory()


def test_how_questions_are_embedded_is_reported(ops_home: OpsHome, tmp_path: Path) -> None:
    assert ops_home.knowledge.embedder.prepare_queries() == "traced"
    s = _status(ops_home, TaskStore(tmp_path / "tasks.db"))
    assert s["service"]["query_path"] == "traced"
    assert "queries    embedder traced" in render_status(s)
    why = "eager: the traced vectors differ from the eager ones by 2.00e-03 (> 1e-05)"
    info = {"query_path": why}
    serve = runtime_state.Heartbeat("serve", True, "", pid=os.getpid() + 1, info=info)
    assert query_path_status(ops_home.settings, None, serve) == why  # the server's, not ours
    assert query_path_status(ops_home.settings, None, runtime_state.Heartbeat("serve", False, ""))
    embedding = ops_home.settings.embedding.model_copy(update={"trace_queries": False})
    off = ops_home.settings.model_copy(update={"embedding": embedding})
    assert query_path_status(off, ops_home.knowledge, serve) == (
        "eager: embedding.trace_queries = false"
    )


def test_another_process_reads_the_dense_memory_index_from_the_servers_heartbeat(
    ops_home: OpsHome, milvus_kind: str
) -> None:
    held = {"state": "over budget", "reason": "400000 chunks need 1200 MB", "rows": 0}
    info = {"dense_memory": held}
    serve = runtime_state.Heartbeat("serve", True, "", pid=os.getpid() + 1, info=info)
    got = dense_memory_status(ops_home.settings, None, serve)
    if milvus_kind != "lite":  # `auto` leaves it off with a Milvus server
        assert got["state"] == "off" and "auto" in got["reason"]
        return
    assert got["state"] == "over budget" and got["source"].startswith("server heartbeat")
    service = {"dense_memory": got, "milvus": {}, "models": [], "tls": {}, "audit": {"writable": 1}}
    levels: dict = {"service": service}
    levels |= {"node": {"server": {}}, "component": {"disks": []}}
    codes = [p["code"] for p in verdict(levels)["problems"]]
    assert codes == ["DENSE_MEMORY_OFF"]
    gone = runtime_state.Heartbeat("serve", False, "no heartbeat")
    assert dense_memory_status(ops_home.settings, None, gone)["state"] == "not loaded"
