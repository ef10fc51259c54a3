"""Retrieval through the in-memory dense index gives the passages Milvus alone gives: real
documents ingested by the real pipeline, the bundled embedder, encrypted chunks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.rag.dense_memory import DenseMemory
from ingest.embed import Embedder
from tests.appliance.test_dense_memory import running_memory
from tests.ingest.pipeline_kit import Kit, build_kit, put
from tests.ingest.test_embed import bundled_embedder

MSMARCO = Path(__file__).resolve().parents[3] / "shared" / "data" / "msmarco-subset"
GROUPS = ("finance", "hr", "public")


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return bundled_embedder()


@pytest.fixture(scope="module")
def queries() -> list[str]:
    lines = (MSMARCO / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines[:12]]


@pytest.fixture
def kit(tmp_path: Path, embedder: Embedder) -> Kit:
    kit = build_kit(tmp_path / "kb", embedder)
    lines = (MSMARCO / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:60]
    for i, line in enumerate(lines):
        put(kit.drop, f"{GROUPS[i % 3]}/passage-{i}.txt", json.loads(line)["text"])
    report = kit.pipeline.run_once(settle=False)
    assert {f.outcome for f in report.files} == {"indexed"}
    return kit


@pytest.fixture
def memory(kit: Kit) -> Iterator[DenseMemory]:
    with running_memory(kit.store, kit.registry, 16 << 20) as mem:
        yield mem


@pytest.mark.parametrize("mode", ["hybrid", "dense"])
def test_the_same_passages_as_milvus_alone(
    kit: Kit, memory: DenseMemory, queries: list[str], mode: str
) -> None:
    retriever = kit.retriever
    for i, query in enumerate(queries):
        groups = [list(GROUPS), ["hr"], ["finance", "public"]][i % 3]
        retriever.memory = None  # Milvus alone
        want = retriever.search(query, groups=groups, limit=5, mode=mode)  # type: ignore[arg-type]
        retriever.memory = memory
        got = retriever.search(query, groups=groups, limit=5, mode=mode)  # type: ignore[arg-type]
        assert [p.chunk_id for p in got.passages] == [p.chunk_id for p in want.passages]
        assert [p.text for p in got.passages] == [p.text for p in want.passages]
        assert all(p.text for p in got.passages)  # the sealed passages it keeps, decrypted
        for a, b in zip(got.passages, want.passages, strict=True):
            assert a.score == pytest.approx(b.score, abs=1e-5)
            assert a.group in groups
    assert memory.status()["searches"] == len(queries)


def test_a_document_dropped_after_loading_is_found_at_once(
    kit: Kit, memory: DenseMemory, queries: list[str]
) -> None:
    fast = kit.retriever
    fast.memory = memory
    put(kit.drop, "hr/new.txt", "The Quillfeather canteen opens at 7:15 on weekdays.")
    kit.pipeline.run_once(settle=False)
    first = fast.search("When does the Quillfeather canteen open?", groups=["hr"], limit=1)
    assert "Quillfeather canteen" in first.passages[0].text  # from Milvus: memory is behind
    assert memory.wait_ready()
    again = fast.search("When does the Quillfeather canteen open?", groups=["hr"], limit=1)
    assert again.passages[0].chunk_id == first.passages[0].chunk_id
    assert memory.status()["fallbacks"] == 1 and memory.status()["searches"] == 1
