"""`ingest --watch` semantics: a pass runs on file events, so a new file is indexed and a
deleted one leaves the index within seconds (mirror mode, real watchdog, real pipeline)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ingest.embed import Embedder
from ingest.watch import watch
from tests.ingest.pipeline_kit import build_kit, put
from tests.ingest.test_embed import bundled_embedder


def wait_for(check: object, timeout: float = 30.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_watch_indexes_new_files_and_drops_deleted_ones(tmp_path: Path) -> None:
    embedder: Embedder = bundled_embedder()
    kit = build_kit(tmp_path / "kb", embedder, mode="mirror")
    stop = threading.Event()
    passes: list[int] = []

    def run_pass() -> None:
        kit.pipeline.run_once()
        passes.append(1)

    worker = threading.Thread(
        target=watch,
        args=(kit.drop, run_pass),
        kwargs={"interval_s": 60.0, "settle_s": 0.2, "stop": stop},
        daemon=True,
    )
    worker.start()
    try:
        wait_for(lambda: passes)  # the first pass runs at once
        src = put(kit.drop, "ops/alerts.txt", "Page the on-call engineer when disks pass 90%.")
        took = wait_for(
            lambda: (
                getattr(kit.registry.find("mirror", "ops/alerts.txt"), "status", None) == "indexed"
            )
        )
        assert took < 15  # an event woke the loop: the 60 s interval never elapsed
        doc = kit.registry.find("mirror", "ops/alerts.txt")
        assert doc is not None
        src.unlink()
        # the chunks go first, then the registry row: wait for both (checking the row right
        # after the chunks vanished raced with the purge)
        took = wait_for(
            lambda: kit.store.chunk_ids(doc.doc_id) == [] and kit.registry.get(doc.doc_id) is None
        )
        assert took < 15
    finally:
        stop.set()
        (kit.drop / "wake").write_text("x")  # wake the loop so it sees the stop flag
        worker.join(timeout=90)
    assert not worker.is_alive()
