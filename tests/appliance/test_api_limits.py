"""Request bodies on the API: who is asking is known before a byte is read, and size is capped.

A real uvicorn server on loopback (in a thread of this process, so the server's memory is this
process's RSS, sampled while a request runs) over a real appliance without a model (review 12,
item 5).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import psutil
import pytest

from appliance.serve.server import build_app
from tests.ingest.test_embed import bundled_embedder
from tests.support.server import running_server
from tests.support.serving import NOW, Clock, World, build_world, open_runtime

BIG = 100 * 1024 * 1024  # 100 MiB
PIECE = 1024 * 1024
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("api-limits")
    return build_world(root, model_dir=None, embedder=bundled_embedder())


@pytest.fixture(scope="module")
def server(world: World) -> Iterator[dict[str, Any]]:
    rt = open_runtime(world, clock=Clock(NOW + 10), embedder=bundled_embedder())
    key = rt.app.users.issue_token("bob", now=NOW)
    with running_server(build_app(rt, ui=False)) as url:
        yield {"url": url, "key": key, "runtime": rt}
    rt.close()


def auth(server: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": "Bearer " + server["key"]}


def flood(total: int = BIG) -> Iterator[bytes]:
    """A JSON-looking body of ``total`` bytes, made piece by piece (never held whole here)."""
    head = b'{"model": "extractive", "messages": [{"role": "user", "content": "'
    yield head
    piece = b"a" * PIECE
    left = total - len(head)
    while left > 0:
        yield piece[:left]
        left -= PIECE


class PeakRss:
    """The largest RSS of this process (client, server and all) while the block runs."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.base = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def post_flood(url: str, headers: dict[str, str]) -> tuple[httpx.Response, float, float]:
    """(response, seconds, peak RSS growth in MiB) for a 100 MiB body."""
    start = time.monotonic()
    with PeakRss() as rss:
        response = httpx.post(url, content=flood(), headers=headers, timeout=60)
    return response, time.monotonic() - start, rss.growth_mb


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
def test_unauthenticated_flood_is_401_before_the_body_is_read(
    server: dict[str, Any], declared: bool
) -> None:
    headers = {"Content-Type": "application/json"}
    if declared:
        headers["Content-Length"] = str(BIG)
    response, seconds, growth = post_flood(server["url"] + CHAT, headers)
    assert (response.status_code, seconds < 10, growth < 8) == (401, True, True), (seconds, growth)
    assert response.json()["error"]["code"] == "AUTH_FAILED"
    assert httpx.get(server["url"] + "/healthz").status_code == 200  # the server still answers
    assert httpx.post(server["url"] + "/v1/search", json={"query": "x"}).status_code == 401


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
def test_authenticated_oversized_body_is_413(server: dict[str, Any], declared: bool) -> None:
    headers = {"Content-Type": "application/json", **auth(server)}
    if declared:
        headers["Content-Length"] = str(BIG)
    response, seconds, growth = post_flood(server["url"] + CHAT, headers)
    assert (response.status_code, seconds < 10, growth < 8) == (413, True, True), (seconds, growth)
    error = response.json()["error"]
    assert error["code"] == "BODY_TOO_LARGE" and error["type"] == "invalid_request_error"
    assert set(error) >= {"message", "type", "code", "param"}
    audit = [e for e in server["runtime"].app.secure.audit.tail(20) if e.action == "access.denied"]
    assert audit and audit[-1].reason == "BODY_TOO_LARGE" and audit[-1].actor == "user:bob"


def test_a_body_just_under_the_limit_is_read(server: dict[str, Any]) -> None:
    limit = server["runtime"].settings.serve.max_body_kb * 1024
    body = {"query": "canteen opening hours", "limit": 3}
    padded = json.dumps(body).encode()
    padded = padded[:-1] + b" " * (limit - len(padded)) + b"}"
    headers = {"Content-Type": "application/json", **auth(server)}
    ok = httpx.post(server["url"] + "/v1/search", content=padded, headers=headers)
    assert len(padded) == limit and ok.status_code == 200, ok.text
    over = httpx.post(server["url"] + "/v1/search", content=padded + b" ", headers=headers)
    assert over.status_code == 413


def test_too_many_or_too_long_messages_are_400_with_the_param(server: dict[str, Any]) -> None:
    limits = server["runtime"].settings.serve
    many = [{"role": "user", "content": "hi"}] * (limits.max_messages + 1)
    long = [
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "x" * (limits.max_message_chars + 1)},
        {"role": "user", "content": "When does the canteen open?"},
    ]
    question = [{"role": "user", "content": "x" * 4001}]
    for messages, code, param in (
        (many, "TOO_MANY_MESSAGES", "messages"),
        (long, "MESSAGE_TOO_LONG", "messages[1].content"),
        (question, "QUESTION_TOO_LONG", "messages[0].content"),
    ):
        r = httpx.post(
            server["url"] + CHAT,
            json={"model": "extractive", "messages": messages},
            headers=auth(server),
        )
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["code"], error["param"], error["type"]) == (
            code,
            param,
            "invalid_request_error",
        )


def test_search_query_length_is_capped(server: dict[str, Any]) -> None:
    r = httpx.post(server["url"] + "/v1/search", json={"query": "x" * 4001}, headers=auth(server))
    assert r.status_code == 400 and r.json()["error"]["param"] == "query"


def test_normal_requests_still_work(server: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key=server["key"], max_retries=0)
    done = client.chat.completions.create(
        model="extractive", messages=[{"role": "user", "content": "When does the canteen open?"}]
    )
    assert "11:30" in (done.choices[0].message.content or "")
    chunks = list(
        client.chat.completions.create(
            model="extractive",
            messages=[{"role": "user", "content": "When does the canteen open?"}],
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "11:30" in text and chunks[-1].choices[0].finish_reason == "stop"
    assert [m.id for m in client.models.list()] == ["extractive"]
    assert httpx.get(server["url"] + "/v1/openapi.json").status_code == 200  # needs no key
