"""Serving originals and taking uploads when the drop folder holds links (security review,
issue 12): a group folder swapped for a link into another group's folder after indexing never
makes `/ui/download` serve the other group's file, nor an upload land there. A real home, the
real pipeline, and a real uvicorn server for the downloads."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.errors import Forbidden
from appliance.serve.server import build_app
from appliance.uploads import Uploads
from ingest.embed import Embedder
from tests.support.server import running_server
from tests.support.webui import login as webui_login
from tests.ui.kit import PASSWORD, UiWorld, build

FINANCE = "# Plan\n\nThe finance plan: the travel budget for 2027 is 48,000 euros.\n"
HR = "# Plan\n\nHR only: the reorganisation list is kept in the blue cabinet, drawer two.\n"
DOCS = {"finance/plan.md": FINANCE, "hr/plan.md": HR}


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load("bundled", threads=1)


@pytest.fixture
def served(
    tmp_path: Path, embedder: Embedder, request: pytest.FixtureRequest
) -> Iterator[tuple[UiWorld, httpx.Client]]:
    mode = request.param
    world = build(tmp_path, embedder, docs=DOCS, ingest={"mode": mode, "settle_s": 0, "ocr": False})
    try:
        with (
            running_server(build_app(world.runtime, ui=True)) as url,
            httpx.Client(base_url=url, timeout=60) as client,
        ):
            login = webui_login(client, "fred", PASSWORD)
            assert login.status_code == 303, login.text
            yield world, client
    finally:
        world.close()


def _doc_id(world: UiWorld, mode: str, rel: str) -> str:
    doc = world.runtime.knowledge.registry.find(mode, rel)
    assert doc is not None and doc.status == "indexed", rel
    return doc.doc_id


def _last_denial(world: UiWorld) -> tuple[str, str, str]:
    entry = world.app.secure.audit.tail(1)[0]
    return entry.action, entry.actor, entry.reason


def _swap_group_folder(drop: Path, group: str, into: str, keep: Path) -> None:
    """Move ``drop/<group>`` away to ``keep`` and put a link to ``drop/<into>`` in its place."""
    (drop / group).rename(keep)
    (drop / group).symlink_to(drop / into, target_is_directory=True)


@pytest.mark.parametrize("served", ["mirror"], indirect=True)
def test_mirror_download_never_serves_another_groups_file(
    served: tuple[UiWorld, httpx.Client], tmp_path: Path
) -> None:
    world, client = served
    drop = world.settings.drop_dir
    doc_id = _doc_id(world, "mirror", "finance/plan.md")
    assert client.get(f"/ui/download/{doc_id}").content == FINANCE.encode()

    _swap_group_folder(drop, "finance", "hr", tmp_path / "finance-away")
    refused = client.get(f"/ui/download/{doc_id}")
    assert refused.status_code == 403 and b"cabinet" not in refused.content
    assert _last_denial(world) == ("access.denied", "user:fred", "SYMLINK")

    # the folder is back, but the file is now a copy of the other group's (not what was indexed)
    (drop / "finance").unlink()
    (tmp_path / "finance-away").rename(drop / "finance")
    shutil.copyfile(drop / "hr" / "plan.md", drop / "finance" / "plan.md")
    changed = client.get(f"/ui/download/{doc_id}")
    assert changed.status_code == 403 and b"cabinet" not in changed.content
    assert _last_denial(world) == ("access.denied", "user:fred", "CHANGED")

    (drop / "finance" / "plan.md").write_text(FINANCE)  # the indexed content again: served
    assert client.get(f"/ui/download/{doc_id}").content == FINANCE.encode()


@pytest.mark.parametrize("served", ["inbox"], indirect=True)
def test_inbox_download_is_unaffected_and_uploads_refuse_a_linked_group_folder(
    served: tuple[UiWorld, httpx.Client], tmp_path: Path
) -> None:
    world, client = served
    drop = world.settings.drop_dir
    doc_id = _doc_id(world, "inbox", "finance/plan.md")
    (drop / "hr" / "plan.md").write_text(HR)  # a file of the other group waiting in its folder
    _swap_group_folder(drop, "finance", "hr", tmp_path / "finance-away")

    served_file = client.get(f"/ui/download/{doc_id}")  # from the vault, not the drop folder
    assert served_file.status_code == 200 and served_file.content == FINANCE.encode()

    uploads = Uploads(world.runtime.knowledge)
    fred = world.app.users.get("fred")
    try:
        with pytest.raises(Forbidden):
            uploads.save(fred, filename="plan.md", source=io.BytesIO(b"overwrite"), group="finance")
    finally:
        uploads.close()
    assert _last_denial(world) == ("access.denied", "user:fred", "SYMLINK")
    assert sorted(p.name for p in (drop / "hr").iterdir()) == ["plan.md"]
    assert (drop / "hr" / "plan.md").read_text() == HR
