"""The Milvus server benchmark's building blocks at a tiny scale, for correctness only (no
timing is asserted): the same rows on both sides, hybrid searches answered by both, and a
killed server found again after its restart."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import bench_milvus_server as bms  # noqa: E402

from tests.ingest.test_embed import bundled_embedder  # noqa: E402

pytestmark = pytest.mark.slow


def test_both_sides_hold_the_same_rows_and_the_server_comes_back(tmp_path: Path) -> None:
    embedder = bundled_embedder()
    corpus = bms.Corpus(embedder, 300)
    sides = {name: bms.Side(name, tmp_path / name, embedder, corpus) for name in bms.SIDES}
    try:
        writes = bms.build(sides, corpus)
        assert writes["rows"] == 300
        assert [s.store.count() for s in sides.values()] == [300, 300]
        search = bms.search_latency(sides, corpus.queries[:12])
        assert search["queries"] == 12 and set(search["lite"]) == {"p50_ms", "p95_ms"}
        back = bms.recovery(sides["server"], corpus.queries[0], restarts=1, down_s=0.5)
        assert back["restarts"] == 1 and back["listening_to_first_answer_s"]["max"] > 0
        assert len(back["collection_loaded_to_first_answer_s"]["seconds"]) == 1
        assert sides["server"].store.count() == 300  # the same data after the restart
    finally:
        for side in sides.values():
            side.close()
