"""Ingestion against a real Milvus server process that dies (issue 16).

The server is the ``milvus`` binary of milvus-lite on a loopback port
(`tests/support/milvus_server.py`), killed with ``SIGKILL`` in the middle of a document's
batches: the job notices, waits with a doubling pause, and finishes once the server is back on
the same data file. Afterwards the registry and Milvus agree exactly (no duplicate chunk, no
orphan, no document lost, nothing quarantined) and `ingest.reconcile.compare` finds nothing.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import ingest.store
from ingest.errors import StoreUnavailable
from ingest.reconcile import compare
from ingest.retry import RetryPolicy
from ingest.store import ChunkStore
from tests.ingest.pipeline_kit import Kit, build_kit, put
from tests.ingest.test_embed import bundled_embedder
from tests.support.milvus_server import MilvusBackend, MilvusServer, free_port

pytestmark = pytest.mark.slow
PARAGRAPH = (
    "Section {n} of note {i}: travel requests above {amount} euros need the approval of the "
    "department head, and receipts are kept for {years} years in the finance archive. "
)
FILES = {
    f"{'hr' if i % 2 else 'finance'}/note-{i:02d}.txt": "\n\n".join(
        PARAGRAPH.format(n=n, i=i, amount=100 * i + n, years=n + 3) * 3 for n in range(6)
    )
    for i in range(16)
}
FAST_RETRY = RetryPolicy(for_s=120.0, initial_s=0.2, max_s=1.0)


@pytest.fixture
def server_kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    # Two rows per insert call: every document (3 chunks) takes two calls, so a kill can fall
    # between two batches of one document (part of its chunks written, the rest not).
    monkeypatch.setattr(ingest.store, "_BATCH_ROWS", 2)
    with MilvusBackend("server") as backend:
        kit = build_kit(
            tmp_path / "kb", bundled_embedder(), milvus=backend, retry=FAST_RETRY, timeout=5.0
        )
        yield kit, backend.server(tmp_path / "kb" / "milvus.db")
        kit.store.close()


def kill_at_batch(kit: Kit, server: MilvusServer, batch: int) -> threading.Event:
    """Kill the server right after the ``batch``-th insert call returns (the pipeline's own
    thread sends the signal, so the next batch of the same document meets a dead server)."""
    client = kit.store._client
    real_insert = client.insert
    calls = Counter[str]()
    killed = threading.Event()

    def insert(*args: Any, **kwargs: Any) -> Any:
        result = real_insert(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == batch:
            server.kill()
            killed.set()
        return result

    client.insert = insert
    return killed


def assert_agrees(kit: Kit, files: dict[str, str]) -> None:
    """Registry and Milvus agree: every file indexed once, no duplicate or orphan chunk."""
    docs = kit.registry.documents()
    assert sorted(d.rel_path for d in docs) == sorted(files)  # 0 lost, none twice
    assert {d.status for d in docs} == {"indexed"}
    rows = kit.store.index_rows()  # one row per chunk id (Milvus shows each id once) ...
    assert kit.store.count() == len(rows)  # ... and no id stored twice: 0 duplicate chunks
    current = {d.doc_id: d.version for d in docs}
    assert {(doc, v) for _, doc, v in rows} == set(current.items())  # 0 orphans, 0 stale
    assert len(rows) == sum(d.chunks for d in docs) == kit.registry.corpus()[0]
    assert kit.registry.unfinished() == []
    assert kit.vault is not None
    assert sorted(kit.vault.list_ids()) == sorted(d.vault_id for d in docs)
    assert [p for p in kit.drop.rglob("*") if p.is_file()] == []  # nothing quarantined
    report = compare(kit.registry, kit.store)
    assert report.ok, report.to_dict()


def run_in_thread(kit: Kit) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["report"] = kit.pipeline.run_once(settle=False)
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, name="ingest-under-test", daemon=True)
    thread.start()
    return thread, out


def test_sigkill_mid_batch_the_job_waits_and_finishes_on_the_same_data(server_kit: Any) -> None:
    kit, server = server_kit
    for rel, text in FILES.items():
        put(kit.drop, rel, text)
    killed = kill_at_batch(kit, server, batch=7)  # the 4th document's first of two batches
    thread, out = run_in_thread(kit)
    assert killed.wait(180), out.get("error")
    time.sleep(3.0)  # down for 3 s: the job keeps retrying instead of failing the batch
    assert thread.is_alive(), out
    assert not server.running
    server.start()  # the same data file and port
    thread.join(240)
    assert not thread.is_alive() and "error" not in out, out.get("error")
    report = out["report"]
    assert report.totals["indexed"] == len(FILES) and report.totals["failed"] == 0
    assert report.milvus_retries >= 2 and report.milvus_wait_s >= 2.0
    assert_agrees(kit, FILES)
    hits = kit.retriever.search("travel approval receipts archive", groups=["hr"], limit=3)
    assert hits.passages and all(p.group == "hr" for p in hits.passages)


def test_a_server_that_stays_away_stops_the_job_and_quarantines_nothing(server_kit: Any) -> None:
    """Past milvus.retry_for_s the job stops with the reason; every file waits in the drop
    folder, and the next pass (server back) indexes them all exactly once."""
    kit, server = server_kit
    files = dict(list(FILES.items())[:4])
    for rel, text in files.items():
        put(kit.drop, rel, text)
    kit.pipeline.milvus.policy = RetryPolicy(for_s=2.0, initial_s=0.2, max_s=0.5)
    kill_at_batch(kit, server, batch=3)
    with pytest.raises(StoreUnavailable, match="Gave up writing") as info:
        kit.pipeline.run_once(settle=False)
    assert "Nothing was quarantined" in info.value.hint
    assert not (kit.drop / "_failed").exists()
    waiting = [rel for rel in files if (kit.drop / rel).exists()]
    assert waiting  # the file being written when Milvus died, and those after it
    assert all((kit.drop / rel).exists() != _indexed(kit, rel) for rel in files)
    job = kit.registry.jobs(1)[0]
    assert job["status"] == "failed"
    assert {d.status for d in kit.registry.documents()} <= {"indexed", "indexing"}
    server.start()
    kit.pipeline.milvus.policy = FAST_RETRY
    report = kit.pipeline.run_once(settle=False)
    assert report.totals["failed"] == 0
    assert_agrees(kit, files)


def _indexed(kit: Kit, rel: str) -> bool:
    doc = kit.registry.find("inbox", rel)
    return doc is not None and doc.status == "indexed"


def test_opening_a_store_on_a_server_that_is_down_fails_at_once_with_the_reason() -> None:
    """What `serve`, `ingest` and `status` meet when Milvus is down as they start."""
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        ChunkStore.open(f"http://127.0.0.1:{port}", dim=8, model_id="m", timeout=5.0)
    assert time.monotonic() - started < 5.0
    assert f"127.0.0.1:{port}" in info.value.message and "milvus.uri" in info.value.hint
