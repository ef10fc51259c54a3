"""Uploads from the UI: own groups only, safe names, size limit, live state to indexed/failed."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.errors import Forbidden, InvalidInput
from appliance.uploads import Uploads, safe_filename
from tests.ui.kit import DOCS_DIR, UiWorld, build

DOCX = DOCS_DIR / "markitdown" / "test.docx"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiWorld]:
    from ingest.embed import Embedder

    if not DOCX.is_file():
        pytest.skip(f"shared document corpus not found at {DOCS_DIR}")
    docs = {"public/welcome.md": "# Welcome\n\nThe canteen opens at 11:30.\n"}
    w = build(
        tmp_path_factory.mktemp("uploads"),
        Embedder.load("bundled", threads=1),
        docs=docs,
        ingest={"settle_s": 0, "ocr": False, "max_file_mb": 1},
    )
    yield w
    w.close()


@pytest.fixture(scope="module")
def uploads(world: UiWorld) -> Iterator[Uploads]:
    u = Uploads(world.runtime.knowledge)
    yield u
    u.close()


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("report.docx", "report.docx"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\年报 2027.xlsx", "年报 2027.xlsx"),
        ("  spaced.pdf ", "spaced.pdf"),
    ],
)
def test_safe_names(raw: str, safe: str) -> None:
    assert safe_filename(raw) == safe


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "..",
        "a/..",
        ".hidden",
        "~$lock.docx",
        "x.part",
        "a\x00b.pdf",
        "e\u202egp.exe",
        "x" * 200 + ".pdf",
    ],
)
def test_unsafe_names_refused(raw: str) -> None:
    with pytest.raises(InvalidInput):
        safe_filename(raw)


def test_docx_upload_is_indexed_into_the_users_group(world: UiWorld, uploads: Uploads) -> None:
    hana = world.app.users.get("hana")
    item = uploads.save(hana, filename="../AutoGen paper.docx", source=DOCX, group="hr")
    assert item.rel_path == "hr/AutoGen paper.docx" and item.state == "queued"
    done = uploads.wait(hana, item.id, timeout=90)
    assert done.state == "indexed", done.reason
    doc = world.runtime.knowledge.registry.get(done.doc_id or "")
    assert doc is not None and doc.group == "hr" and doc.status == "indexed"
    assert not (world.settings.drop_dir / "hr" / "AutoGen paper.docx").exists()  # in the vault
    fred = world.app.users.get("fred")
    assert uploads.status(fred) == []
    hits = world.runtime.knowledge.retriever.search("AutoGen multi-agent", groups=["hr"], limit=3)
    assert hits.passages and hits.passages[0].group == "hr"
    entries = {e.action: e for e in world.app.secure.audit.tail(20)}
    upload, index = entries["document.upload"], entries["document.index"]
    assert upload.actor == "user:hana" and index.object == done.doc_id
    assert upload.details["name"] == index.details["name"] != item.rel_path  # tied, not plain


def test_broken_file_fails_with_reason(world: UiWorld, uploads: Uploads) -> None:
    hana = world.app.users.get("hana")
    item = uploads.save(
        hana, filename="broken.docx", source=io.BytesIO(b"PK\x03\x04 not a zip"), group="hr"
    )
    done = uploads.wait(hana, item.id, timeout=90)
    assert (done.state, done.code) == ("failed", "corrupt") and done.reason
    note = world.settings.drop_dir / "_failed" / "hr" / "broken.docx.reason.txt"
    assert note.read_text(encoding="utf-8") == f"{done.code}: {done.reason}\n"


def test_groups_size_and_empty_files(world: UiWorld, uploads: Uploads, tmp_path: Path) -> None:
    fred, root = world.app.users.get("fred"), world.app.users.get("root")
    assert uploads.groups_for(fred) == ["finance"]
    offered = uploads.groups_for(root)  # admins: every group with a drop folder
    assert "public" in offered and "_failed" not in offered
    for group in ("hr", "public", "_failed", "../x", ""):
        with pytest.raises(Forbidden):
            uploads.save(fred, filename="a.md", source=io.BytesIO(b"# a"), group=group)
    with pytest.raises(InvalidInput):
        uploads.save(
            fred, filename="big.md", source=io.BytesIO(b"x" * (2**20 + 1)), group="finance"
        )
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * (2**20 + 1))
    with pytest.raises(InvalidInput):
        uploads.save(fred, filename="big.txt", source=big, group="finance")
    with pytest.raises(InvalidInput):
        uploads.save(fred, filename="empty.md", source=io.BytesIO(b""), group="finance")
    leftovers = [p.name for p in (world.settings.drop_dir / "finance").iterdir()]
    assert leftovers == []
    item = uploads.save(root, filename="n.md", source=io.BytesIO(b"# New\n\nlegal"), group="Legal")
    assert item.group == "legal" and uploads.wait(root, item.id, timeout=60).state == "indexed"
