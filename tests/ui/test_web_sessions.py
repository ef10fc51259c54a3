"""Web session cookies and lifetimes on a real server (issue 12): the Secure flag behind a
TLS-terminating proxy (``serve.behind_tls_proxy``, or ``X-Forwarded-Proto: https`` from a trusted
proxy address only), and the idle timeout, which the page's background polls do not reset."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from appliance.serve.server import build_app, proxy_options
from tests.ingest.test_embed import bundled_embedder
from tests.support.server import running_server
from tests.support.webui import Page, browser, csrf_token, login
from tests.ui.kit import PASSWORD, UiWorld, build

pytestmark = pytest.mark.slow
IDLE_MIN = 30


class Clock:
    """Real time plus an offset that tests move forward (the UI reads ``runtime.clock``)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiWorld]:
    world = build(
        tmp_path_factory.mktemp("websessions"),
        bundled_embedder(),
        docs={},
        serve={"session_idle_minutes": IDLE_MIN},
    )
    world.runtime.clock = Clock()
    try:
        yield world
    finally:
        world.close()


@pytest.fixture(scope="module")
def app(world: UiWorld) -> Any:
    return build_app(world.runtime, ui=True)


def cookie_flags(response: httpx.Response, name: str) -> str:
    found = [v for v in response.headers.get_list("set-cookie") if v.startswith(f"{name}=")]
    assert found, response.headers
    return found[0].lower()


def test_cookies_are_secure_behind_a_tls_proxy(
    world: UiWorld, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_server(app) as url:
        plain = browser(url)
        assert "secure" not in cookie_flags(plain.get("/login"), "kapp_login_csrf")
        monkeypatch.setattr(world.settings.serve, "behind_tls_proxy", True)
        proxied = httpx.Client(base_url=url, headers={"Origin": url.replace("http:", "https:")})
        form = proxied.get("/login")
        assert "; secure" in cookie_flags(form, "kapp_login_csrf")
        token = csrf_token(form.text)
        data = {"username": "fred", "password": PASSWORD, "csrf": token}
        # the browser's origin is https now, and it sends the Secure cookie over https
        done = proxied.post("/login", data=data, headers={"Cookie": f"kapp_login_csrf={token}"})
        assert done.status_code == 303
        flags = cookie_flags(done, "kapp_session")
        assert "; secure" in flags and "httponly" in flags and "samesite=strict" in flags


@pytest.mark.parametrize(("trusted", "secure"), [(["127.0.0.1"], True), ([], False)])
def test_forwarded_https_counts_only_from_a_trusted_proxy(
    world: UiWorld, app: Any, monkeypatch: pytest.MonkeyPatch, trusted: list[str], secure: bool
) -> None:
    monkeypatch.setattr(world.settings.serve, "trusted_proxies", trusted)
    with running_server(app, **proxy_options(world.settings.serve)) as url:
        client = httpx.Client(base_url=url, headers={"X-Forwarded-Proto": "https"})
        form = client.get("/login")
        assert ("; secure" in cookie_flags(form, "kapp_login_csrf")) is secure
        token = csrf_token(form.text)
        data = {"username": "hana", "password": PASSWORD, "csrf": token}
        origin = url.replace("http", "https" if secure else "http")
        headers = {"Origin": origin, "Cookie": f"kapp_login_csrf={token}"}
        done = client.post("/login", data=data, headers=headers)
        assert done.status_code == 303
        assert ("; secure" in cookie_flags(done, "kapp_session")) is secure


def test_idle_sessions_end_and_polls_do_not_keep_them(world: UiWorld, app: Any) -> None:
    clock = world.runtime.clock
    with running_server(app) as url:
        client = browser(url)
        assert login(client, "fred", PASSWORD).status_code == 303
        page = Page(client)
        tick = next(
            int(d["id"])
            for d in page.config["dependencies"]
            if any(t[1] == "tick" for t in d["targets"])
        )
        refresh = page.fn("history-refresh")
        clock.offset += (IDLE_MIN - 5) * 60
        assert page.call(refresh, []).completed["success"]  # activity: the idle time restarts
        for _ in range(2):
            clock.offset += (IDLE_MIN - 5) * 60 / 2
            assert page.call(tick, []).completed["success"]  # the upload table's poll
        clock.offset += 6 * 60  # 31 minutes after the last activity, 6 after the last poll
        ended = page.call(refresh, [])
        assert ended.status == 401 and "session has ended" in ended.raw.lower()
        assert client.get("/").headers["location"] == "/login?ended=1"
