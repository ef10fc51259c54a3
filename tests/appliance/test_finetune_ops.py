"""A fine-tuning job at the task level of `appliance status` and in `/metrics`."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.config import load_settings
from appliance.finetune.jobs import JobLock
from appliance.ops.http import refresh_gauges
from appliance.ops.metrics import Metrics
from appliance.ops.render import render_status
from appliance.ops.status import finetune_jobs, task_level
from appliance.ops.tasks import TaskStore
from appliance.wiring import Appliance, init_appliance

NOW = 1_900_000_000


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Appliance:
    monkeypatch.setenv("APPLIANCE__SECURITY__KDF_COST_LOG2", "10")
    return init_appliance(load_settings(tmp_path / "home"), "pass phrase", now=NOW, actor="t")


def _job(app: Appliance, **fields: object) -> str:
    row = {
        "id": "ft-0123456789ab",
        "name": "smollm2-faq",
        "base": "smollm2",
        "base_package": "pkg-1",
        "base_manifest_sha256": "0" * 64,
        "dataset_id": "ds-1",
        "dataset": "faq-2026",
        "data_sha256": "1" * 64,
        "settings": {"rank": 16},
        "state": "running",
        "step": 120,
        "total_steps": 400,
        "loss": 0.8125,
        "tokens_per_s": 161.5,
        "eta_s": 1734.0,
        "checkpoint_step": 100,
        "created_by": "cli:admin",
        "created_at": NOW,
        "updated_at": NOW,
        **fields,
    }
    app.finetune_db.add_job(row)
    return str(row["id"])


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = m.render()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
    }


def test_status_reads_nothing_and_creates_nothing_before_any_job(app: Appliance) -> None:
    assert finetune_jobs(app) == []
    assert not (app.settings.home / "finetune").exists()


def test_a_running_job_is_at_the_task_level_and_rendered(app: Appliance, tmp_path: Path) -> None:
    job_id = _job(app)
    lock = JobLock(app.finetune_db.root)
    assert lock.acquire(job_id)  # a process trains it now
    tasks = TaskStore(tmp_path / "tasks.db")
    try:
        level = task_level(tasks, finetune=finetune_jobs(app))
    finally:
        tasks.close()
        lock.release()
    (row,) = level["finetune"]
    assert (row["state"], row["step"], row["total_steps"], row["running"]) == (
        "running",
        120,
        400,
        True,
    )
    assert row["percent"] == 30.0
    assert "settings" not in row  # status shows progress, not how it trains
    text = "\n".join(
        line
        for line in render_status(_status_with(level)).splitlines()
        if line.strip().startswith("finetune")
    )
    assert "ft-0123456789ab running: smollm2 + faq-2026 -> smollm2-faq, step 120/400" in text
    assert "loss 0.8125" in text and "161.5 tok/s" in text and "ETA 0h 28m 54s" in text
    # without the process (kill -9), the same record reads as interrupted
    assert finetune_jobs(app)[0]["state"] == "interrupted"


def _status_with(task: dict[str, object]) -> dict[str, object]:
    return {
        "at": NOW,
        "overall": {"state": "ok", "problems": []},
        "component": {
            "cpu": {"percent": 1.0, "count": 2, "load_avg": [0.1]},
            "memory": {"percent": 10.0, "available": 1, "total": 2},
            "disks": [],
            "gpu": {"available": False, "reason": "none"},
            "processes": [],
        },
        "service": {
            "milvus": {"kind": "lite", "uri": "x", "collection": "c", "reachable": True},
            "dense_memory": {"state": "not loaded", "reason": "not serving"},
            "documents": None,
            "ingestion": {
                "watcher": {"alive": False, "reason": "not running"},
                "queue": 0,
                "mode": "inbox",
            },
            "models": [],
            "audit": {"writable": True},
            "tls": {"state": "off"},
        },
        "node": {
            "version": "0",
            "python": "3.11",
            "host_uptime_s": 1,
            "server": {"running": False, "reason": "not running"},
            "settings": {},
            "last_errors": [],
        },
        "task": task,
    }


def test_metrics_carry_the_newest_job_with_bounded_labels(app: Appliance) -> None:
    _job(app, id="ft-old000000000", created_at=NOW - 10, state="finished")
    job_id = _job(app)
    lock = JobLock(app.finetune_db.root)
    assert lock.acquire(job_id)
    metrics = Metrics()
    try:
        refresh_gauges(SimpleNamespace(metrics=metrics, app=app, models=None))
    finally:
        lock.release()
    s = _samples(metrics)
    labels = (("job", job_id), ("state", "running"))
    assert s[("appliance_finetune_step", labels)] == 120
    assert s[("appliance_finetune_total_steps", labels)] == 400
    assert s[("appliance_finetune_loss", labels)] == 0.8125
    assert s[("appliance_finetune_tokens_per_second", labels)] == 161.5
    assert s[("appliance_finetune_eta_seconds", labels)] == 1734.0
    assert s[("appliance_finetune_running", labels)] == 1
    assert not [k for k in s if "ft-old" in str(k)]
    # after the job ends its gauges follow (no stale "running" series)
    app.finetune_db.update_job(job_id, state="finished", updated_at=time.time())
    refresh_gauges(SimpleNamespace(metrics=metrics, app=app, models=None))
    s = _samples(metrics)
    done = (("job", job_id), ("state", "finished"))
    assert s[("appliance_finetune_running", done)] == 0
    assert ("appliance_finetune_eta_seconds", done) not in s
    assert not [k for k in s if ("state", "running") in k[1]]
