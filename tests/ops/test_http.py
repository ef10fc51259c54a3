"""/healthz, /readyz and /metrics through FastAPI's TestClient and a real uvicorn on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from appliance.knowledge import Knowledge
from appliance.ops.http import mount_ops
from appliance.ops.metrics import Metrics
from appliance.ops.tasks import TaskStore
from appliance.users import User
from ingest.store import ChunkStore
from tests.support.milvus_server import lite_only

from .conftest import OpsHome, make_answer


@dataclass
class ModelState:
    name: str
    loaded: bool
    reason_code: str
    valid_until: int | None = None


@dataclass
class Manager:
    items: list[ModelState] = field(default_factory=list)

    def states(self) -> list[ModelState]:
        return self.items


@dataclass
class RuntimeLike:
    app: Any
    knowledge: Any
    settings: Any
    metrics: Metrics
    task_store: TaskStore
    started_at: float
    models: Manager


def _runtime(h: OpsHome, tmp: Path, knowledge: Any = None) -> RuntimeLike:
    now = h.now
    manager = Manager(
        [
            ModelState("new-model", True, "OK", now + 30 * 86_400),
            ModelState("old-model", False, "EXPIRED", now - 2 * 86_400),
        ]
    )
    return RuntimeLike(
        h.app,
        knowledge or h.knowledge,
        h.settings,
        Metrics(),
        TaskStore(tmp / "tasks.db"),
        time.time() - 5,
        manager,
    )


def _client(rt: RuntimeLike) -> TestClient:
    app = FastAPI()
    mount_ops(app, rt)
    return TestClient(app)


def test_healthz_and_readyz(ops_home: OpsHome, tmp_path: Path) -> None:
    client = _client(_runtime(ops_home, tmp_path))
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    body = ready.json()
    assert ready.status_code == 200 and body["status"] == "ready" and "reasons" not in body
    assert body["checks"]["milvus"] == {"reachable": True, "rows": 0}
    assert "warnings" not in body
    assert body["answer_mode"] == "generative"
    assert {"name": "old-model", "loaded": False, "reason_code": "EXPIRED"} in body["models"]


@lite_only
def test_readyz_503_with_reason_when_milvus_is_gone(ops_home: OpsHome, tmp_path: Path) -> None:
    info = ops_home.knowledge.embedder.info
    (tmp_path / "m").mkdir()
    store = ChunkStore.open(
        str(tmp_path / "m" / "gone.db"), dim=info.dimension, model_id=info.model_id
    )
    store.close()
    down = Knowledge(ops_home.settings, ops_home.app.secure)
    down.store = store  # a store whose connection has ended
    ready = _client(_runtime(ops_home, tmp_path, down)).get("/readyz")
    body = ready.json()
    assert ready.status_code == 503 and body["status"] == "not ready"
    assert [r["code"] for r in body["reasons"]] == ["MILVUS_UNREACHABLE"]
    assert "closed" in body["reasons"][0]["message"]


@lite_only
def test_metrics_show_the_questions_just_asked(ops_home: OpsHome, tmp_path: Path) -> None:
    rt = _runtime(ops_home, tmp_path)
    user = User("zhang.wei", "staff", ("finance",), False, 0, 0, 0, 0)
    for _ in range(3):
        rt.metrics.observe_answer(make_answer(), user, "api", "answered")
    client = _client(rt)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    asked = [s for s in families["appliance_questions"].samples if s.name.endswith("_total")]
    assert [(s.labels, s.value) for s in asked] == [
        ({"mode": "generative", "outcome": "answered", "channel": "api"}, 3.0)
    ]
    loaded = {s.labels["model"]: s.value for s in families["appliance_model_loaded"].samples}
    assert loaded == {"new-model": 1.0, "old-model": 0.0}
    assert "zhang.wei" not in response.text and "salary" not in response.text


@lite_only
def test_metrics_show_the_in_memory_dense_index(ops_home: OpsHome, tmp_path: Path) -> None:
    rt = _runtime(ops_home, tmp_path)
    rt.knowledge.start_dense_memory()
    try:
        assert rt.knowledge.dense_memory.wait_ready()
        dim = rt.knowledge.store.meta.dimension
        rt.knowledge.dense_memory.search([1.0] * dim, groups=["hr"], limit=3)
        families = {
            f.name: f for f in text_string_to_metric_families(_client(rt).get("/metrics").text)
        }
        value = {
            k: families[f"appliance_dense_memory_{k}"].samples[0].value
            for k in ("ready", "rows", "searches", "fallbacks", "bytes")
        }
        assert value["ready"] == 1.0 and value["rows"] == 0.0 and value["searches"] == 1.0
        assert value["fallbacks"] == 0.0 and value["bytes"] > 0
    finally:
        rt.knowledge.close_dense_memory()


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # running in a thread
        pass


@pytest.fixture
def loopback(ops_home: OpsHome, tmp_path: Path) -> Iterator[tuple[str, RuntimeLike]]:
    rt = _runtime(ops_home, tmp_path)
    app = FastAPI()
    mount_ops(app, rt)
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", rt
    server.should_exit = True
    thread.join(timeout=10)


@lite_only
def test_real_server_on_loopback(loopback: tuple[str, RuntimeLike]) -> None:
    base, rt = loopback
    user = User("li.na", "staff", ("hr",), False, 0, 0, 0, 0)
    rt.metrics.observe_answer(
        make_answer(
            mode="extractive", model=None, tokens=0, fallback_reason="EXPIRED: policy ended"
        ),
        user,
        "web",
        "answered",
    )
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").json()["status"] == "ready"
        text = http.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    web = [s for s in families["appliance_questions"].samples if s.name.endswith("_total")]
    assert web[0].labels == {"mode": "extractive", "outcome": "answered", "channel": "web"}
    fallback = families["appliance_extractive_fallbacks"].samples[0]
    assert fallback.labels == {"reason": "EXPIRED"} and fallback.value == 1.0
