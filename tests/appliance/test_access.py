"""Document-level access: two staff users in disjoint groups never get a passage of the other
group, through the UI chat handler, the HTTP API, or direct requests for the other group's ids
(403, audited). Real home, real pipeline, Milvus Lite, bundled embedder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from fastapi.testclient import TestClient

from appliance.api.app import create_app
from appliance.errors import Forbidden
from appliance.sessions import COOKIE_NAME
from tests.support.webui import csrf_token
from tests.ui.kit import PASSWORD, UiWorld, build
from ui.app import mount_ui
from ui.pages.chat import ask_stream

QUESTIONS = [
    "What is the travel budget for 2027?",
    "How many days of annual leave does an employee have?",
    "What is the senior engineer salary band?",
    "How long does parental leave last?",
    "Who approves flights above 900 euros?",
    "Where do harassment complaints go?",
    "When are bonuses paid?",
    "When do unused leave days expire?",
    "What is the hardware budget?",
    "travel",
    "budget leave salary conduct",
    "年假有多少天",
    "When does the canteen open?",
    "euros",
]
ALLOWED = {"fred": {"finance", "public"}, "hana": {"hr", "public"}}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiWorld]:
    from ingest.embed import Embedder

    w = build(tmp_path_factory.mktemp("access"), Embedder.load("bundled", threads=1))
    yield w
    w.close()


@pytest.fixture(scope="module")
def client(world: UiWorld) -> Iterator[TestClient]:
    app = create_app(world.runtime)
    mount_ui(app, world.runtime)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


def _ids(world: UiWorld, group: str) -> tuple[list[str], list[str]]:
    docs = world.runtime.knowledge.registry.documents(group=group, status="indexed")
    chunks = [c for d in docs for c in world.runtime.knowledge.store.chunk_ids(d.doc_id)]
    return [d.doc_id for d in docs], chunks


def _login(client: TestClient, name: str) -> str:
    client.cookies.clear()
    data = {"username": name, "password": PASSWORD, "csrf": csrf_token(client.get("/login").text)}
    response = client.post("/login", data=data, follow_redirects=False)
    assert response.status_code == 303, response.text
    return str(response.cookies[COOKIE_NAME])


def _denials(world: UiWorld) -> int:
    return sum(e.action == "access.denied" for e in world.app.secure.audit.tail(10_000))


def test_chat_handler_returns_only_own_groups(world: UiWorld, client: TestClient) -> None:
    ctx = world.runtime.extras["ui"]
    seen: dict[str, set[str]] = {"fred": set(), "hana": set()}
    for name in seen:
        request = gr.Request(cookies={COOKIE_NAME: _login(client, name)}, headers={})
        for question in QUESTIONS:
            turns: list[dict[str, Any]] = []
            for turns in ask_stream(ctx, request, question, []):
                for source in turns[-1]["sources"]:
                    assert source["group"] in ALLOWED[name], (name, question, source)
            seen[name] |= {s["group"] for s in turns[-1]["sources"]}
            answer = turns[-1]["answer"]
            other = "48,000" if name == "hana" else "28 days"
            assert other not in answer
    assert seen["fred"] >= {"finance"} and seen["hana"] >= {"hr"}


def test_api_search_and_chat_return_only_own_groups(world: UiWorld, client: TestClient) -> None:
    now = int(world.runtime.clock())
    for name in ALLOWED:
        token = world.app.users.issue_token(name, now=now)
        headers = {"Authorization": f"Bearer {token}"}
        for question in QUESTIONS:
            found = client.post("/v1/search", json={"query": question}, headers=headers)
            assert found.status_code == 200, found.text
            assert {p["group"] for p in found.json()["data"]} <= ALLOWED[name]
        chat = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": QUESTIONS[0] + " " + QUESTIONS[1]}]},
            headers=headers,
        )
        assert chat.status_code == 200, chat.text
        text = str(chat.json())
        assert ("28 days" not in text) if name == "fred" else ("48,000" not in text)


def test_direct_requests_for_other_groups_ids_are_403_and_audited(
    world: UiWorld, client: TestClient
) -> None:
    hr_docs, hr_chunks = _ids(world, "hr")
    _fin_docs, fin_chunks = _ids(world, "finance")
    assert hr_chunks and fin_chunks
    before = _denials(world)
    _login(client, "fred")
    for chunk in hr_chunks:
        response = client.get(f"/ui/source/{chunk}")
        assert response.status_code == 403 and "leave" not in response.text.lower()
    for doc in hr_docs:
        assert client.get(f"/ui/download/{doc}").status_code == 403
    for bad in ("doc-missing:1:0", "nonsense", fin_chunks[0].rsplit(":", 2)[0] + ":99:0"):
        assert client.get(f"/ui/source/{bad}").status_code == 403
    assert _denials(world) - before == len(hr_chunks) + len(hr_docs) + 3
    own = client.get(f"/ui/source/{fin_chunks[0]}")
    assert own.status_code == 200 and own.json()["group"] == "finance"
    original = client.get(own.json()["download_url"])
    assert original.status_code == 200 and original.content.startswith(b"# ")
    assert "attachment" in original.headers["content-disposition"]


def test_access_service_refuses_and_audits_with_reason(world: UiWorld) -> None:
    access = world.runtime.extras["ui"].access
    hana = world.app.users.get("hana")
    fin_docs, fin_chunks = _ids(world, "finance")
    with pytest.raises(Forbidden):
        access.source_for(hana, fin_chunks[0])
    last = world.app.secure.audit.tail(1)[0]
    assert (last.action, last.actor, last.reason) == ("access.denied", "user:hana", "GROUP")
    with pytest.raises(Forbidden):
        access.original_for(hana, fin_docs[0])
    _public_docs, public_chunks = _ids(world, "public")
    assert access.source_for(hana, public_chunks[0]).group == "public"


def test_without_session_everything_is_refused(world: UiWorld, client: TestClient) -> None:
    _, fin_chunks = _ids(world, "finance")
    client.cookies.clear()
    assert client.get(f"/ui/source/{fin_chunks[0]}").status_code == 401
    page = client.get("/", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    client.cookies.set(COOKIE_NAME, "A" * 43)
    assert client.get("/", follow_redirects=False).headers["location"] == "/login?ended=1"
    token = csrf_token(client.get("/login").text)
    bad = client.post(
        "/login", data={"username": "fred", "password": "wrong password!", "csrf": token}
    )
    assert bad.status_code == 401 and COOKIE_NAME not in bad.cookies


def test_logged_in_page_and_logout(world: UiWorld, client: TestClient) -> None:
    sid = _login(client, "hana")
    assert client.get("/").status_code == 200
    own = {"Origin": "http://127.0.0.1"}  # the UI's own page posts the logout form
    assert client.post("/logout", headers=own, follow_redirects=False).status_code == 303
    ctx = world.runtime.extras["ui"]
    with pytest.raises(Exception):  # noqa: B017 - AuthError: the session is gone
        ctx.sessions.resolve(sid, now=int(world.runtime.clock()))


def test_history_is_owner_only(world: UiWorld, tmp_path: Path) -> None:
    ctx = world.runtime.extras["ui"]
    from appliance.conversations import Turn
    from appliance.errors import NotFound

    fred, hana, root = (world.app.users.get(n).id for n in ("fred", "hana", "root"))
    conv = ctx.conversations.start(fred, "travel", now=1)
    ctx.conversations.add_turn(fred, conv, Turn("q", "a", "qid-1"), now=1)
    with pytest.raises(NotFound):
        ctx.conversations.read(hana, conv)
    with pytest.raises(NotFound):
        ctx.conversations.read(root, conv)  # admins do not read others' history
