"""The in-memory dense index: the same hits and scores as Milvus' exact search, groups enforced,
and never an answer from an index that is behind the registry (real Milvus Lite, real SQLite)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.rag.dense_memory import DenseMemory, scan_error_bound
from ingest.bm25_stats import TermCounts
from ingest.registry import Registry
from ingest.schema import ChunkRecord, DenseIndex, PassageText, open_passage, seal_passage
from ingest.store import ChunkStore
from secure.records import RecordCipher

DIM = 32
GROUPS = ("finance", "hr", "public")


@dataclass
class Base:
    registry: Registry
    store: ChunkStore
    cipher: RecordCipher
    rng: np.random.Generator

    def index(self, name: str, group: str, vectors: np.ndarray) -> tuple[str, int]:
        """One document version through the write path's order: Milvus rows, then the
        registry commit that makes them searchable."""
        doc_id, version = self.registry.begin_version(
            source="test", rel_path=name, group=group, content_hmac=os.urandom(8).hex(), size=1,
            fmt=".txt",
        )  # fmt: skip
        records = []
        for i, vec in enumerate(vectors):
            cid = f"{doc_id}:{version}:{i}"
            records.append(
                ChunkRecord(
                    id=cid, doc_id=doc_id, version=version, groups=(group,), page=-1, kind="text",
                    language="en", payload=seal_passage(self.cipher, cid, PassageText(cid)),
                    dense=vec, sparse={1: 1.0},
                )
            )  # fmt: skip
        self.store.insert(records)
        counts = TermCounts(len(records), len(records), {1: len(records)})
        self.registry.commit_version(
            doc_id, version, counts=counts, pages=1, title_enc="", size=1, fmt=".txt"
        )
        return doc_id, version

    def delete(self, doc_id: str) -> None:
        self.registry.delete(doc_id)
        self.store.delete_document(doc_id)

    def vectors(self, n: int, near: np.ndarray | None = None) -> np.ndarray:
        out = self.rng.standard_normal((n, DIM)).astype(np.float32)
        if near is not None:  # near-duplicates: float16 rounding would swap them
            out = near[self.rng.integers(0, len(near), n)] + 0.003 * out
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Base]:
    store = ChunkStore.open(
        str(tmp_path / "milvus.db"), dim=DIM, model_id="test-model", dense_index=DenseIndex("FLAT")
    )
    yield Base(
        Registry(tmp_path / "registry.db", durable=False),
        store,
        RecordCipher(os.urandom(32), context="test"),
        np.random.default_rng(7),
    )
    store.close()


@pytest.fixture
def filled(base: Base) -> Base:
    seed = base.vectors(40)
    for d in range(30):
        base.index(f"doc-{d}.txt", GROUPS[d % 3], base.vectors(40, near=seed if d % 2 else None))
    return base


@contextmanager
def running_memory(store: ChunkStore, registry: Registry, max_bytes: int) -> Iterator[DenseMemory]:
    """A loaded index that syncs only when a search finds it behind (or wait_ready asks): no
    polling, so a test decides when it catches up."""
    mem = DenseMemory(store, registry, max_bytes=max_bytes, poll_s=60)
    mem.start()
    try:
        assert mem.wait_ready(), mem.status()
        yield mem
    finally:
        mem.close()


@pytest.fixture
def memory(filled: Base) -> Iterator[DenseMemory]:
    with running_memory(filled.store, filled.registry, 64 << 20) as mem:
        yield mem


def exact(base: Base, query: np.ndarray, groups: list[str], limit: int) -> list[tuple[str, float]]:
    hits = base.store.search_dense(query, groups=groups, limit=limit)
    return [(h.id, h.score) for h in hits]


def test_same_hits_and_scores_as_milvus_exact_search(filled: Base, memory: DenseMemory) -> None:
    queries = filled.vectors(40)
    for i, query in enumerate(queries):
        groups = [list(GROUPS), ["finance"], ["hr", "public"]][i % 3]
        limit = [1, 10, 100][i % 3]
        got = memory.search(query, groups=groups, limit=limit)
        assert got is not None
        want = exact(filled, query, groups, limit)
        assert [h.id for h in got] == [cid for cid, _ in want]
        assert np.allclose([h.score for h in got], [s for _, s in want], atol=1e-5)
    assert memory.status()["rows"] == 1200
    assert memory.status()["fallbacks"] == 0


def test_hits_name_their_document_and_carry_its_sealed_passage(
    filled: Base, memory: DenseMemory
) -> None:
    hit = memory.search(filled.vectors(1)[0], groups=["hr"], limit=1)[0]  # type: ignore[index]
    doc = filled.registry.get(hit.doc_id)
    assert doc is not None and doc.group == "hr" and hit.groups == ("hr",)
    assert hit.version == doc.version and hit.id.startswith(f"{doc.doc_id}:{doc.version}:")
    assert hit.payload == filled.store.get(hit.id).payload  # type: ignore[union-attr]
    assert open_passage(filled.cipher, hit.id, hit.payload).text == hit.id


def test_a_reader_never_gets_another_groups_rows(filled: Base, memory: DenseMemory) -> None:
    docs = {d.doc_id: d.group for d in filled.registry.documents()}
    for query in filled.vectors(10):
        hits = memory.search(query, groups=["finance"], limit=500)
        assert hits is not None and len(hits) == 400
        assert {docs[h.doc_id] for h in hits} == {"finance"}
    assert memory.search(filled.vectors(1)[0], groups=["nobody"], limit=10) == []
    assert memory.search(filled.vectors(1)[0], groups=[], limit=10) == []


def test_any_commit_sends_searches_to_milvus_until_the_index_caught_up(
    filled: Base, memory: DenseMemory
) -> None:
    query = filled.vectors(1)[0]
    doc_id, _ = filled.index("new.txt", "hr", np.stack([query] * 3))
    assert memory.search(query, groups=["hr"], limit=3) is None  # behind: ask Milvus
    assert memory.wait_ready()
    hits = memory.search(query, groups=["hr"], limit=3)
    assert hits is not None and {h.doc_id for h in hits} == {doc_id}

    filled.delete(doc_id)
    assert memory.search(query, groups=["hr"], limit=3) is None
    assert memory.wait_ready()
    hits = memory.search(query, groups=["hr"], limit=3)
    assert hits is not None and doc_id not in {h.doc_id for h in hits}


def test_a_replaced_version_is_swapped_for_the_new_one(filled: Base, memory: DenseMemory) -> None:
    old, new = filled.vectors(2)
    doc_id, v1 = filled.index("policy.txt", "public", np.stack([old]))
    assert memory.wait_ready()
    again, v2 = filled.index("policy.txt", "public", np.stack([new]))
    filled.store.delete_versions_except(doc_id, v2)
    assert again == doc_id and v2 == v1 + 1
    assert memory.wait_ready()
    top = memory.search(new, groups=["public"], limit=1)
    assert top is not None and top[0].id == f"{doc_id}:{v2}:0"
    hits = memory.search(old, groups=["public"], limit=1300)
    assert hits is not None and f"{doc_id}:{v1}:0" not in {h.id for h in hits}


def test_a_commit_by_another_process_is_noticed(filled: Base, memory: DenseMemory) -> None:
    script = (
        "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
        "db.execute('UPDATE documents SET updated_at = updated_at + 1'); db.commit()"
    )
    subprocess.run([sys.executable, "-c", script, str(filled.registry.path)], check=True)
    assert memory.search(filled.vectors(1)[0], groups=["hr"], limit=1) is None
    assert memory.wait_ready()


def test_deletions_compact_the_buffers_without_changing_results(
    filled: Base, memory: DenseMemory
) -> None:
    for doc in list(filled.registry.documents())[:26]:
        filled.delete(doc.doc_id)  # 1,040 dead rows: past the 1,024 that trigger compaction
    assert memory.wait_ready()
    assert memory.status()["rows"] == 160
    assert memory._buffers.dead == 0 and memory._buffers.n == 160  # compacted
    for query in filled.vectors(10):
        got = memory.search(query, groups=list(GROUPS), limit=50)
        assert got is not None
        assert [h.id for h in got] == [c for c, _ in exact(filled, query, list(GROUPS), 50)]


def test_an_index_over_its_memory_budget_stays_with_milvus(filled: Base) -> None:
    mem = DenseMemory(filled.store, filled.registry, max_bytes=100_000, poll_s=60)
    mem.start()
    try:
        assert not mem.wait_ready(timeout=1.0)
        status = mem.status()
        assert status["state"] == "over budget"
        assert "retrieval.dense_memory_mb" in status["reason"] and "1200 chunks" in status["reason"]
        assert mem.search(filled.vectors(1)[0], groups=["hr"], limit=1) is None
    finally:
        mem.close()


def test_a_memory_that_was_never_started_or_is_closed_answers_nothing(filled: Base) -> None:
    mem = DenseMemory(filled.store, filled.registry, max_bytes=64 << 20)
    assert mem.search(filled.vectors(1)[0], groups=["hr"], limit=1) is None
    assert mem.status()["state"] == "not started"
    mem.start()
    assert mem.wait_ready()
    mem.close()
    assert mem.search(filled.vectors(1)[0], groups=["hr"], limit=1) is None
    assert not mem.ready()


def test_the_float16_scan_stays_within_its_error_bound() -> None:
    rng = np.random.default_rng(3)
    for dim, scale in ((384, 1.0), (768, 7.5), (32, 0.01)):
        rows = rng.standard_normal((5000, dim)) * scale
        query = rng.standard_normal(dim) * 2
        coarse = (torch.from_numpy(rows).half() @ torch.from_numpy(query).half()).double()
        error = np.abs(coarse.numpy() - rows @ query).max()
        bound = scan_error_bound(
            dim, float(np.linalg.norm(query)), float(np.linalg.norm(rows, axis=1).max())
        )
        assert error <= bound, (dim, error, bound)


def test_a_milvus_failure_while_catching_up_leaves_searches_with_milvus(
    filled: Base, memory: DenseMemory, caplog: pytest.LogCaptureFixture
) -> None:
    filled.store.close()  # Milvus gone: loading the next version fails
    doc_id, version = filled.registry.begin_version(
        source="test", rel_path="late.txt", group="hr", content_hmac="ab" * 8, size=1, fmt=".txt"
    )
    filled.registry.commit_version(
        doc_id, version, counts=TermCounts(1, 1, {1: 1}), pages=1, title_enc="", size=1, fmt=".txt"
    )
    with caplog.at_level("WARNING", logger="appliance.rag.dense_memory"):
        for _ in range(50):
            assert memory.search(filled.vectors(1)[0], groups=["hr"], limit=1) is None
        assert not memory.wait_ready(timeout=0.5)
    status = memory.status()
    assert status["state"] == "waiting" and "closed" in status["reason"]
    assert len(caplog.records) <= 2  # retried after a pause, not once per question


def test_vectors_too_long_for_float16_are_searched_in_milvus(
    filled: Base, memory: DenseMemory
) -> None:
    big = filled.vectors(3) * 400  # an unnormalised embedder: scores past float16's range
    filled.index("big.txt", "hr", big)
    assert memory.wait_ready()
    before = memory.status()["fallbacks"]
    assert memory.search(big[0], groups=["hr"], limit=3) is None
    assert memory.status()["fallbacks"] == before + 1
    hits = filled.store.search_dense(big[0], groups=["hr"], limit=1)
    assert hits[0].id.endswith(":0")  # Milvus still finds it


def test_deletions_and_a_large_new_document_in_one_sync(filled: Base, memory: DenseMemory) -> None:
    for doc in list(filled.registry.documents())[:27]:
        filled.delete(doc.doc_id)  # 1,080 dead rows: enough to compact
    filled.index("large.txt", "public", filled.vectors(2500))  # more than the buffers hold
    assert memory.wait_ready()
    assert memory.status()["rows"] == 3 * 40 + 2500
    for query in filled.vectors(10):
        got = memory.search(query, groups=list(GROUPS), limit=30)
        assert got is not None
        assert [h.id for h in got] == [c for c, _ in exact(filled, query, list(GROUPS), 30)]
