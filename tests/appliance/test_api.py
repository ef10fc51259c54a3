"""The OpenAI-compatible API on a real server on loopback, driven by the `openai` client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from appliance.api.limits import Limiter
from appliance.errors import Overloaded
from appliance.serve.server import build_app
from tests.ingest.test_embed import bundled_embedder
from tests.support.fixtures import TinyModel, make_tiny_model_fixture
from tests.support.server import running_server
from tests.support.serving import (
    MODEL,
    NOW,
    PASSWORD,
    Clock,
    World,
    build_world,
    open_runtime,
)

tiny_model = make_tiny_model_fixture(scope="module")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModel) -> World:
    root = tmp_path_factory.mktemp("api")
    return build_world(root, model_dir=tiny_model.path, embedder=bundled_embedder())


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[dict[str, Any]]:
    clock = Clock(NOW + 10)
    rt = open_runtime(world, clock=clock, embedder=bundled_embedder())
    users = rt.app.users
    keys = {name: users.issue_token(name, now=NOW) for name in ("bob", "carol", "admin")}
    with running_server(build_app(rt, ui=False)) as url:
        yield {"url": url, "keys": keys, "runtime": rt, "clock": clock}
    rt.close()


def client(server: dict[str, Any], user: str = "bob", key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server["url"] + "/v1",
        api_key=key or server["keys"][user],
        max_retries=0,
        timeout=120,
    )


def test_models_lists_the_unlocked_model_and_extractive(server: dict[str, Any]) -> None:
    ids = [m.id for m in client(server).models.list()]
    assert MODEL in ids and "extractive" in ids


def test_chat_completion_with_sources(server: dict[str, Any]) -> None:
    done = client(server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the travel budget for 2027?"}],
        max_tokens=24,
    )
    extra = done.model_extra or {}
    assert done.model == MODEL and extra["mode"] == "generative"
    sources = extra["sources"]
    assert sources and all(s["group"] in ("finance", "public") for s in sources)
    assert {"document", "page_start", "section", "snippet"} <= set(sources[0])
    assert "text" not in sources[0]  # API clients get snippets, not whole passages
    assert any("48,000" in s["snippet"] for s in sources)
    assert done.usage is not None and 0 < done.usage.completion_tokens <= 24


def test_streaming_chat_completion(server: dict[str, Any]) -> None:
    stream = client(server, "carol").chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "How many days of annual leave do we get?"}],
        max_tokens=16,
        stream=True,
    )
    chunks = list(stream)
    first = chunks[0].model_extra or {}
    last = chunks[-1].model_extra or {}
    assert first["sources"] and all(s["group"] in ("hr", "public") for s in first["sources"])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert last["mode"] == "generative" and chunks[-1].choices[0].finish_reason == "stop"
    assert len(chunks) >= 3 and isinstance(text, str)


def test_extractive_model_name_answers_without_a_model(server: dict[str, Any]) -> None:
    done = client(server).chat.completions.create(
        model="extractive",
        messages=[{"role": "user", "content": "When does the canteen open?"}],
    )
    extra = done.model_extra or {}
    assert extra["mode"] == "extractive" and "Extractive" in extra["label"]
    assert "11:30" in (done.choices[0].message.content or "")


def test_search_endpoint_filters_by_group(server: dict[str, Any]) -> None:
    r = httpx.post(
        server["url"] + "/v1/search",
        json={"query": "travel budget flights approval", "limit": 5},
        headers={"Authorization": "Bearer " + server["keys"]["carol"]},
    )
    assert r.status_code == 200
    assert all(p["group"] in ("hr", "public") for p in r.json()["data"])


def test_bad_key_is_401(server: dict[str, Any]) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        client(server, key="kapp_" + "A" * 43).models.list()
    assert info.value.status_code == 401
    r = httpx.get(server["url"] + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "AUTH_FAILED"


def test_every_bad_key_gets_the_same_401_and_the_audit_log_the_reason(
    server: dict[str, Any],
) -> None:
    """A revoked key, or the key of a disabled account, must not tell its holder anything the
    holder of a made-up key does not learn (whose account it is, that it was ever valid)."""
    runtime = server["runtime"]
    users = runtime.app.users
    for name in ("dave", "erin"):
        users.add_user(name, role="staff", groups=["hr"], password=PASSWORD, now=NOW)
    revoked = users.issue_token("dave", now=NOW)
    users.revoke_tokens("dave")
    disabled = users.issue_token("erin", now=NOW)
    users.disable("erin")
    keys = ("kapp_" + "A" * 43, revoked, disabled, "not-a-key")
    answers = [
        httpx.get(server["url"] + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        for key in keys
    ]
    assert {r.status_code for r in answers} == {401}
    assert len({r.content for r in answers}) == 1 and b"erin" not in answers[2].content
    audited = [e for e in runtime.app.secure.audit.tail(20) if e.action == "api.auth"][-4:]
    assert [e.reason for e in audited] == [
        "TOKEN_UNKNOWN",
        "TOKEN_REVOKED",
        "ACCOUNT_DISABLED",
        "TOKEN_MALFORMED",
    ]


def test_role_not_allowed_is_403_with_reason(server: dict[str, Any]) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:
        client(server, "admin").chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "canteen"}]
        )
    assert info.value.status_code == 403
    assert json.loads(info.value.response.text)["error"]["code"] == "ROLE_DENIED"


def test_bad_request_is_400(server: dict[str, Any]) -> None:
    r = httpx.post(
        server["url"] + "/v1/chat/completions",
        json={"model": "auto", "messages": []},
        headers={"Authorization": "Bearer " + server["keys"]["bob"]},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_client_disconnect_cancels_the_generation(server: dict[str, Any]) -> None:
    rt = server["runtime"]
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": 512,
        "messages": [{"role": "user", "content": "Tell me everything about the travel budget."}],
    }
    headers = {"Authorization": "Bearer " + server["keys"]["bob"]}
    with httpx.stream(
        "POST", server["url"] + "/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert "sources" in first
    # the connection is closed now; the server must stop generating and record a cancel
    deadline = time.monotonic() + 30
    entry = None
    while time.monotonic() < deadline and entry is None:
        entries = [e for e in rt.app.secure.audit.tail(20) if e.action == "question.answer"]
        entry = next((e for e in entries if e.details.get("result") == "cancelled"), None)
        time.sleep(0.2)
    assert entry is not None, "a disconnected stream was not cancelled"


def test_limiter_refuses_when_the_queue_is_full() -> None:
    async def scenario() -> None:
        limiter = Limiter(concurrent=1, queue=0, queue_timeout_s=5)
        async with limiter.slot():
            with pytest.raises(Overloaded):
                async with limiter.slot():
                    pass  # pragma: no cover
        waiting = Limiter(concurrent=1, queue=1, queue_timeout_s=0.2)
        async with waiting.slot():
            with pytest.raises(Overloaded, match="within"):
                async with waiting.slot():
                    pass  # pragma: no cover

    asyncio.run(scenario())


def test_expired_policy_is_503_then_extractive(server: dict[str, Any]) -> None:
    """Runs last in this module: it expires the policy of the shared server."""
    server["clock"].now = NOW + 10 * 86400
    with pytest.raises(openai.InternalServerError) as info:
        client(server).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "travel budget"}]
        )
    assert info.value.status_code == 503
    body = json.loads(info.value.response.text)["error"]
    assert body["code"] == "MODEL_UNAVAILABLE" and body["reason"] == "EXPIRED"
    done = client(server).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "What is the travel budget?"}]
    )
    extra = done.model_extra or {}
    assert extra["mode"] == "extractive" and "expired" in extra["fallback_reason"].lower()
    assert "48,000" in (done.choices[0].message.content or "")
