"""The web UI against attacks from another login or another site, on a real server (issue 12):

- a page's ``session_hash`` belongs to the login that opened it: another login (or none) sending
  it to any event, the queue stream, the heartbeat or cancel is refused and audited, and sees
  nothing of the page's answers or passages;
- the login form needs its CSRF token; state-changing requests from another origin, or with a
  session cookie but no Origin/Referer, are refused (the bearer-token API is not affected);
- the deep-link route (which wrote a page's rendered state to disk) answers 404 and writes
  nothing; uploads wait in a private memory folder and are deleted when not submitted in time.
"""

from __future__ import annotations

import inspect
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import pytest
from starlette.requests import Request

from appliance.serve.server import build_app
from appliance.sessions import COOKIE_NAME
from tests.ingest.test_embed import bundled_embedder
from tests.support.fixtures import find_patterns
from tests.support.server import running_server
from tests.support.webui import Page, browser, csrf_token, login
from tests.ui.kit import PASSWORD, UiWorld, build
from ui.app import build_blocks, i18n
from ui.cache import on_memory_fs

pytestmark = pytest.mark.slow
QUESTION = "What is the travel budget for 2027?"
SECRET = "48,000"  # in fred's answer and passages (finance/budget.md); hana may not see it
MAX_AGE_S = 2


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, UiWorld]]:
    world = build(
        tmp_path_factory.mktemp("websec"),
        bundled_embedder(),
        serve={"ui_upload_max_age_s": MAX_AGE_S},
    )
    try:
        with running_server(build_app(world.runtime, ui=True)) as url:
            yield url, world
    finally:
        world.close()


def signed_in(url: str, name: str) -> httpx.Client:
    client = browser(url)
    assert login(client, name, PASSWORD).status_code == 303
    return client


def last_seq(world: UiWorld) -> int:
    return int(world.app.secure.audit.tail(1)[0].seq)


def denials(world: UiWorld, reason: str, *, after: int = 0) -> list[Any]:
    return [
        e
        for e in world.app.secure.audit.tail(500)
        if e.action == "access.denied" and e.reason == reason and e.seq > after
    ]


def test_another_login_gets_nothing_of_a_page(served: tuple[str, UiWorld]) -> None:
    url, world = served
    start = last_seq(world)
    fred = Page(signed_in(url, "fred"))
    for fn in fred.load_fns():
        assert fred.call(fn, []).completed is not None
    asked = fred.call(fred.fn("ask"), [QUESTION, [], None])
    assert SECRET in asked.raw  # the page's state now holds the answer and its passages

    hana = Page(signed_in(url, "hana"), session_hash=fred.session_hash)
    attempts = [
        hana.call(hana.fn("ask"), ["What else?", [], None]),
        hana.call(hana.fn("new-conversation"), []),
        hana.call(hana.fn("thumbs-up"), [[]]),
        hana.call(hana.fn("thumbs-down"), [[]]),
        hana.call(hana.fn("history-refresh"), []),
        hana.call(hana.fn("history-load"), [None]),
        *(hana.call(fn, []) for fn in hana.load_fns()),
        hana.listen(),  # the page's event stream
    ]
    for outcome in attempts:
        assert outcome.status == 403, outcome.raw[:300]
        assert SECRET not in outcome.raw and "budget" not in outcome.raw
    beat = hana.client.get(f"/gradio_api/heartbeat/{fred.session_hash}")
    cancel = hana.client.post(
        "/gradio_api/cancel",
        json={"session_hash": fred.session_hash, "fn_index": fred.fn("ask"), "event_id": "x"},
    )
    assert beat.status_code == cancel.status_code == 403
    stranger = httpx.Client(base_url=url, headers={"Origin": url})
    nobody = stranger.get("/gradio_api/queue/data", params={"session_hash": fred.session_hash})
    assert nobody.status_code == 401 and SECRET not in nobody.text

    refused = denials(world, "SESSION_HASH_MISMATCH", after=start)
    # once per page and login, not per try; the stranger without any session is turned away
    # by the session gate before the page check, which audits only presented credentials
    assert [e.actor for e in refused] == ["user:hana"]
    again = fred.call(fred.fn("ask"), ["When does the canteen open?", [], None])
    assert QUESTION in again.data[0] and "11:30" in again.raw  # fred's page is intact


def test_a_page_named_twice_is_refused(served: tuple[str, UiWorld]) -> None:
    """The guard must check the page Gradio serves: naming one's own page and another's in
    one request (query or JSON body) would pass a check of the first while Gradio, like
    Starlette, takes the last (found by an outside review)."""
    url, _ = served
    fred = Page(signed_in(url, "fred"))
    for fn in fred.load_fns():
        assert fred.call(fn, []).completed is not None
    hana = Page(signed_in(url, "hana"))
    for fn in hana.load_fns():
        assert hana.call(fn, []).completed is not None  # hana's own page is bound to her
    both = [("session_hash", hana.session_hash), ("session_hash", fred.session_hash)]
    for params in (both, both[::-1]):
        with hana.client.stream("GET", "/gradio_api/queue/data", params=params) as stream:
            assert stream.status_code == 400
            assert SECRET not in stream.read().decode()
    body = (
        f'{{"data": ["What else?", [], null], "fn_index": {hana.fn("ask")}, '
        f'"session_hash": "{hana.session_hash}", "session_hash": "{fred.session_hash}"}}'
    )
    joined = hana.client.post(
        "/gradio_api/queue/join", content=body, headers={"Content-Type": "application/json"}
    )
    assert joined.status_code == 400 and SECRET not in joined.text
    asked = fred.call(fred.fn("ask"), [QUESTION, [], None])
    assert SECRET in asked.raw  # fred's own page still works


def test_every_event_handler_checks_the_page_owner(served: tuple[str, UiWorld]) -> None:
    """Each handler of the page, called directly as Gradio would (so without the guard in
    front of the queue), refuses a page that belongs to another login before using its state."""
    _, world = served
    ctx = world.runtime.extras["ui"]
    now = ctx.now()
    fred_sid, _ = ctx.sessions.login("fred", PASSWORD, now=now)
    hana_sid, _ = ctx.sessions.login("hana", PASSWORD, now=now)
    page = "fred-page-0001"
    assert ctx.bindings.claim(page, fred_sid, now=now)
    blocks = build_blocks(ctx, i18n())
    handlers = [b.fn for b in blocks.fns.values()]
    assert len(handlers) >= 20
    for fn in handlers:
        assert fn is not None
        params = inspect.signature(fn).parameters.values()
        assert any(p.annotation in (gr.Request, "gr.Request") for p in params), fn.__name__
        args = [None] * (len(inspect.signature(fn).parameters) - 1)
        with pytest.raises(gr.Error, match="another sign-in"):
            result = fn(*args, _request(hana_sid, page))
            if inspect.isgenerator(result):
                list(result)


def _request(session_id: str, session_hash: str) -> gr.Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/gradio_api/queue/join",
        "headers": [(b"cookie", f"{COOKIE_NAME}={session_id}".encode())],
        "query_string": b"",
        "client": ("127.0.0.1", 5000),
    }
    return gr.Request(request=Request(scope), session_hash=session_hash)


def test_login_form_needs_its_csrf_token(served: tuple[str, UiWorld]) -> None:
    url, world = served
    start = last_seq(world)
    client = browser(url)
    form = client.get("/login")
    token = csrf_token(form.text)
    assert client.cookies.get("kapp_login_csrf") == token
    data = {"username": "fred", "password": PASSWORD}
    for sent in ({}, {"csrf": ""}, {"csrf": "x" * 43}):
        refused = client.post("/login", data={**data, **sent})
        assert refused.status_code == 403 and COOKIE_NAME not in client.cookies
        assert csrf_token(refused.text)  # a fresh form to try again
    elsewhere = httpx.Client(base_url=url)  # a forged form: the field without the cookie
    assert elsewhere.post("/login", data={**data, "csrf": token}).status_code == 403
    assert len(denials(world, "CSRF_TOKEN", after=start)) == 4
    wrong = client.post("/login", data={**data, "password": "wrong password!", "csrf": token})
    assert wrong.status_code == 401
    again = client.post("/login", data={**data, "csrf": csrf_token(wrong.text)})
    assert again.status_code == 303 and COOKIE_NAME in client.cookies


def test_cross_site_requests_are_refused(served: tuple[str, UiWorld]) -> None:
    url, world = served
    start = last_seq(world)
    fred = signed_in(url, "fred")
    evil = "http://evil.example"
    for headers in (
        {"Origin": evil},
        {"Origin": "null"},
        {"Origin": url.replace("127.0.0.1", "localhost")},
    ):
        assert fred.post("/logout", headers=headers).status_code == 403
    no_origin = httpx.Client(base_url=url, cookies=fred.cookies)
    assert no_origin.post("/logout").status_code == 403
    assert no_origin.post("/logout", headers={"Referer": f"{evil}/page"}).status_code == 403
    join = {"data": [], "fn_index": 0, "session_hash": "abc"}
    joined = fred.post("/gradio_api/queue/join", json=join, headers={"Origin": evil})
    assert joined.status_code == 403
    upload = fred.post(
        "/gradio_api/upload", files={"files": ("x.txt", b"planted")}, headers={"Origin": evil}
    )
    assert upload.status_code == 403
    assert fred.get("/").status_code == 200  # the session survived every attempt
    assert len(denials(world, "CSRF_ORIGIN", after=start)) == 6
    assert [e.actor for e in denials(world, "CSRF_NO_ORIGIN", after=start)] == ["user:fred"]
    token = world.app.users.issue_token("fred", now=int(time.time()))
    api = no_origin.post(  # a bearer-token client: cookies and origins do not matter
        "/v1/search",
        json={"query": "travel budget", "limit": 2},
        headers={"Authorization": f"Bearer {token}", "Origin": evil},
    )
    assert api.status_code == 200
    own = fred.post("/logout", headers={"Referer": f"{url}/"})
    assert own.status_code == 303 and fred.get("/").status_code == 303


def test_deep_links_write_and_return_nothing(served: tuple[str, UiWorld]) -> None:
    url, world = served
    fred = Page(signed_in(url, "fred"))
    assert SECRET in fred.call(fred.fn("ask"), [QUESTION, [], None]).raw
    r = fred.client.get("/gradio_api/deep_link", params={"session_hash": fred.session_hash})
    assert r.status_code == 404 and SECRET not in r.text
    cache = world.runtime.extras["ui"].cache.path
    roots = [cache, world.settings.home]
    assert not [p for root in roots for p in root.rglob("deep_links")]
    assert find_patterns(roots, [SECRET.encode()]) == []


def test_uploads_wait_in_private_memory_and_expire(
    served: tuple[str, UiWorld], tmp_path: Path
) -> None:
    url, world = served
    cache = world.runtime.extras["ui"].cache.path
    assert os.environ["GRADIO_TEMP_DIR"] == str(cache)
    assert str(cache).startswith("/dev/shm/") and on_memory_fs(cache)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    page = Page(signed_in(url, "fred"))
    for fn in page.load_fns():  # the page's own groups become the upload choices
        page.call(fn, [])
    kept, left = tmp_path / "kept.md", tmp_path / "left.md"
    kept.write_text("# Kept\n\nThe kept upload is about the parking rules.\n")
    left.write_text("# Left\n\nThis upload is never submitted.\n")
    submitted, abandoned = page.upload(kept), page.upload(left)
    for data in (submitted, abandoned):
        assert Path(data["path"]).is_file() and Path(data["path"]).is_relative_to(cache)
    done = page.call(page.fn("upload-submit"), ["finance", [submitted]])
    assert done.completed is not None and done.completed["success"], done.raw[-500:]
    assert not Path(submitted["path"]).exists()
    deadline = time.monotonic() + MAX_AGE_S + 10
    while Path(abandoned["path"]).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(abandoned["path"]).exists(), "an unsubmitted upload stayed in the cache"


def test_other_local_origins_cannot_read_the_ui_and_it_cannot_be_framed(
    served: tuple[str, UiWorld],
) -> None:
    """Gradio grants any localhost origin credentialed reads; another port of the same host is
    the same site, so the session cookie went along (found by an outside-style review)."""
    url, _ = served
    client = signed_in(url, "fred")
    for path in ("/config", "/gradio_api/info", "/gradio_api/user"):
        for evil in ("http://127.0.0.1:9999", "http://localhost:3000"):
            got = client.get(path, headers={"Origin": evil})
            assert "access-control-allow-origin" not in got.headers, (path, evil, got.headers)
            assert "access-control-allow-credentials" not in got.headers
        preflight = client.options(
            path,
            headers={"Origin": "http://127.0.0.1:9999", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in preflight.headers
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "same-origin"  # Origin stays set on POSTs
    assert page.headers["x-content-type-options"] == "nosniff"
    login_page = httpx.get(f"{url}/login")
    assert "form-action 'self'" in login_page.headers["content-security-policy"]  # its own


def test_refusals_of_named_values_are_audited_by_the_handlers(
    served: tuple[str, UiWorld], tmp_path: Path
) -> None:
    """Another user's conversation id or a group one may not upload into used to be refused by
    Gradio's choice check before any handler ran, so nothing was audited (outside review)."""
    url, world = served
    fred = Page(signed_in(url, "fred"))
    for fn in fred.load_fns():
        fred.call(fn, [])
    asked = fred.call(fred.fn("ask"), [QUESTION, [], None])
    assert asked.ok
    (conversation,) = [c.id for c in world.app.conversations.history(_user_id(world, "fred"))][:1]
    hana = Page(signed_in(url, "hana"))
    for fn in hana.load_fns():
        hana.call(fn, [])
    start = last_seq(world)
    stolen = hana.call(hana.fn("history-load"), [conversation])
    assert not stolen.ok and SECRET not in stolen.raw
    source = tmp_path / "note.md"
    source.write_text("# Note\n\nAn upload aimed at another group.\n")
    upload = hana.upload(source)
    wrong_group = hana.call(hana.fn("upload-submit"), ["finance", [upload]])
    assert not wrong_group.ok and not Path(upload["path"]).exists()
    refused = [
        (e.actor, e.object)
        for e in world.app.secure.audit.tail(50)
        if e.seq > start and e.action == "access.denied"
    ]
    assert ("user:hana", "ui:on_load") in refused and ("user:hana", "ui:on_upload") in refused
    assert not any(d.group == "finance" and "note" in d.rel_path for d in _docs(world))
    assert "Traceback" not in stolen.raw + wrong_group.raw


def _user_id(world: UiWorld, name: str) -> str:
    return str(world.app.users.get(name).id)


def _docs(world: UiWorld) -> list[Any]:
    return list(world.runtime.knowledge.registry.documents())
