"""The dense index as a setting (ingest/schema.py DenseIndex, ingest/store.py) on real Milvus
Lite files: every index Lite builds searches correctly, HNSW is refused on Lite with what to do,
and a changed setting on an existing collection rebuilds its index from the stored vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ingest.errors import IngestError
from ingest.schema import DEFAULT_DENSE_INDEX, DenseIndex
from ingest.store import ChunkStore
from tests.ingest.test_store import DIM, MODEL, record

ROWS = 600  # above IVF_FLAT's cluster count below, so the clusters are real


def vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = rng.standard_normal((n, DIM)).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


MATRIX = vectors(ROWS)


def open_store(path: Path, index: DenseIndex) -> ChunkStore:
    return ChunkStore.open(str(path), dim=DIM, model_id=MODEL, dense_index=index)


def fill(store: ChunkStore) -> None:
    store.insert([record(f"doc{i}", f"passage number {i}", dense=MATRIX[i]) for i in range(ROWS)])
    store.flush()


def exact_top(query: np.ndarray, k: int) -> list[str]:
    return [f"doc{i}" for i in np.argsort(-(MATRIX @ query))[:k]]


def assert_searches_exactly(store: ChunkStore) -> None:
    """Each stored vector finds itself first, and the top 10 of fresh queries is the exact
    top 10 (a few hundred rows: every index Lite builds is exact at this size)."""
    for i in (0, 17, ROWS - 1):
        hits = store.search_dense(MATRIX[i], groups=["public"], limit=5)
        assert hits[0].doc_id == f"doc{i}"
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    for query in vectors(5, seed=1):
        hits = store.search_dense(query, groups=["public"], limit=10)
        assert [h.doc_id for h in hits] == exact_top(query, 10)
    assert store.search_dense(MATRIX[0], groups=["finance"], limit=5) == []


@pytest.mark.parametrize(
    "index",
    [
        DenseIndex("FLAT"),
        DenseIndex("IVF_FLAT", ivf_nlist=16, ivf_nprobe=16),
        DenseIndex("AUTOINDEX"),
    ],
    ids=lambda index: index.kind,
)
def test_every_index_lite_builds_searches_correctly(tmp_path: Path, index: DenseIndex) -> None:
    with open_store(tmp_path / "milvus.db", index) as store:
        fill(store)
        assert store.dense_index_info()["index_type"] == index.kind
        assert_searches_exactly(store)


def test_lite_refuses_hnsw_and_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="Milvus Lite cannot build a HNSW index") as err:
        open_store(tmp_path / "milvus.db", DenseIndex("HNSW"))
    assert "milvus.index_type" in err.value.hint
    assert not (tmp_path / "milvus.db").exists()  # refused before anything was created


def test_a_changed_index_setting_rebuilds_the_index_of_an_existing_collection(
    tmp_path: Path,
) -> None:
    path = tmp_path / "milvus.db"
    with open_store(path, DenseIndex("FLAT")) as store:
        fill(store)
        assert store.rebuilt_from is None  # created, not rebuilt
    ivf = DenseIndex("IVF_FLAT", ivf_nlist=16, ivf_nprobe=16)
    with open_store(path, ivf) as store:
        assert store.rebuilt_from == "FLAT"
        info = store.dense_index_info()
        assert (info["index_type"], str(info["nlist"])) == ("IVF_FLAT", "16")
        assert store.count() == ROWS  # the rows stay; only the index over them changed
        assert_searches_exactly(store)
    # search-only parameters change nothing stored: no rebuild
    with open_store(path, DenseIndex("IVF_FLAT", ivf_nlist=16, ivf_nprobe=4)) as store:
        assert store.rebuilt_from is None
    # a build parameter does
    with open_store(path, DenseIndex("IVF_FLAT", ivf_nlist=8, ivf_nprobe=8)) as store:
        assert store.rebuilt_from == "IVF_FLAT (nlist 16)"
        assert_searches_exactly(store)
    with open_store(path, DEFAULT_DENSE_INDEX) as store:
        assert store.rebuilt_from == "IVF_FLAT (nlist 8)"
        assert store.dense_index_info()["index_type"] == DEFAULT_DENSE_INDEX.kind
        assert_searches_exactly(store)


def test_dense_index_parameters() -> None:
    hnsw = DenseIndex("HNSW", hnsw_m=8, hnsw_ef_construction=64, hnsw_ef=32)
    assert hnsw.index_spec() == {
        "index_type": "HNSW",
        "metric_type": "IP",
        "params": {"M": 8, "efConstruction": 64},
    }
    assert hnsw.search_params(10)["params"] == {"ef": 32}
    assert hnsw.search_params(100)["params"] == {"ef": 100}  # ef may not be below the hits
    ivf = DenseIndex("IVF_FLAT", ivf_nlist=64, ivf_nprobe=128)
    assert ivf.search_params(10)["params"] == {"nprobe": 64}  # never more lists than exist
    assert DenseIndex("FLAT").search_params(10)["params"] == {}
    assert hnsw.matches({"index_type": "HNSW", "M": "8", "efConstruction": "64"})
    assert not hnsw.matches({"index_type": "HNSW", "M": "16", "efConstruction": "64"})
    assert DenseIndex("AUTOINDEX").matches({"index_type": "AUTOINDEX", "M": "18"})
    assert hnsw.describe() == "HNSW (M 8, efConstruction 64, ef 32)"
    assert DenseIndex("FLAT").describe() == "FLAT"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "IVF_PQ"}, "Unknown dense index type"),
        ({"hnsw_m": 1}, "hnsw_m"),
        ({"ivf_nprobe": 0}, "ivf_nprobe"),
        ({"hnsw_ef": True}, "hnsw_ef"),
    ],
)
def test_dense_index_refuses_bad_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DenseIndex(**kwargs)  # type: ignore[arg-type]
