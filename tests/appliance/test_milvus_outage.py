"""A serving appliance whose Milvus server goes away, or hangs (issue 16).

A real `serve` stack (uvicorn, the OpenAI-shaped API, the Gradio web UI, /readyz) over a real
Milvus server process on loopback (`tests/support/milvus_server.py`):

- killed (``SIGKILL``): questions answer 503 in the OpenAI error shape with the reason, the web
  UI says the knowledge base is unavailable, /readyz is false with the reason and `appliance
  status` shows the Milvus service down; asking on does not grow the process's threads, file
  descriptors or connections; started again on the same data file, answers resume within 5 s,
  without restarting anything;
- stopped (``SIGSTOP``) past ``milvus.timeout_s``: questions time out with a clear 503 and
  answers resume once it continues (``SIGCONT``);
- an upload while it is down waits in the drop folder (queued again, reason
  ``index-unavailable``, never quarantined) and is indexed once the server is back.

Each test ends with the server back and `ingest.reconcile.compare` finding nothing to repair.
"""

from __future__ import annotations

import gc
import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from click.testing import CliRunner

from appliance.cli import cli
from appliance.ops.render import render_status
from appliance.ops.status import collect_status
from appliance.ops.tasks import TaskStore
from appliance.serve.server import build_app
from ingest.reconcile import compare
from tests.ingest.test_embed import bundled_embedder
from tests.support.milvus_server import MilvusBackend, MilvusServer
from tests.support.server import running_server
from tests.support.webui import Page, browser, login
from tests.ui.kit import PASSPHRASE, PASSWORD, UiWorld, build

pytestmark = pytest.mark.slow
TIMEOUT_S = 2.0
QUESTION = "What is the travel budget for 2027?"
RESUME_LIMIT_S = 5.0


@dataclass
class Served:
    url: str
    world: UiWorld
    server: MilvusServer
    token: str

    def ask(self, question: str = QUESTION, **extra: Any) -> httpx.Response:
        body = {"model": "auto", "messages": [{"role": "user", "content": question}], **extra}
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("outage")
    with MilvusBackend("server") as backend:
        server = backend.server(root / "milvus-data" / "chunks.db")
        world = build(
            root,
            bundled_embedder(),
            milvus={
                "uri": server.uri,
                "timeout_s": TIMEOUT_S,
                "reconnect_max_s": 0.5,
                "retry_for_s": 1.0,  # ingestion inside serve gives up quickly (test below)
                "retry_initial_s": 0.2,
                "retry_max_s": 0.5,
            },
        )
        token = world.app.users.issue_token("fred", now=int(time.time()))
        try:
            with running_server(build_app(world.runtime, ui=True)) as url:
                yield Served(url, world, server, token)
        finally:
            world.close()


def resources(port: int) -> tuple[int, int, int]:
    """(threads, open file descriptors, TCP connections to ``port``) of this process."""
    gc.collect()
    me = psutil.Process()
    conns = [c for c in me.net_connections("tcp") if c.raddr and c.raddr.port == port]
    return me.num_threads(), me.num_fds(), len(conns)


def ui_page(url: str) -> Page:
    client = browser(url)
    assert login(client, "fred", PASSWORD).status_code == 303
    return Page(client)


def assert_unavailable(response: httpx.Response, reason: str, port: int) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["type"] == "service_unavailable" and error["code"] == "KNOWLEDGE_UNAVAILABLE"
    assert error["reason"] == reason and error["param"] is None
    assert error["message"].startswith("The knowledge base is unavailable")
    assert "appliance status" in error["hint"]
    assert str(port) not in response.text and "127.0.0.1" not in response.text  # no internals
    assert response.headers["retry-after"] == "10"


def wait_for_answer(s: Served, started: float) -> float:
    """Seconds from ``started`` to the first 200 answer (asking every 0.1 s)."""
    while True:
        if s.ask().status_code == 200:
            return time.monotonic() - started
        assert time.monotonic() - started < 60, "answers did not resume"
        time.sleep(0.1)


def test_server_killed_503_then_answers_resume_without_restarting(served: Served) -> None:
    s, port = served, served.server.port
    page = ui_page(s.url)
    for _ in range(4):  # warm every pool (API worker threads, retrieval, Gradio queue)
        assert s.ask().status_code == 200
    assert page.call(page.fn("ask"), [QUESTION, [], None]).ok
    before = resources(port)
    assert before[2] == 1  # one connection: the runtime's store (ingestion shares it)

    s.server.kill()
    t0 = time.monotonic()
    assert_unavailable(s.ask(), "MILVUS_UNAVAILABLE", port)
    assert time.monotonic() - t0 < TIMEOUT_S  # a dead server fails fast, no waiting
    assert_unavailable(s.ask(stream=True), "MILVUS_UNAVAILABLE", port)
    search = httpx.post(
        f"{s.url}/v1/search",
        json={"query": "travel budget"},
        headers={"Authorization": f"Bearer {s.token}"},
    )
    assert_unavailable(search, "MILVUS_UNAVAILABLE", port)
    ui = page.call(page.fn("ask"), [QUESTION, [], None])
    assert not ui.ok and "knowledge base is unavailable" in (ui.error or "")
    ready = httpx.get(f"{s.url}/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "not ready"
    (reason,) = ready.json()["reasons"]
    assert reason["code"] == "MILVUS_UNREACHABLE" and "Milvus is unavailable" in reason["message"]
    status = collect_status(
        s.world.app,
        s.world.runtime.knowledge,
        now=int(time.time()),
        task_store=TaskStore(s.world.settings.home / "status-tasks.db"),
        cpu_interval_s=0.0,
    )
    assert status["service"]["milvus"]["reachable"] is False
    assert status["overall"]["state"] == "down"
    assert "[MILVUS_UNREACHABLE]" in render_status(status)
    for _ in range(20):  # keep asking while it is down
        assert s.ask().status_code == 503
    during = resources(port)
    assert during[2] == 0
    assert during[0] <= before[0] + 2 and during[1] <= before[1] + 4, (before, during)

    s.server.start()  # the same data file and port; `serve` is not touched
    resumed = wait_for_answer(s, time.monotonic())
    assert resumed <= RESUME_LIMIT_S
    assert page.call(page.fn("ask"), [QUESTION, [], None]).ok
    assert httpx.get(f"{s.url}/readyz").status_code == 200
    after = resources(port)
    assert after[2] == before[2]  # one connection again, none left over from the outage
    assert after[0] <= before[0] + 2 and after[1] <= before[1] + 4, (before, after)
    assert compare(s.world.runtime.knowledge.registry, s.world.runtime.knowledge.store).ok


def test_appliance_status_shows_the_milvus_service_down(served: Served, tmp_path: Path) -> None:
    env = {
        "APPLIANCE_HOME": str(served.world.settings.home),
        "APPLIANCE_PASSPHRASE": PASSPHRASE,
        "APPLIANCE__MILVUS__URI": served.server.uri,
        "APPLIANCE__MILVUS__TIMEOUT_S": str(TIMEOUT_S),
    }
    served.server.kill()
    try:
        down = CliRunner().invoke(cli, ["status"], env=env)
    finally:
        served.server.start()
    assert down.exit_code == 1, down.output
    assert "DOWN" in down.output and "[MILVUS_UNREACHABLE] Milvus is unavailable" in down.output
    assert "milvus     server http://127.0.0.1:" in down.output
    up = CliRunner().invoke(cli, ["status", "--json"], env=env)
    assert '"reachable": true' in up.output


def test_a_hung_server_times_out_clearly_and_the_appliance_recovers(served: Served) -> None:
    s, port = served, served.server.port
    assert s.ask().status_code == 200
    s.server.pause()  # SIGSTOP: connections stay open, nothing answers
    try:
        t0 = time.monotonic()
        slow = s.ask()
        took = time.monotonic() - t0
        assert_unavailable(slow, "MILVUS_TIMEOUT", port)
        assert "did not answer in time" in slow.json()["error"]["message"]
        assert TIMEOUT_S <= took < 4 * TIMEOUT_S + 5
        ready = httpx.get(f"{s.url}/readyz", timeout=30)
        assert ready.status_code == 503
        assert "did not answer within 2 s" in ready.json()["reasons"][0]["message"]
        time.sleep(TIMEOUT_S)  # stopped well past the time limit
    finally:
        s.server.resume()
    resumed = wait_for_answer(s, time.monotonic())
    assert resumed <= RESUME_LIMIT_S
    assert httpx.get(f"{s.url}/readyz").status_code == 200
    assert resources(port)[2] == 1
    assert compare(s.world.runtime.knowledge.registry, s.world.runtime.knowledge.store).ok


@contextmanager
def _upload_during_outage(served: Served, filename: str, text: str) -> Iterator[tuple[Any, Any]]:
    """The Milvus server killed, then ``text`` uploaded by fred into finance: yields (fred, the
    upload), and starts the server again on the way out."""
    runtime = served.world.runtime
    fred = runtime.app.users.get("fred")
    served.server.kill()
    try:
        source = io.BytesIO(text.encode())
        yield fred, runtime.uploads.save(fred, filename=filename, source=source, group="finance")
    finally:
        served.server.start()


def test_an_upload_during_an_outage_waits_and_is_indexed_when_milvus_is_back(
    served: Served,
) -> None:
    runtime = served.world.runtime
    drop = served.world.settings.drop_dir
    note = "The coffee machine on floor 3 is serviced every Friday."
    with _upload_during_outage(served, "outage-note.txt", note) as (fred, item):
        deadline = time.monotonic() + 90
        while (now := runtime.uploads.status(fred, item.id)[0]).code != "index-unavailable":
            assert now.state != "failed", now
            assert time.monotonic() < deadline, "the pass did not give up"
            time.sleep(0.1)
        assert now.state == "queued" and "indexed as soon as" in now.reason
        assert (drop / "finance" / "outage-note.txt").exists()
        assert not (drop / "_failed").exists()
    done = runtime.uploads.wait(fred, item.id, timeout=120)
    assert (done.state, done.code) == ("indexed", "")
    assert not (drop / "finance" / "outage-note.txt").exists()  # in the vault now
    assert served.ask("When is the coffee machine serviced?").status_code == 200
    knowledge = runtime.knowledge
    assert compare(knowledge.registry, knowledge.store).ok


def test_shutdown_during_an_outage_does_not_wait_out_the_retries(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingestion inside `serve` retries Milvus writes for milvus.retry_for_s (300 s by default);
    stopping the service must cut the retry pause short instead of waiting for it (last in the
    module: the uploads service stays closed)."""
    from appliance import knowledge as knowledge_module
    from ingest.retry import RetryPolicy

    patient = RetryPolicy(for_s=300.0, initial_s=0.2, max_s=0.5)
    monkeypatch.setattr(knowledge_module, "retry_policy", lambda _settings: patient)
    runtime = served.world.runtime
    drop = served.world.settings.drop_dir
    note = "The archive room is locked on Sundays."
    with _upload_during_outage(served, "shutdown-note.txt", note) as (fred, item):
        deadline = time.monotonic() + 60
        while runtime.uploads.status(fred, item.id)[0].state != "parsing":
            assert time.monotonic() < deadline, "the pass did not start"
            time.sleep(0.1)
        time.sleep(3 * TIMEOUT_S)  # well inside the 300 s of retries
        started = time.monotonic()
        runtime.uploads.close()
        assert time.monotonic() - started < 2 * TIMEOUT_S + 1  # one Milvus call at most
        now = runtime.uploads.status(fred, item.id)[0]
        assert (now.state, now.code) == ("queued", "index-unavailable")
        assert (drop / "finance" / "shutdown-note.txt").exists()  # ingested after a restart
        assert not (drop / "_failed").exists()
