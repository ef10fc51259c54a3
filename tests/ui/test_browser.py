"""End to end in a real headless Chromium (Debian `chromium`, driven by Playwright): log in,
upload a docx into a group, wait until it is indexed, ask, see the streamed answer with a
citation, open the source; then a user of another group cannot find it. Screenshots are saved
under the test's tmp_path."""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ui.kit import DOCS_DIR, PASSWORD, UiWorld, build

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOCX = DOCS_DIR / "markitdown" / "test.docx"
QUESTION = "What is AutoGen and how do its agents converse?"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, UiWorld]]:
    if CHROMIUM is None:
        pytest.skip("no chromium binary (Debian package `chromium`, scripts/system-packages.txt)")
    if not DOCX.is_file():
        pytest.skip(f"shared document corpus not found at {DOCS_DIR}")
    import uvicorn

    from appliance.api.app import create_app
    from ingest.embed import Embedder
    from ui.app import mount_ui

    world = build(tmp_path_factory.mktemp("browser"), Embedder.load("bundled", threads=1))
    app = create_app(world.runtime)
    mount_ui(app, world.runtime)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "the server did not start"
    yield f"http://127.0.0.1:{port}", world
    uv.should_exit = True
    thread.join(timeout=10)
    world.close()


@pytest.fixture(scope="module")
def browser(server: Any) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def _login(page: Any, base: str, name: str) -> None:
    page.goto(f"{base}/", wait_until="domcontentloaded")
    assert page.url.endswith("/login")
    page.fill("#username", name)
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_selector("#username", state="attached", timeout=60_000)
    page.wait_for_function(
        "n => document.querySelector('b#username')?.textContent === n", arg=name, timeout=60_000
    )


def _ask(page: Any, question: str) -> None:
    page.get_by_role("tab", name=re.compile("Chat")).click()
    page.fill("#question textarea", question)
    page.click("#ask")


def test_upload_ask_cite_and_other_group_cannot_see(
    server: tuple[str, UiWorld], browser: Any, tmp_path: Path
) -> None:
    base, world = server
    page = browser.new_page(locale="en-US")
    page.set_default_timeout(60_000)
    _login(page, base, "hana")
    page.screenshot(path=str(tmp_path / "01-logged-in.png"))
    assert "Extractive" in page.inner_text("#mode")

    page.get_by_role("tab", name=re.compile("Upload")).click()
    page.set_input_files("#upload-files input[type=file]", str(DOCX))
    page.wait_for_selector("#upload-files :text('test.docx')")
    page.click("#upload-submit")
    page.wait_for_selector("#uploads :text('indexed')", timeout=120_000)
    page.screenshot(path=str(tmp_path / "02-indexed.png"))
    docs = world.runtime.knowledge.registry.documents(group="hr", status="indexed")
    assert any(d.rel_path == "hr/test.docx" for d in docs)

    _ask(page, QUESTION)
    cite = page.wait_for_selector("#conversation a.cite", timeout=120_000)
    page.wait_for_selector("#sources details.source")
    assert "AutoGen" in page.inner_text("#conversation")
    page.screenshot(path=str(tmp_path / "03-answer.png"))
    turn, n = cite.get_attribute("data-turn"), cite.get_attribute("data-n")
    cite.click()
    source = page.locator(f"#src-{turn}-{n}")
    assert source.get_attribute("open") is not None
    assert "group: hr" in source.inner_text() and source.locator("mark").count() > 0
    page.screenshot(path=str(tmp_path / "04-source.png"))
    chunk_id = source.get_attribute("data-chunk")
    page.click("#logout")
    page.wait_for_url(re.compile(r"/login$"))

    other = browser.new_page(locale="en-US")
    other.set_default_timeout(60_000)
    _login(other, base, "fred")
    _ask(other, QUESTION)
    other.wait_for_function(
        "() => document.querySelector('#question textarea').value === '' && "
        "document.querySelector('#conversation .mode') !== null",
        timeout=120_000,
    )
    other.screenshot(path=str(tmp_path / "05-other-group.png"))
    assert "AutoGen" not in other.inner_text("#sources")
    assert "group: hr" not in other.inner_text("#sources")
    response = other.goto(f"{base}/ui/source/{chunk_id}")
    assert response is not None and response.status == 403
    denied = world.app.secure.audit.tail(1)[0]
    assert (denied.action, denied.actor) == ("access.denied", "user:fred")
    other.screenshot(path=str(tmp_path / "06-forbidden.png"))
    assert len(list(tmp_path.glob("*.png"))) == 6
