"""`ingest.reconcile`: registry against index, every kind of disagreement made for real in a
real collection (both backends), then repaired from the originals."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ingest.reconcile import compare, quick_check, repair
from ingest.schema import ChunkRecord, PassageText, seal_passage
from tests.ingest.pipeline_kit import Kit, build_kit, put
from tests.ingest.test_embed import bundled_embedder
from tests.support.milvus_server import MilvusBackend

TEXTS = {
    "hr/a.txt": "Annual leave requests go to the team lead two weeks ahead.",
    "hr/b.txt": "Sick leave longer than three days needs a doctor's note.",
    "hr/c.txt": "Overtime is compensated with time off within the same quarter.",
}


def indexed_kit(root: Path, milvus: MilvusBackend, mode: str = "inbox") -> Kit:
    kit = build_kit(root, bundled_embedder(), milvus=milvus, mode=mode)
    for rel, text in TEXTS.items():
        put(kit.drop, rel, text)
    report = kit.pipeline.run_once(settle=False)
    assert report.totals["indexed"] == len(TEXTS)
    return kit


def doc(kit: Kit, rel: str, source: str = "inbox") -> tuple[str, int]:
    found = kit.registry.find(source, rel)
    assert found is not None
    return found.doc_id, found.version


def row(kit: Kit, doc_id: str, version: int, index: int) -> ChunkRecord:
    """A well-formed chunk row (sealed payload, real-sized vectors) the registry knows nothing
    of."""
    chunk_id = f"{doc_id}:{version}:{index}"
    dim = kit.store.meta.dimension
    return ChunkRecord(
        id=chunk_id,
        doc_id=doc_id,
        version=version,
        groups=("hr",),
        page=1,
        kind="text",
        language="en",
        payload=seal_passage(kit.pipeline.cipher, chunk_id, PassageText("stray text")),
        dense=np.ones(dim, dtype=np.float32) / np.sqrt(dim),
        sparse={7: 1.0},
    )


def test_an_agreeing_index_has_nothing_to_repair(tmp_path: Path, milvus: MilvusBackend) -> None:
    kit = indexed_kit(tmp_path / "kb", milvus)
    report = compare(kit.registry, kit.store)
    assert report.ok and report.documents == 3 and report.index_rows == report.expected_chunks
    assert quick_check(kit.registry, kit.store).agrees


def test_every_disagreement_is_found_and_repaired(tmp_path: Path, milvus: MilvusBackend) -> None:
    kit = indexed_kit(tmp_path / "kb", milvus)
    a, a_version = doc(kit, "hr/a.txt")
    b, b_version = doc(kit, "hr/b.txt")
    c, c_version = doc(kit, "hr/c.txt")
    kit.store.delete_document(a)  # a: its chunks lost
    kit.store.insert([row(kit, b, b_version, 0)])  # b: one chunk stored twice
    kit.store.insert([row(kit, c, c_version + 5, 0)])  # c: an old version came back
    kit.store.insert([row(kit, "doc-unknown", 1, 0)])  # a document nobody indexed
    check = quick_check(kit.registry, kit.store)
    assert not check.agrees and "appliance docs verify --repair" in check.message()

    report = compare(kit.registry, kit.store)
    found = {(f.kind, f.doc_id, f.version, f.chunks) for f in report.findings}
    assert found == {
        ("missing", a, a_version, 1),
        ("duplicate", b, b_version, 1),
        ("stale", c, c_version + 5, 1),
        ("orphan", "doc-unknown", 1, 1),
    }
    repaired = repair(
        report,
        store=kit.store,
        reindex=lambda doc_id: kit.pipeline.reindex(doc_id, unchanged_only=True),
    )
    assert repaired.findings == [] and len(repaired.repaired) == 4
    after = compare(kit.registry, kit.store)
    assert after.ok, after.to_dict()
    assert quick_check(kit.registry, kit.store).agrees
    hits = kit.retriever.search("annual leave requests team lead", groups=["hr"], limit=1)
    assert hits.passages and hits.passages[0].document == "hr/a.txt"


def test_mirror_repairs_only_an_unchanged_original(tmp_path: Path, milvus: MilvusBackend) -> None:
    kit = indexed_kit(tmp_path / "kb", milvus, mode="mirror")
    a, _ = doc(kit, "hr/a.txt", "mirror")
    b, _ = doc(kit, "hr/b.txt", "mirror")
    kit.store.delete_document(a)
    kit.store.delete_document(b)
    put(kit.drop, "hr/b.txt", "Sick leave rules changed: a note from the first day.")
    report = repair(
        compare(kit.registry, kit.store),
        store=kit.store,
        reindex=lambda doc_id: kit.pipeline.reindex(doc_id, unchanged_only=True),
    )
    assert [(f.kind, f.doc_id) for f in report.repaired] == [("missing", a)]
    (left,) = report.findings
    assert (left.kind, left.doc_id) == ("unrepaired", b) and "[changed]" in left.detail
    assert kit.store.chunk_ids(b) == []  # not indexed from the changed file
    os.utime(kit.drop / "hr/b.txt", (2e9, 2e9))
    kit.pipeline.run_once(settle=False)  # the next pass takes the new content
    assert compare(kit.registry, kit.store).ok


def test_a_lost_vault_copy_is_reported_not_hidden(tmp_path: Path, milvus: MilvusBackend) -> None:
    kit = indexed_kit(tmp_path / "kb", milvus)
    a, _ = doc(kit, "hr/a.txt")
    found = kit.registry.get(a)
    assert found is not None and kit.vault is not None
    kit.store.delete_document(a)
    kit.vault.delete(found.vault_id)
    report = repair(
        compare(kit.registry, kit.store),
        store=kit.store,
        reindex=lambda doc_id: kit.pipeline.reindex(doc_id, unchanged_only=True),
    )
    (left,) = report.findings
    assert left.kind == "unrepaired" and left.doc_id == a and left.detail
    assert not report.ok
