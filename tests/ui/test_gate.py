"""The session gate's two pure parts: which routes it leaves open, and how refusals are
coalesced in the audit log (the served behaviour is attacked in tests/attack)."""

from __future__ import annotations

import pytest

from ui.gate import COALESCE_S, RefusalLog, _open


@pytest.mark.parametrize(
    ("method", "path", "open_"),
    [
        ("GET", "/", True),
        ("GET", "/login", True),
        ("POST", "/login", True),
        ("POST", "/login/", False),  # Gradio's own login route
        ("POST", "/logout", True),
        ("GET", "/logout", False),  # Gradio's own logout route
        ("GET", "/healthz", True),
        ("GET", "/v1/models", True),
        ("GET", "/ui/download/x", True),
        ("GET", "/assets/index.js", True),
        ("GET", "/gradio_api/info", False),
        ("GET", "/gradio_api/user", False),
        ("GET", "/gradio_api/heartbeat/abc", False),
        ("POST", "/gradio_api/queue/join", False),
        ("GET", "/config", False),
        ("GET", "/openapi.json", False),
        ("GET", "/a-route-gradio-adds-tomorrow", False),
    ],
)
def test_routes_left_open(method: str, path: str, open_: bool) -> None:
    assert _open({"type": "http", "method": method, "path": path}) is open_


def test_refusals_are_coalesced_per_client_and_minute() -> None:
    written: list[tuple[str, str, int]] = []
    now = [1000.0]
    log = RefusalLog(lambda *entry: written.append(entry), clock=lambda: now[0])
    for _ in range(50):
        log.refused("10.0.0.9", "/gradio_api/info")
    log.refused("10.0.0.7", "/config")
    assert written == [("10.0.0.9", "/gradio_api/info", 1), ("10.0.0.7", "/config", 1)]
    now[0] += COALESCE_S
    log.refused("10.0.0.9", "/gradio_api/user")
    assert written[-1] == ("10.0.0.9", "/gradio_api/user", 50)  # 49 held back + this one
