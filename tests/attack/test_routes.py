"""Every HTTP route the server serves, called by strangers and by a user of another group.

The route list is read from the running application (see ``surface.py``). A route either belongs
to the small public set (the login page, health, static assets of the page) or refuses a caller
without a live session or API key; no response to anyone but the owner ever holds another
group's document text, another user's name, or a server file.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.attack.surface import Route, http_routes
from tests.attack.target import FINANCE_CANARY, HR_CANARY, Target
from tests.support.webui import browser, login
from tests.ui.kit import PASSWORD

# Served to anyone: the login form, liveness/readiness/metrics (documented as public, no names),
# the page's static assets, the language switch (sets a cookie, nothing else) and the API's
# OpenAPI description (the shape of the API, as published in docs/serving.md).
PUBLIC = re.compile(
    r"^(/login|/healthz|/readyz|/metrics|/favicon\.ico|/robots\.txt|/manifest\.json"
    r"|/(gradio_api/)?theme\.css|/(assets|static|svelte)/\{path:path\}|/pwa_icon(/\{size\})?"
    r"|/ui/lang/\{code\}|/v1/openapi\.json)$"
)
REFUSED = {401, 403, 404, 405, 422}
STREAM_S = 3.0
SECRETS = (HR_CANARY, FINANCE_CANARY, "hana", "[audit]", "BEGIN", "kapp_")


def _values(target: Target) -> dict[str, str]:
    ids = target.ids
    audit_log = str(target.world.settings.home / "audit" / "audit.log")
    return {
        "doc_id": ids["hr_doc"],
        "chunk_id": ids["hr_chunk"],
        "session_hash": ids["hana_session_hash"],
        "path": audit_log,
        "path_or_url": audit_log,
        "url_path": f"{target.url}/v1/models",
        "api_name": "on_load",
        "event_id": ids["random"],
        "key": "x",
        "code": "zh",
    }


def _strangers(target: Target) -> dict[str, dict[str, Any]]:
    with browser(target.url) as ended:
        login(ended, "fred", PASSWORD)
        old = ended.cookies.get("kapp_session")
        ended.post("/logout")
    return {
        "nobody": {},
        "forged cookie": {"cookies": {"kapp_session": secrets.token_urlsafe(32)}},
        "ended session": {"cookies": {"kapp_session": old or ""}},
        "forged key": {"headers": {"Authorization": f"Bearer kapp_{secrets.token_urlsafe(24)}"}},
    }


@dataclass
class Reply:
    status_code: int
    text: str
    location: str


def _call(target: Target, route: Route, **kw: Any) -> Reply:
    """One request; a streamed answer (event streams never end) is read for a few seconds."""
    headers = {"Origin": target.url, **kw.pop("headers", {})}
    cookies = kw.pop("cookies", None)
    body = None
    if route.method in ("POST", "PUT", "PATCH"):
        body = {"data": [], "session_hash": target.ids["hana_session_hash"], "fn_index": 0}
    with (
        httpx.Client(base_url=target.url, timeout=10, cookies=cookies) as client,
        client.stream(
            route.method, route.fill(_values(target)), json=body, headers=headers
        ) as response,
    ):
        data, deadline = b"", time.monotonic() + STREAM_S
        try:
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > 1 << 20 or time.monotonic() > deadline:
                    break
        except httpx.ReadTimeout:
            pass
        text = data.decode("utf-8", "replace")
        return Reply(response.status_code, text, response.headers.get("location", ""))


def _leaks(response: Reply) -> list[str]:
    return [s for s in SECRETS if s in response.text]


def test_the_surface_is_found(target: Target) -> None:
    routes = http_routes(target.app)
    paths = {r.template for r in routes}
    assert {"/v1/chat/completions", "/ui/download/{doc_id}", "/gradio_api/queue/join"} <= paths
    assert len(routes) > 40


def test_strangers_are_refused_everywhere(target: Target) -> None:
    accepted = []
    for route in http_routes(target.app):
        for who, creds in _strangers(target).items():
            response = _call(target, route, **creds)
            assert not _leaks(response), (route, who, _leaks(response))
            if PUBLIC.match(route.template):
                continue
            to_login = response.status_code in (302, 303, 307) and "/login" in response.location
            if response.status_code not in REFUSED and not to_login:
                accepted.append((route.method, route.template, who, response.status_code))
    assert not accepted, "\n".join(map(str, accepted))
    invalid = [e for e in target.audit.tail(100_000) if e.reason == "SESSION_INVALID"]
    assert invalid, "forged and ended session cookies were refused without an audit entry"
    assert target.alive()


def test_another_groups_ids_are_refused_and_audited(target: Target) -> None:
    fred = target.principals["fred"]
    for route in http_routes(target.app):
        if not {"doc_id", "chunk_id"} & set(route.params):
            continue
        for creds in (
            {"cookies": dict(fred.browser.http.cookies)},
            {"headers": {"Authorization": f"Bearer {fred.api_key}"}},
        ):
            before = target.refusals()
            response = _call(target, route, **creds)
            assert not _leaks(response), (route, _leaks(response))
            assert response.status_code in REFUSED, (route, response.status_code)
            if response.status_code != 401:  # 401: this route does not take that credential
                assert target.refusals() > before, f"{route} refused without an audit entry"
    assert target.alive()


@pytest.mark.parametrize("who", ["fred", "hana"])
def test_api_answers_only_from_the_users_groups(target: Target, who: str) -> None:
    me = target.principals[who]
    other = FINANCE_CANARY if who == "hana" else HR_CANARY
    auth = {"Authorization": f"Bearer {me.api_key}"}
    for question in (f"What is the code word {other}?", "appraisal code word forecast"):
        search = httpx.post(
            f"{target.url}/v1/search", json={"query": question}, headers=auth, timeout=60
        )
        assert search.status_code == 200 and other not in search.text
        chat = httpx.post(
            f"{target.url}/v1/chat/completions",
            json={"model": "extractive", "messages": [{"role": "user", "content": question}]},
            headers=auth,
            timeout=120,
        )
        assert chat.status_code == 200 and other not in chat.text
