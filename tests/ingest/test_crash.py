"""Crash safety: `kill -9` at each step of a batch, then a restart, leaves no duplicates, no
orphan chunks and no lost files (real processes, real Milvus Lite, real SQLite; one step also
against a real Milvus server process, which outlives the killed ingest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.reconcile import compare
from tests.ingest.pipeline_kit import build_kit, put
from tests.ingest.test_embed import bundled_embedder
from tests.support.milvus_server import MilvusBackend

FILES = {
    f"hr/note-{i}.txt": f"Policy note {i}: rule number {i} concerns topic {i * 7}."
    for i in range(5)
}

CHILD = r"""
import os, signal, sys
from pathlib import Path
from tests.ingest.pipeline_kit import build_kit
from tests.ingest.test_embed import bundled_embedder

from tests.support.milvus_server import MilvusBackend

root, target, after = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
keys = {"terms": bytes.fromhex(os.environ["T_TERMS"]),
        "content": bytes.fromhex(os.environ["T_CONTENT"])}
milvus = None
if os.environ.get("T_URI"):  # the parent's server: a backend that hands out its URI
    milvus = MilvusBackend("server")
    milvus.uri = lambda path: os.environ["T_URI"]
kit = build_kit(root, bundled_embedder(), ark=bytes.fromhex(os.environ["T_ARK"]), keys=keys,
                milvus=milvus)
owner = {"insert": kit.store, "commit": kit.registry, "vault": kit.vault, "unlink": Path}
name = {"insert": "insert", "commit": "commit_version", "vault": "put", "unlink": "unlink"}[target]
original = getattr(owner[target], name)
calls = {"n": 0}

def dying(*args, **kwargs):
    result = original(*args, **kwargs)
    calls["n"] += 1
    if calls["n"] == after:
        os.kill(os.getpid(), signal.SIGKILL)
    return result

setattr(owner[target], name, dying)
kit.pipeline.run_once(settle=False)
print("finished without dying")
"""


@pytest.mark.parametrize(
    ("target", "after"), [("insert", 2), ("vault", 3), ("commit", 2), ("unlink", 1)]
)
def test_kill_9_then_restart(tmp_path: Path, target: str, after: int) -> None:
    kill_9_then_restart(tmp_path / "kb", target, after, MilvusBackend("lite"))


def test_kill_9_mid_insert_with_a_milvus_server(tmp_path: Path) -> None:
    with MilvusBackend("server") as milvus:
        kill_9_then_restart(tmp_path / "kb", "insert", 2, milvus)


def kill_9_then_restart(root: Path, target: str, after: int, milvus: MilvusBackend) -> None:
    ark, keys = os.urandom(32), {"terms": os.urandom(32), "content": os.urandom(32)}
    for rel, text in FILES.items():
        put(root / "drop", rel, text)
    env = dict(
        os.environ,
        T_ARK=ark.hex(),
        T_TERMS=keys["terms"].hex(),
        T_CONTENT=keys["content"].hex(),
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
        T_URI=milvus.uri(root / "milvus.db") if milvus.is_server else "",
    )
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), target, str(after)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stdout + proc.stderr

    kit = build_kit(root, bundled_embedder(), ark=ark, keys=keys, milvus=milvus)
    report = kit.pipeline.run_once(settle=False)
    assert {f.outcome for f in report.files} <= {"indexed", "unchanged"}
    docs = kit.registry.documents()
    assert sorted(d.rel_path for d in docs) == sorted(FILES)  # no file lost, none twice
    assert all(d.status == "indexed" for d in docs)
    current = {d.doc_id: d.version for d in docs}
    assert kit.store.doc_ids() == set(current)  # no orphan documents in Milvus
    for doc_id, version in current.items():
        assert kit.chunk_versions(doc_id) == {version}  # no stale or duplicate versions
    assert kit.vault is not None
    assert sorted(kit.vault.list_ids()) == sorted(d.vault_id for d in docs)  # no orphan copies
    assert [p for p in (root / "drop").rglob("*") if p.is_file()] == []
    assert kit.registry.unfinished() == []
    n_docs, _ = kit.registry.corpus()
    assert n_docs == kit.store.count()  # BM25 statistics match what is indexed
    assert compare(kit.registry, kit.store).ok
    for rel, text in FILES.items():
        hits = kit.retriever.search(text, groups=["hr"], limit=1).passages
        assert hits and hits[0].document == rel
