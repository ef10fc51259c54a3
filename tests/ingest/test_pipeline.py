"""The ingestion pipeline end to end on real parts: real office files from the shared corpus,
real Milvus (a Lite file and a server process: fixture ``milvus``), SQLite, the bundled
embedder, real encryption."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from ingest.chunk import chunk_document
from ingest.embed import Embedder
from ingest.parse import ParseLimits, parse_file
from ingest.schema import open_passage
from ingest.sparse import analyze
from tests.ingest.conftest import corpus_file
from tests.ingest.pipeline_kit import Kit, build_kit, put
from tests.ingest.test_embed import bundled_embedder
from tests.support.milvus_server import MilvusBackend

CANARY = "Quillfeather canary: the Ostrava vault code is 7741-MAGENTA-2209."


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return bundled_embedder()


@pytest.fixture
def kit(tmp_path: Path, embedder: Embedder, milvus: MilvusBackend) -> Kit:
    return build_kit(tmp_path / "kb", embedder, milvus=milvus)


@pytest.fixture
def lite_kit(tmp_path: Path, embedder: Embedder) -> Kit:
    """For tests of parsing and scheduling, where the Milvus backend plays no part."""
    return build_kit(tmp_path / "kb", embedder)


def outcomes(report: object) -> dict[str, tuple[str, str]]:
    return {f.rel_path: (f.outcome, f.code) for f in report.files}  # type: ignore[attr-defined]


def test_inbox_mixed_folder(kit: Kit) -> None:
    shutil.copy(
        corpus_file("markitdown/REPAIR-2022-INV-001_multipage.pdf"), kit.drop / "finance-dummy.pdf"
    )
    (kit.drop / "finance").mkdir()
    shutil.move(kit.drop / "finance-dummy.pdf", kit.drop / "finance" / "repair.pdf")
    put(
        kit.drop,
        "hr/policy.md",
        "# Leave policy\n\n## Carry-over\n\nStaff may carry over at "
        "most five days of unused annual leave into the next year.\n",
    )
    put(
        kit.drop,
        "public/制度.txt",
        "第一章 总则\n\n员工每年享有十五天带薪年假，未休假期最多可结转五天。\n",
    )
    shutil.copy(
        corpus_file("openpyxl/tests/data/reader/null_archive.xlsx"),
        kit.drop / "public" / "broken.xlsx",
    )
    put(kit.drop, "loose.txt", "a file outside any group folder")
    report = kit.pipeline.run_once(settle=False)
    got = outcomes(report)
    assert got["finance/repair.pdf"][0] == "indexed"
    assert got["hr/policy.md"][0] == "indexed"
    assert got["public/制度.txt"][0] == "indexed"
    assert got["public/broken.xlsx"] == ("failed", "corrupt")
    assert got["loose.txt"] == ("failed", "no-group")
    # inbox: originals left the drop folder; failures sit in _failed with their reason
    left = sorted(p.relative_to(kit.drop).as_posix() for p in kit.drop.rglob("*") if p.is_file())
    assert left == [
        "_failed/loose.txt",
        "_failed/loose.txt.reason.txt",
        "_failed/public/broken.xlsx",
        "_failed/public/broken.xlsx.reason.txt",
    ]
    assert "corrupt:" in (kit.drop / "_failed/public/broken.xlsx.reason.txt").read_text()
    assert kit.vault is not None and len(kit.vault.list_ids()) == 3
    # group filtering: finance passages only for finance; Chinese found through BM25
    hits = kit.retriever.search("repair order estimate", groups=["finance"], limit=3).passages
    assert hits and hits[0].document == "finance/repair.pdf" and hits[0].page_start
    assert hits[0].section
    assert all(
        p.group != "finance"
        for p in kit.retriever.search(
            "repair order estimate", groups=["hr", "public"], limit=10
        ).passages
    )
    zh = kit.retriever.search("年假可以结转几天", groups=["public"], limit=1).passages
    assert zh and "结转五天" in zh[0].text


def test_redrop_replaces_previous_version(kit: Kit) -> None:
    put(kit.drop, "hr/rules.txt", "The cafeteria opens at seven in the morning.")
    kit.pipeline.run_once(settle=False)
    doc = kit.registry.find("inbox", "hr/rules.txt")
    assert doc is not None and kit.chunk_versions(doc.doc_id) == {1}
    put(kit.drop, "hr/rules.txt", "The parking garage closes at ten in the evening.")
    report = kit.pipeline.run_once(settle=False)
    assert outcomes(report)["hr/rules.txt"] == ("indexed", "")
    assert kit.chunk_versions(doc.doc_id) == {2}
    texts = kit.search("cafeteria opens seven morning", ["hr"])
    assert not any("cafeteria" in t for t in texts)
    assert kit.vault is not None and len(kit.vault.list_ids()) == 1


def test_same_content_again_is_a_no_op(kit: Kit) -> None:
    put(kit.drop, "hr/a.txt", "Badges must be worn visibly inside the building.")
    kit.pipeline.run_once(settle=False)
    before = kit.store.count()
    put(kit.drop, "hr/a.txt", "Badges must be worn visibly inside the building.")
    report = kit.pipeline.run_once(settle=False)
    assert outcomes(report)["hr/a.txt"] == ("unchanged", "")
    assert kit.store.count() == before and not (kit.drop / "hr/a.txt").exists()


def test_passes_that_change_nothing_leave_no_job_rows(kit: Kit) -> None:
    """A watcher runs a pass every few seconds; idle passes used to add a job row each (and a
    file row per unchanged file in mirror mode): the registry grew without bound."""
    put(kit.drop, "hr/a.txt", "Visitors sign in at the front desk.")
    kit.pipeline.run_once(settle=False)
    kept = kit.registry.jobs(100)
    assert len(kept) == 1 and kept[0]["status"] == "done"
    for _ in range(3):
        kit.pipeline.run_once(settle=False)  # nothing new
    put(kit.drop, "hr/a.txt", "Visitors sign in at the front desk.")  # the same content again
    kit.pipeline.run_once(settle=False)
    assert kit.registry.jobs(100) == kept
    put(kit.drop, "hr/b.txt", "Contractors wear orange badges.")
    kit.pipeline.run_once(settle=False)
    assert len(kit.registry.jobs(100)) == 2


def test_largest_files_are_parsed_first(lite_kit: Kit) -> None:
    """With one parse at a time, files come back in the order they were started."""
    kit = lite_kit
    kit.pipeline.options = dataclasses.replace(kit.pipeline.options, parse_ahead=1)
    sizes = {"hr/small.txt": 1, "hr/large.txt": 40, "finance/middle.txt": 12, "hr/tie.txt": 12}
    for rel, sentences in sizes.items():
        put(kit.drop, rel, "Expense claims need a receipt and a manager's approval. " * sentences)
    report = kit.pipeline.run_once(settle=False)
    order = [f.rel_path for f in report.files]
    assert order == ["hr/large.txt", "finance/middle.txt", "hr/tie.txt", "hr/small.txt"]
    assert {f.outcome for f in report.files} == {"indexed"}


def test_refailed_file_is_retried_in_inbox(lite_kit: Kit) -> None:
    kit = lite_kit
    put(kit.drop, "hr/empty.txt", "")
    assert outcomes(kit.pipeline.run_once(settle=False))["hr/empty.txt"][0] == "failed"
    put(kit.drop, "hr/empty.txt", "")
    assert outcomes(kit.pipeline.run_once(settle=False))["hr/empty.txt"][0] == "failed"


def test_delete_document(kit: Kit) -> None:
    put(kit.drop, "hr/x.txt", "Visitors sign in at the front desk.")
    kit.pipeline.run_once(settle=False)
    doc = kit.registry.find("inbox", "hr/x.txt")
    assert doc is not None
    kit.pipeline.delete_document(doc.doc_id)
    assert kit.store.chunk_ids(doc.doc_id) == [] and kit.registry.get(doc.doc_id) is None
    assert kit.search("visitors front desk", ["hr"]) == []
    assert kit.vault is not None and kit.vault.list_ids() == []


def test_reindex_from_vault(kit: Kit) -> None:
    put(kit.drop, "hr/y.txt", "Fire drills take place every second Tuesday.")
    kit.pipeline.run_once(settle=False)
    doc = kit.registry.find("inbox", "hr/y.txt")
    assert doc is not None
    result = kit.pipeline.reindex(doc.doc_id)
    assert result.outcome == "indexed" and kit.chunk_versions(doc.doc_id) == {2}
    assert any("Fire drills" in t for t in kit.search("fire drill tuesday", ["hr"]))


def test_mirror_add_modify_delete_rename(
    tmp_path: Path, embedder: Embedder, milvus: MilvusBackend
) -> None:
    kit = build_kit(tmp_path / "kb", embedder, mode="mirror", milvus=milvus)
    src = put(kit.drop, "ops/runbook.txt", "Restart the ingest service with systemctl.")
    kit.pipeline.run_once(settle=False)
    assert src.exists()  # mirror never touches originals
    doc = kit.registry.find("mirror", "ops/runbook.txt")
    assert doc is not None
    src.write_text("Rotate the TLS certificates every ninety days.")
    import os

    os.utime(src, (doc.updated_at + 5, doc.updated_at + 5))
    assert outcomes(kit.pipeline.run_once(settle=False))["ops/runbook.txt"][0] == "indexed"
    assert kit.chunk_versions(doc.doc_id) == {2}
    src.rename(kit.drop / "ops" / "certs.txt")
    got = outcomes(kit.pipeline.run_once(settle=False))
    assert got["ops/runbook.txt"][0] == "deleted" and got["ops/certs.txt"][0] == "indexed"
    assert kit.store.chunk_ids(doc.doc_id) == []
    (kit.drop / "ops" / "certs.txt").unlink()
    assert outcomes(kit.pipeline.run_once(settle=False))["ops/certs.txt"][0] == "deleted"
    assert kit.store.count() == 0 and kit.registry.documents() == []
    assert not (kit.root / "vault").exists()


def test_no_canary_plaintext_anywhere_after_inbox_ingestion(kit: Kit) -> None:
    from docx import Document

    document = Document()
    document.add_heading("Quarterly security memo", level=1)
    document.add_paragraph(CANARY)
    (kit.drop / "security").mkdir()
    document.save(str(kit.drop / "security" / "memo.docx"))
    put(kit.drop, "security/notes.txt", CANARY + "\n")
    report = kit.pipeline.run_once(settle=False)
    assert {f.outcome for f in report.files} == {"indexed"}
    kit.store.flush()
    assert any("Quillfeather" in t for t in kit.search("Ostrava vault code", ["security"]))
    needles = [CANARY.encode(), b"Quillfeather", "Quillfeather".encode("utf-16-le")]
    leaks = []
    for path in kit.root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            leaks += [str(path) for n in needles if n in data]
    assert leaks == []


@pytest.mark.parametrize("where", ["parse child", "main process"])
def test_stored_chunks_and_terms_are_the_chunkers(
    where: str, tmp_path: Path, embedder: Embedder
) -> None:
    """Chunks made in the parse child (the default) or, for an embedder without a fast
    tokenizer, in the main process: the same passages and BM25 lengths either way."""
    if where == "main process":  # as Embedder.load builds one around a slow tokenizer
        embedder = Embedder(
            embedder._model,
            embedder.info,
            counter=embedder.count_tokens,
            batch_size=embedder.batch_size,
            tokenizer_json=None,
        )
    kit = build_kit(tmp_path / "kb", embedder)
    assert (kit.pipeline._chunk_spec is None) == (where == "main process")
    source = corpus_file("markitdown/test.docx")
    (kit.drop / "docs").mkdir()
    shutil.copy(source, kit.drop / "docs" / "test.docx")
    report = kit.pipeline.run_once(settle=False)
    assert outcomes(report)["docs/test.docx"] == ("indexed", "")
    expected = chunk_document(
        parse_file(source, limits=ParseLimits()),
        params=kit.pipeline.options.chunking,
        count_tokens=embedder.count_tokens,
    )
    doc = kit.registry.find("inbox", "docs/test.docx")
    assert doc is not None
    stored = []
    for index in range(len(expected)):
        chunk_id = f"{doc.doc_id}:1:{index}"
        hit = kit.store.get(chunk_id)
        assert hit is not None
        stored.append(open_passage(kit.pipeline.cipher, chunk_id, hit.payload))
    assert len(kit.store.chunk_ids(doc.doc_id)) == len(expected) > 1
    assert [(p.text, p.section_path, p.page_start) for p in stored] == [
        (c.text, c.section_path, c.page_start) for c in expected
    ]
    lengths = sum(len(analyze(c.embed_text)) for c in expected)
    assert kit.registry.corpus() == (len(expected), lengths)
    assert report.files[0].stages["chunk_s"] > 0 and report.files[0].stages["parse_s"] > 0
