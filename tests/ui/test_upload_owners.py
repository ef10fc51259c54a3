"""Uploads waiting in the web UI's cache belong to their uploader, within a quota
(ui/upload_owners.py): found by an outside-style review, a logged-in user could read or submit
another user's unsubmitted upload by its path, and fill the memory file system with uploads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.serve.server import build_app
from tests.ingest.test_embed import bundled_embedder
from tests.support.server import running_server
from tests.support.webui import Page, browser, login
from tests.ui.kit import PASSWORD, UiWorld, build

pytestmark = pytest.mark.slow
CANARY = "PENDING-UPLOAD-CANARY-5521"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, UiWorld]]:
    world = build(
        tmp_path_factory.mktemp("owners"),
        bundled_embedder(),
        serve={"ui_upload_max_age_s": 120, "ui_upload_quota_mb": 1},
    )
    try:
        with running_server(build_app(world.runtime, ui=True)) as url:
            yield url, world
    finally:
        world.close()


def page_of(url: str, name: str) -> Page:
    client = browser(url)
    assert login(client, name, PASSWORD).status_code == 303
    page = Page(client)
    for fn in page.load_fns():
        assert page.call(fn, []).completed is not None
    return page


def denials(world: UiWorld, reason: str) -> list[Any]:
    entries = world.app.secure.audit.tail(500)
    return [e for e in entries if e.action == "access.denied" and e.reason == reason]


def test_another_login_can_neither_read_nor_submit_a_waiting_upload(
    served: tuple[str, UiWorld], tmp_path: Path
) -> None:
    url, world = served
    fred, hana = page_of(url, "fred"), page_of(url, "hana")
    source = tmp_path / "pending.md"
    source.write_text(f"# Pending\n\n{CANARY} is in fred's unsubmitted upload.\n")
    data = fred.upload(source)
    link = f"/gradio_api/file={data['path']}"
    assert CANARY in fred.client.get(link).text  # the uploader's own preview works
    read = hana.client.get(link)
    assert read.status_code == 404 and CANARY not in read.text
    before = len(denials(world, "UPLOAD_PATH"))
    stolen = hana.call(hana.fn("upload-submit"), ["hr", [data]])
    assert stolen.status == 403 and CANARY not in stolen.raw
    assert len(denials(world, "UPLOAD_PATH")) == before + 1
    assert Path(data["path"]).is_file()  # still fred's, still waiting
    registry = world.runtime.knowledge.registry
    assert not any(d.rel_path.endswith("pending.md") for d in registry.documents(group="hr"))
    done = fred.call(fred.fn("upload-submit"), ["finance", [data]])
    assert done.completed is not None and done.completed["success"], done.raw[-500:]


def test_uploads_past_the_quota_are_refused_until_some_are_submitted(
    served: tuple[str, UiWorld], tmp_path: Path
) -> None:
    url, world = served
    hana = page_of(url, "hana")
    first, second = tmp_path / "first.md", tmp_path / "second.md"
    first.write_text("# First\n\n" + "the first waiting upload. " * 24_000)  # ~600 KB
    second.write_text("# Second\n\n" + "the second waiting upload. " * 24_000)
    waiting = hana.upload(first)
    with second.open("rb") as handle:
        refused = hana.client.post("/gradio_api/upload", files={"files": (second.name, handle)})
    assert refused.status_code == 413 and "1 MB" in refused.json()["detail"]
    assert denials(world, "UPLOAD_QUOTA")
    done = hana.call(hana.fn("upload-submit"), ["hr", [waiting]])
    assert done.completed is not None and done.completed["success"], done.raw[-500:]
    assert hana.upload(second)["path"]  # room again once the first was submitted


def test_the_gate_needs_a_session(served: tuple[str, UiWorld]) -> None:
    url, _ = served
    anonymous = httpx.post(f"{url}/gradio_api/upload", files={"files": ("x.md", b"# x")})
    assert anonymous.status_code in (401, 403)
