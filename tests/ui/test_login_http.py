"""The login form over real HTTP (uvicorn on loopback, the app as `appliance serve` builds it):
every failure answers the same bytes, an address that keeps guessing is slowed, and the admin
whose password is being guessed still logs in from his usual address and his own browser.

Client addresses come from ``X-Forwarded-For``, which uvicorn trusts from loopback (as behind a
local reverse proxy)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.login_guard import DEVICE_COOKIE
from appliance.sessions import COOKIE_NAME
from tests.support.webui import csrf_token
from tests.ui.kit import PASSWORD, UiWorld, build

GENERIC = "The user name or password is wrong."
THROTTLED = "Too many failed logins. Try again later."


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, UiWorld]]:
    from appliance.serve.server import build_app
    from ingest.embed import Embedder
    from tests.support.server import running_server

    world = build(tmp_path_factory.mktemp("login"), Embedder.load("bundled", threads=1), docs={})
    now = int(world.runtime.clock())
    world.app.users.add_user("dis", role="staff", groups=[], password=PASSWORD, now=now)
    world.app.users.disable("dis")
    try:
        with running_server(build_app(world.runtime, ui=True)) as url:
            yield url, world
    finally:
        world.close()


def post_login(
    url: str, name: str, password: str, address: str, client: httpx.Client | None = None
) -> httpx.Response:
    own = client or httpx.Client(base_url=url)
    try:
        form = own.get("/login", headers={"X-Forwarded-For": address})  # its CSRF token
        return own.post(
            "/login",
            data={"username": name, "password": password, "csrf": csrf_token(form.text)},
            headers={"X-Forwarded-For": address},
            follow_redirects=False,
        )
    finally:
        if client is None:
            own.close()


def page(response: httpx.Response) -> bytes:
    """The body, with the values of hidden form fields blanked (a per-request anti-CSRF token
    may live there; everything else must be the same bytes)."""
    return re.sub(rb'(<input type="hidden"[^>]*?value=")[^"]*', rb"\1", response.content)


def reasons(world: UiWorld, since: int) -> list[tuple[str, str, str]]:
    entries = [e for e in world.app.secure.audit.tail(500) if e.seq > since]
    return [(e.actor, e.outcome, e.reason) for e in entries if e.action == "session.login"]


def last_seq(world: UiWorld) -> int:
    return world.app.secure.audit.tail(1)[0].seq


def test_every_failure_is_the_same_response(served: tuple[str, UiWorld]) -> None:
    url, world = served
    for i in range(5):  # hana's account is now delayed for clients not recognised for it
        post_login(url, "hana", f"wrong guess {i:04}", f"192.0.2.{i + 1}")
    start = last_seq(world)
    attempts = [
        ("nobody", PASSWORD),  # no such account
        ("fred", "not fred's password"),  # wrong password
        ("dis", PASSWORD),  # disabled, with the right password
        ("hana", PASSWORD),  # delayed, with the right password, from a new address
        ("../etc/passwd", PASSWORD),  # not even a valid name
    ]
    responses = [
        post_login(url, name, pw, f"198.51.100.{i + 1}") for i, (name, pw) in enumerate(attempts)
    ]
    assert {r.status_code for r in responses} == {401}
    assert len({page(r) for r in responses}) == 1
    assert GENERIC.encode() in responses[0].content
    for r in responses:
        set_cookies = r.headers.get_list("set-cookie")  # only the form's fresh CSRF token
        assert all(c.startswith("kapp_login_csrf=") for c in set_cookies), set_cookies
        assert r.headers["cache-control"] == "no-store"
    assert reasons(world, start) == [
        ("user:nobody", "refused", "UNKNOWN_USER"),
        ("user:fred", "refused", "WRONG_PASSWORD"),
        ("user:dis", "refused", "ACCOUNT_DISABLED"),
        ("user:hana", "refused", "ACCOUNT_DELAYED"),
        ("user:(invalid name)", "refused", "INVALID_NAME"),
    ]


def test_twenty_guesses_from_one_address_do_not_lock_out_the_admin(
    served: tuple[str, UiWorld],
) -> None:
    url, world = served
    home_address, attacker = "203.0.113.10", "198.51.100.66"
    assert post_login(url, "root", PASSWORD, home_address).status_code == 303  # a usual login
    with httpx.Client(base_url=url) as laptop:  # root's own browser, which is at X today
        assert post_login(url, "root", PASSWORD, attacker, laptop).status_code == 303
        assert DEVICE_COOKIE in laptop.cookies and COOKIE_NAME in laptop.cookies
        laptop.cookies.delete(COOKIE_NAME)  # logged out; the device cookie stays
        start = last_seq(world)
        answers = [
            post_login(url, "root", f"guess number {i:04}", attacker).content for i in range(20)
        ]
        assert all(GENERIC.encode() in a or THROTTLED.encode() in a for a in answers)
        # the address is slowed down (which answers are refused depends on the real clock: an
        # attempt after a doubling wait has passed reaches the password check again)
        assert sum(THROTTLED.encode() in a for a in answers[10:]) >= 6
        assert world.app.users.get("root").is_locked(int(world.runtime.clock()))

        stranger = post_login(url, "root", PASSWORD, "192.0.2.77")  # right password, new place
        assert stranger.status_code == 401 and GENERIC.encode() in stranger.content
        at_home = post_login(url, "root", PASSWORD, home_address)  # at once, no waiting
        assert at_home.status_code == 303 and at_home.cookies.get(COOKIE_NAME)
        own_browser = post_login(url, "root", PASSWORD, attacker, laptop)  # throttled address
        assert own_browser.status_code == 303
    seen = reasons(world, start)
    # ten (a few more if a doubling wait had passed: the clock is real) reached the password
    # check; the refused rest is audited once a minute, not per attempt
    guesses = [r for _, _, r in seen[:-3]]
    assert guesses[:10] == ["WRONG_PASSWORD"] * 10 and guesses.count("WRONG_PASSWORD") < 14
    assert guesses.count("CLIENT_THROTTLED") == 1
    assert seen[-3:] == [
        ("user:root", "refused", "ACCOUNT_DELAYED"),
        ("user:root", "ok", ""),
        ("user:root", "ok", ""),
    ]


def test_the_device_cookie_is_private_to_the_login_form(served: tuple[str, UiWorld]) -> None:
    url, _ = served
    response = post_login(url, "fred", PASSWORD, "203.0.113.40")
    cookies: Any = response.headers.get_list("set-cookie")
    (device,) = [c for c in cookies if c.startswith(DEVICE_COOKIE + "=")]
    assert "HttpOnly" in device and "SameSite=strict" in device and "Path=/login" in device


def test_by_default_no_client_chooses_its_own_address(tmp_path: Path) -> None:
    """With the default settings no proxy is trusted: a client (here on loopback, where a TCP
    forwarder or a local user would be) that writes X-Forwarded-For is still seen, throttled
    and audited at its real address (found by an outside-style review: the old default
    believed loopback, so rotating the header escaped the throttle and forged audit entries)."""
    from appliance.config_serving import ServeSettings
    from appliance.serve.server import build_app, proxy_options
    from ingest.embed import Embedder
    from tests.support.server import running_server

    assert ServeSettings().trusted_proxies == []
    world = build(tmp_path, Embedder.load("bundled", threads=1), docs={})
    try:
        options = proxy_options(ServeSettings())
        with running_server(build_app(world.runtime, ui=True), **options) as url:
            start = last_seq(world)
            claimed = [f"10.6.6.{i}" for i in range(1, 13)]  # a new address for every guess
            answers = [post_login(url, "fred", f"guess {a}", a).content for a in claimed]
        entries = [e for e in world.app.secure.audit.tail(100) if e.seq > start]
        clients = {e.details.get("client") for e in entries if e.action == "session.login"}
        assert clients == {"127.0.0.1"}
        assert THROTTLED.encode() in answers[-1]  # one address, so the throttle applies
    finally:
        world.close()
