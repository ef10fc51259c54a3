"""The LlamaIndex client (`appliance.client.llamaindex`) against a real server on loopback.

The world of tests/support/serving.py: bob (finance) and carol (hr), the tiny random model under
a policy for staff, sample documents in finance/, hr/ and public/. Every request goes over HTTP
with the user's own API key; the server decides what each may see.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from llama_index.core.base.response.schema import StreamingResponse
from llama_index.core.llms import ChatMessage, MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode

from appliance.api.limits import Limiter
from appliance.client import (
    ApplianceClient,
    ApplianceTimeout,
    ApplianceUnreachable,
    AuthenticationFailed,
    ModelUnavailable,
    PermissionDenied,
    RateLimited,
)
from appliance.client.llamaindex import ApplianceLLM, ApplianceQueryEngine, ApplianceRetriever
from appliance.serve.server import build_app
from tests.ingest.test_embed import bundled_embedder
from tests.support.fixtures import TinyModel, make_tiny_model_fixture
from tests.support.server import free_port, running_server
from tests.support.serving import (
    MODEL,
    NOW,
    PASSWORD,
    Clock,
    World,
    build_world,
    open_runtime,
)
from tests.support.tls import self_signed

ROOT = Path(__file__).resolve().parents[2]
MINE = {"bob": {"finance", "public"}, "carol": {"hr", "public"}}
tiny_model = make_tiny_model_fixture(scope="module")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModel) -> World:
    root = tmp_path_factory.mktemp("llamaindex")
    return build_world(root, model_dir=tiny_model.path, embedder=bundled_embedder())


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[dict[str, Any]]:
    clock = Clock(NOW + 10)
    rt = open_runtime(world, clock=clock, embedder=bundled_embedder())
    # dora reads finance but her role is not in the model's policy: 'auto' answers extractively
    rt.app.users.add_user("dora", role="admin", groups=["finance"], password=PASSWORD, now=NOW)
    names = ("bob", "carol", "admin", "dora")
    keys = {name: rt.app.users.issue_token(name, now=NOW) for name in names}
    app = build_app(rt, ui=False)
    with running_server(app) as url:
        yield {"url": url, "keys": keys, "runtime": rt, "clock": clock, "app": app}
    rt.close()


def client(server: dict[str, Any], user: str = "bob", **kw: Any) -> ApplianceClient:
    return ApplianceClient(server["url"], api_key=server["keys"][user], **kw)


def groups(nodes: list[Any]) -> set[str]:
    return {n.node.metadata["group"] for n in nodes}


def test_retriever_returns_only_the_users_groups_with_the_servers_scores(
    server: dict[str, Any],
) -> None:
    query = "How many days of annual leave does every employee have?"
    nodes = ApplianceRetriever(client(server, "bob"), similarity_top_k=10).retrieve(query)
    assert nodes and groups(nodes) <= MINE["bob"]
    assert not any("28 days" in n.node.get_content() for n in nodes)
    raw = httpx.post(
        server["url"] + "/v1/search",
        json={"query": query, "limit": 10},
        headers={"Authorization": "Bearer " + server["keys"]["bob"]},
    ).json()["data"]
    assert [n.node.node_id for n in nodes] == [p["chunk_id"] for p in raw]
    assert [n.score for n in nodes] == [p["score"] for p in raw]
    assert [n.node.get_content() for n in nodes] == [p["text"] for p in raw]
    # the same question as carol finds the hr passage: bob's result was filtered, not empty
    theirs = ApplianceRetriever(client(server, "carol"), similarity_top_k=10).retrieve(query)
    assert groups(theirs) <= MINE["carol"]
    assert any("28 days" in n.node.get_content() for n in theirs)


def test_retrieved_nodes_carry_flat_metadata_and_hide_ids_from_prompts(
    server: dict[str, Any],
) -> None:
    [top] = ApplianceRetriever(client(server), similarity_top_k=1).retrieve("travel budget 2027")
    meta = top.node.metadata
    assert meta["document"].endswith("budget.md") and meta["group"] == "finance"
    assert meta["title"] and isinstance(meta["section"], str) and "Travel" in meta["section"]
    assert meta["doc_id"] and top.node.node_id == meta["chunk_id"]
    assert all(isinstance(v, str | int | float | bool) for v in meta.values())
    shown = top.node.get_content(metadata_mode=MetadataMode.LLM)
    assert "budget.md" in shown and "48,000" in shown
    assert meta["chunk_id"] not in shown and meta["doc_id"] not in shown


def test_async_retrieval_gives_the_same_nodes(server: dict[str, Any]) -> None:
    retriever = ApplianceRetriever(client(server), similarity_top_k=4, mode="sparse")
    sync = retriever.retrieve("canteen opening hours")
    async_ = asyncio.run(retriever.aretrieve("canteen opening hours"))
    assert [n.node.node_id for n in sync] == [n.node.node_id for n in async_] != []


def test_extractive_completion_carries_the_cited_sources_as_nodes(server: dict[str, Any]) -> None:
    llm = ApplianceLLM(client(server), model="extractive")
    done = llm.complete("When does the canteen open?")
    assert "11:30" in done.text
    extra = done.additional_kwargs
    assert extra["mode"] == "extractive" and "Extractive" in extra["label"]
    nodes = extra["source_nodes"]
    assert nodes and groups(nodes) <= MINE["bob"]
    assert [n.node.metadata["n"] for n in nodes] == list(range(1, len(nodes) + 1))
    cited = {int(c) for c in re.findall(r"\[(\d+)\]", done.text)}
    assert cited and cited == set(extra["cited"])
    assert {n.node.metadata["n"] for n in nodes if n.node.metadata["cited"]} == cited
    # whole passages, exactly as /v1/search gives them, not the 300-character snippets
    passages = {p["chunk_id"]: p["text"] for p in client(server).search("canteen", limit=20)}
    assert all(n.node.get_content() == passages[n.node.node_id] for n in nodes)
    assert not any("text_is_snippet" in n.node.metadata for n in nodes)


def test_generative_stream_chat_streams_and_ends_with_the_answers_fields(
    server: dict[str, Any],
) -> None:
    llm = ApplianceLLM(client(server), model=MODEL, max_tokens=12)
    history = [
        ChatMessage(role="system", content="ignored: the server owns its prompt"),
        ChatMessage(role="user", content="Hello"),
        ChatMessage(role="assistant", content="Hello, how can I help?"),
        ChatMessage(role="user", content="What is the travel budget for 2027?"),
    ]
    parts = list(llm.stream_chat(history))
    first, last = parts[0], parts[-1]
    assert first.additional_kwargs["source_nodes"] and first.delta == ""
    assert groups(first.additional_kwargs["source_nodes"]) <= MINE["bob"]
    text = "".join(p.delta or "" for p in parts)
    assert len(parts) >= 3 and text == last.message.content
    extra = last.additional_kwargs
    assert extra["mode"] == "generative" and extra["model"] == MODEL
    assert 0 < extra["completion_tokens"] <= 12
    assert last.raw["choices"][0]["finish_reason"] == "stop"
    assert any("48,000" in n.node.get_content() for n in extra["source_nodes"])


def test_async_completion_and_stream(server: dict[str, Any]) -> None:
    llm = ApplianceLLM(client(server), model="extractive")

    async def both() -> tuple[Any, list[Any]]:
        done = await llm.acomplete("What is the travel budget for 2027?")
        parts = [p async for p in await llm.astream_complete("When does the canteen open?")]
        return done, parts

    done, parts = asyncio.run(both())
    assert "48,000" in done.text and done.additional_kwargs["source_nodes"]
    assert "11:30" in parts[-1].text and parts[-1].additional_kwargs["mode"] == "extractive"


def test_query_engine_answers_with_source_nodes(server: dict[str, Any]) -> None:
    engine = ApplianceQueryEngine(ApplianceLLM(client(server), model="extractive"))
    response = engine.query("What is the travel budget for 2027?")
    assert "48,000" in str(response)
    assert response.source_nodes and groups(response.source_nodes) <= MINE["bob"]
    assert response.metadata is not None and response.metadata["mode"] == "extractive"
    cited = [n for n in response.source_nodes if n.node.metadata["cited"]]
    assert cited and any("48,000" in n.node.get_content() for n in cited)


def test_streaming_query_engine_has_its_sources_before_the_first_token(
    server: dict[str, Any],
) -> None:
    llm = ApplianceLLM(client(server), model=MODEL, max_tokens=16)
    engine = ApplianceQueryEngine(llm, streaming=True)
    response = engine.query("What is the travel budget for 2027?")
    assert isinstance(response, StreamingResponse)
    assert response.source_nodes and groups(response.source_nodes) <= MINE["bob"]
    assert response.metadata == {}  # filled when the stream ends
    text = str(response)
    assert response.metadata["mode"] == "generative" and text.strip()


def test_retriever_composes_with_a_customers_own_llm(server: dict[str, Any]) -> None:
    """RetrieverQueryEngine over the appliance's retriever and the customer's LLM (MockLLM stands
    in for it: it echoes the prompt, so the answer shows what context reached the LLM)."""
    retriever = ApplianceRetriever(client(server, "carol"), similarity_top_k=3)
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM())
    response = engine.query("What is the travel budget for 2027?")
    assert response.source_nodes and groups(response.source_nodes) <= MINE["carol"]
    assert "48,000" not in str(response)  # finance text never reaches carol's LLM
    assert "canteen" in str(response) or "28 days" in str(response)


def test_bad_key_is_a_typed_authentication_error(server: dict[str, Any]) -> None:
    bad = ApplianceClient(server["url"], api_key="kapp_" + "A" * 43)
    with pytest.raises(AuthenticationFailed) as info:
        ApplianceRetriever(bad).retrieve("travel")
    assert info.value.status == 401 and info.value.code == "AUTH_FAILED"
    assert info.value.message == "The API token is not valid."
    assert "Ask an administrator" in info.value.diagnostics()  # the server's own hint
    with pytest.raises(AuthenticationFailed):
        ApplianceLLM(bad, model="extractive").complete("travel")
    with pytest.raises(AuthenticationFailed):
        ApplianceQueryEngine(ApplianceLLM(bad), streaming=True).query("travel")


def test_missing_key_fails_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPLIANCE_API_KEY", raising=False)
    with pytest.raises(AuthenticationFailed, match="No API key") as info:
        ApplianceClient("http://127.0.0.1:9")
    assert info.value.code == "TOKEN_MISSING" and "APPLIANCE_API_KEY" in info.value.hint
    monkeypatch.setenv("APPLIANCE_API_KEY", "kapp_from_env")
    assert ApplianceClient("http://127.0.0.1:9/v1/").base_url == "http://127.0.0.1:9"


def test_role_not_allowed_is_permission_denied(server: dict[str, Any]) -> None:
    with pytest.raises(PermissionDenied) as info:
        ApplianceLLM(client(server, "admin"), model=MODEL).complete("canteen")
    assert info.value.status == 403 and info.value.code == "ROLE_DENIED"


def test_server_down_is_a_clear_unreachable_error() -> None:
    port = free_port()  # nothing listens there
    llm = ApplianceLLM(ApplianceClient(f"http://127.0.0.1:{port}", api_key="kapp_x"))
    with pytest.raises(ApplianceUnreachable) as info:
        llm.complete("travel")
    assert f"127.0.0.1:{port}" in info.value.message
    assert "appliance serve" in info.value.diagnostics()


def test_a_server_that_does_not_answer_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        accepted: list[socket.socket] = []
        threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        retriever = ApplianceRetriever(ApplianceClient(url, api_key="kapp_x", timeout=0.5))
        with pytest.raises(ApplianceTimeout, match="did not answer in time"):
            retriever.retrieve("travel")
        for conn in accepted:
            conn.close()


def test_a_full_server_is_rate_limited_with_retry_after(server: dict[str, Any]) -> None:
    app = server["app"]
    saved = app.state.limiter
    full = Limiter(concurrent=1, queue=0, queue_timeout_s=1)
    assert asyncio.run(full.sem.acquire())  # its only slot is taken
    app.state.limiter = full
    try:
        with pytest.raises(RateLimited) as info:
            ApplianceLLM(client(server), model="extractive").complete("canteen")
    finally:
        app.state.limiter = saved
    assert info.value.status == 429 and info.value.retry_after == 5.0
    assert "running" in info.value.message


def test_the_api_key_never_leaks(
    server: dict[str, Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler

    seen: list[str] = []

    class Recorder(BaseEventHandler):
        def handle(self, event: Any, **kwargs: Any) -> None:
            seen.append(event.model_dump_json())

    root = get_dispatcher()
    recorder = Recorder()
    monkeypatch.setattr(root, "event_handlers", [*root.event_handlers, recorder])
    key = server["keys"]["bob"]
    c = client(server)
    llm = ApplianceLLM(c, model="extractive")
    retriever = ApplianceRetriever(c)
    with caplog.at_level(logging.DEBUG):
        retriever.retrieve("travel budget")
        list(llm.stream_complete("travel budget"))
        ApplianceQueryEngine(llm).query("travel budget")
    assert seen and caplog.records
    assert key not in caplog.text and all(key not in e for e in seen)
    assert key not in repr(c) + repr(retriever) + repr(llm) + llm.to_json()
    wrong = "kapp_" + "B" * 43
    with pytest.raises(AuthenticationFailed) as info:
        ApplianceLLM(ApplianceClient(server["url"], api_key=wrong)).complete("x")
    assert wrong not in info.value.diagnostics() + repr(info.value)


def test_the_docs_example_runs(
    server: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The LlamaIndex block of docs/serving.md, run as it stands against the test server (only
    its address changed; ``your_llm`` stands for the customer's own LLM) with dora's key: her
    'auto' answers are extractive, so they can be checked (the random model's are noise)."""
    text = (ROOT / "docs" / "serving.md").read_text(encoding="utf-8")
    section = text.split("\n## LlamaIndex\n", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "http://127.0.0.1:8080" in code and "APPLIANCE_API_KEY" in code
    monkeypatch.setenv("APPLIANCE_API_KEY", server["keys"]["dora"])
    code = code.replace("http://127.0.0.1:8080", server["url"])
    exec(compile(code, "docs/serving.md", "exec"), {"__name__": "docs", "your_llm": MockLLM()})
    out = capsys.readouterr().out
    assert "48,000" in out and "(extractive)" in out and "cited=True" in out
    assert "budget.md" in out and "leave.md" not in out
    assert os.environ["APPLIANCE_API_KEY"] not in out


def test_closing_a_stream_early_stops_the_generation(server: dict[str, Any]) -> None:
    audit = server["runtime"].app.secure.audit
    llm = ApplianceLLM(client(server), model=MODEL, max_tokens=512)
    stream = llm.stream_chat([ChatMessage(role="user", content="Tell me all about travel.")])
    assert next(stream).additional_kwargs["source_nodes"]
    stream.close()
    deadline = time.monotonic() + 30
    results: list[str] = []
    while time.monotonic() < deadline and "cancelled" not in results:
        results = [e.details.get("result") for e in audit.tail(10) if e.action == "question.answer"]
        time.sleep(0.2)
    assert "cancelled" in results, "a closed stream went on generating"


def test_tls_with_the_appliances_own_certificate(server: dict[str, Any], tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with running_server(server["app"], ssl_certfile=str(cert), ssl_keyfile=str(key)) as url:
        url = url.replace("http://", "https://")
        with ApplianceClient(url, api_key=server["keys"]["bob"], verify=str(cert)) as trusting:
            nodes = ApplianceRetriever(trusting).retrieve("travel budget")
        assert nodes and groups(nodes) <= MINE["bob"]
        with (
            ApplianceClient(url, api_key=server["keys"]["bob"]) as default,
            pytest.raises(ApplianceUnreachable, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            ApplianceRetriever(default).retrieve("travel")


def test_expired_policy_is_model_unavailable_then_labelled_extractive(
    server: dict[str, Any],
) -> None:
    """Runs last in this module: it expires the policy of the shared server."""
    server["clock"].now = NOW + 10 * 86400
    with pytest.raises(ModelUnavailable) as info:
        ApplianceLLM(client(server), model=MODEL).complete("travel budget")
    assert info.value.status == 503 and info.value.reason == "EXPIRED"
    done = ApplianceLLM(client(server), model="auto").chat(
        [ChatMessage(role="user", content="What is the travel budget?")]
    )
    extra = done.additional_kwargs
    assert extra["mode"] == "extractive" and "expired" in extra["fallback_reason"].lower()
    assert "48,000" in (done.message.content or "")
    assert json.dumps(extra["cited"]) and extra["source_nodes"]
