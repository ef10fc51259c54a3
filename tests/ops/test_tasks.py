"""The bounded task store, the ingestion event sinks and the heartbeat files."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from appliance.knowledge import AuditEvents
from appliance.ops import runtime_state
from appliance.ops.events import FanoutEvents, OpsEvents
from appliance.ops.metrics import Metrics
from appliance.ops.tasks import TaskStore
from appliance.users import User
from ingest.pipeline import FileResult
from tests.secure.helpers import make_home

from .conftest import make_answer


def _question(store: TaskStore, at: float) -> None:
    store.record_question(
        groups=["hr"], channel="api", mode="extractive", outcome="answered", at=at
    )


def test_keeps_only_the_newest_rows(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.db", kept=100)
    for i in range(300):
        _question(store, float(i))
    store.prune()
    assert store.count("questions") == 100
    assert [r["at"] for r in store.recent("questions", 3)] == [299.0, 298.0, 297.0]
    assert store.oldest("questions") == 200.0
    assert [r["at"] for r in store.rows_since(297.5)] == [298.0, 299.0]
    for i in range(64):  # writes prune by themselves every few dozen rows
        _question(store, 300.0 + i)
    assert store.count("questions") == 100


def test_names_only_when_settings_allow(tmp_path: Path) -> None:
    user = User("li.lei", "staff", ("hr",), False, 0, 0, 0, 0)
    answer = make_answer()
    answer.question = "what is the CEO salary?"  # type: ignore[attr-defined]
    result = FileResult("hr/pay-2026.xlsx", "indexed", "d1", "hr", chunks=3, pages=1)
    hidden = TaskStore(tmp_path / "a.db")
    hidden.observe_answer(answer, user, "web", "answered")
    OpsEvents(tasks=hidden).file_done(result)
    q, i = hidden.recent("questions")[0], hidden.recent("ingests")[0]
    assert q["user"] is None and q["question"] is None and i["name"] is None
    assert q["groups"] == "hr" and q["tokens_per_s"] == 20.0 and q["model"] == "new-model"
    shown = TaskStore(tmp_path / "b.db", show_names=True)
    shown.observe_answer(answer, user, "web", "answered")
    OpsEvents(tasks=shown).file_done(result)
    q, i = shown.recent("questions")[0], shown.recent("ingests")[0]
    assert (q["user"], q["question"], i["name"]) == (
        "li.lei",
        "what is the CEO salary?",
        "hr/pay-2026.xlsx",
    )


def test_thread_safe_writes(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.db", kept=10_000)

    def work(n: int) -> None:
        for i in range(200):
            _question(store, float(n * 1000 + i))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count("questions") == 1200


def test_ingestion_events_reach_audit_tasks_and_metrics(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    store, metrics = TaskStore(tmp_path / "tasks.db"), Metrics()
    sink = FanoutEvents(
        AuditEvents(home, actor="test"), None, OpsEvents(tasks=store, metrics=metrics)
    )
    stages = {"parse_s": 0.5, "chunk_s": 0.1, "embed_s": 1.0, "write_s": 0.2}
    sink.file_done(FileResult("hr/a.docx", "indexed", "d1", "hr", chunks=7, pages=2, stages=stages))
    sink.file_done(FileResult("hr/b.pdf", "failed", "d2", "hr", code="encrypted", reason="x"))
    rows = store.recent("ingests")
    assert [(r["outcome"], r["code"], r["chunks"]) for r in rows] == [
        ("failed", "encrypted", 0),
        ("indexed", "", 7),
    ]
    assert rows[1]["embed_s"] == 1.0 and abs(rows[1]["total_s"] - 1.8) < 1e-9
    assert [e.action for e in home.audit.tail(2)] == ["document.index", "document.quarantine"]
    text = metrics.render()[0].decode()
    assert 'appliance_ingest_files_total{outcome="indexed"} 1.0' in text
    assert "appliance_ingest_chunks_total 7.0" in text


def test_heartbeat_liveness(tmp_path: Path) -> None:
    now = time.time()
    assert runtime_state.read(tmp_path, "serve").reason.startswith("not running (no heartbeat")
    runtime_state.publish(tmp_path, "serve", {"models": []}, now=now)
    beat = runtime_state.read(tmp_path, "serve", now=now + 1)
    assert beat.alive and beat.pid == runtime_state.psutil.Process().pid
    stale = runtime_state.read(tmp_path, "serve", now=now + 1000, max_age_s=90)
    assert not stale.alive and stale.reason.startswith("stalled")
    runtime_state.clear(tmp_path, "serve")
    assert not (tmp_path / "run" / "serve.json").exists()


def test_heartbeat_of_an_exited_process_is_dead(tmp_path: Path) -> None:
    code = "import sys; from appliance.ops import runtime_state as r; r.publish(__import__('pathlib').Path(sys.argv[1]), 'watch', {})"  # noqa: E501
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    beat = runtime_state.read(tmp_path, "watch")
    assert not beat.alive and "exited" in beat.reason and beat.pid is not None


def test_watch_heartbeat_counts_passes(tmp_path: Path) -> None:
    with runtime_state.watch_heartbeat(tmp_path, mode="inbox", interval_s=0.05) as counted:
        run_pass = counted(lambda: None)
        run_pass()
        run_pass()
        beat = runtime_state.read(tmp_path, "watch")
        assert beat.alive and beat.info["passes"] == 2 and beat.info["mode"] == "inbox"
        assert beat.info["busy"] is False and beat.info["last_pass_at"] >= beat.started_at
        time.sleep(0.2)  # the publisher thread refreshes the file on its own
        assert runtime_state.read(tmp_path, "watch").updated_at > beat.updated_at  # type: ignore[operator]
    assert not runtime_state.read(tmp_path, "watch").alive
