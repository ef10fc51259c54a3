"""The Milvus chunk store (ingest/store.py, ingest/schema.py) with real embeddings, real
keyed-hash sparse vectors and real payload encryption, on both backends (fixture ``milvus``):
a Milvus Lite file and a real Milvus server process over TCP."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from ingest.errors import IngestError, SchemaMismatch
from ingest.schema import ChunkRecord, Hit, PassageText, open_passage, seal_passage
from ingest.store import ChunkStore
from secure.errors import TamperedError
from secure.records import RecordCipher
from tests.ingest.test_embed import bundled_embedder
from tests.support.milvus_server import MilvusBackend

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384
TERM_KEY = os.urandom(32)
CIPHER = RecordCipher(os.urandom(32), context="test:chunks")
CANARY = "Canary: the Kestrel merger closes on 2031-02-30."
PASSAGES = {  # doc id -> (group, text)
    "leave": ("public", "Employees may carry over at most five days of unused annual leave."),
    "cooling": ("public", "The server room must stay below 24 degrees Celsius at all times."),
    "budget": ("finance", "The finance budget for the third quarter was cut by twelve percent."),
    "merger": ("finance", CANARY),
}


def terms(text: str) -> dict[int, float]:
    """Keyed-hash term ids, as the real pipeline computes them elsewhere (no vocabulary)."""
    words = Counter(re.findall(r"[a-z0-9]+", text.lower()))
    out = {}
    for word, count in words.items():
        digest = hmac.new(TERM_KEY, word.encode(), hashlib.sha256).digest()
        out[int.from_bytes(digest[:4], "big") % (2**32 - 1)] = float(count)
    return out


def record(
    doc_id: str,
    text: str,
    *,
    group: str = "public",
    version: int = 1,
    index: int = 0,
    dense: np.ndarray | None = None,
) -> ChunkRecord:
    chunk_id = f"{doc_id}:{version}:{index}"
    return ChunkRecord(
        id=chunk_id,
        doc_id=doc_id,
        version=version,
        groups=(group,),
        page=index + 1,
        kind="text",
        language="en",
        payload=seal_passage(CIPHER, chunk_id, PassageText(text, ("Handbook", "Rules"), "HR")),
        dense=np.ones(DIM, dtype=np.float32) / np.sqrt(DIM) if dense is None else dense,
        sparse=terms(text),
        tokens=len(text.split()),
    )


def open_store(uri: str, **kwargs: object) -> ChunkStore:
    options: dict[str, object] = {"dim": DIM, "model_id": MODEL, **kwargs}
    return ChunkStore.open(uri, **options)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path, milvus: MilvusBackend) -> Iterator[ChunkStore]:
    with open_store(milvus.uri(tmp_path / "milvus.db")) as opened:
        yield opened


@pytest.fixture(scope="module")
def corpus(
    tmp_path_factory: pytest.TempPathFactory, milvus_module: MilvusBackend
) -> Iterator[ChunkStore]:
    """One read-only collection of real sentences, shared by the search tests."""
    embedder = bundled_embedder()
    texts = [text for _, text in PASSAGES.values()]
    vectors = embedder.embed_documents(texts)
    records = [
        record(doc_id, text, group=group, dense=vectors[i])
        for i, (doc_id, (group, text)) in enumerate(PASSAGES.items())
    ]
    path = tmp_path_factory.mktemp("corpus") / "milvus.db"
    with open_store(milvus_module.uri(path)) as opened:
        opened.insert(records)
        opened.flush()
        yield opened


def docs(hits: Sequence[Hit]) -> list[str]:
    return [hit.doc_id for hit in hits]


def test_dense_search_ranks_the_relevant_passage_first(corpus: ChunkStore) -> None:
    embedder = bundled_embedder()
    groups = ["public", "finance"]
    for question, expected in [
        ("how many vacation days can I keep?", "leave"),
        ("temperature limit in the data center", "cooling"),
        ("quarterly spending reduction", "budget"),
    ]:
        hits = corpus.search_dense(embedder.embed_query(question), groups=groups, limit=4)
        assert docs(hits)[0] == expected
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_sparse_search_ranks_by_shared_terms(corpus: ChunkStore) -> None:
    hits = corpus.search_sparse(terms("unused annual leave"), groups=["public"], limit=4)
    assert docs(hits) == ["leave"]
    hits = corpus.search_sparse(terms("budget quarter"), groups=["finance"], limit=4)
    assert docs(hits)[0] == "budget"
    assert corpus.search_sparse({}, groups=["public"], limit=4) == []


def test_hits_carry_metadata_and_a_payload_only_the_key_opens(corpus: ChunkStore) -> None:
    (hit,) = corpus.search_sparse(terms("server room"), groups=["public"], limit=1)
    assert (hit.id, hit.doc_id, hit.version, hit.page, hit.groups) == (
        "cooling:1:0",
        "cooling",
        1,
        1,
        ("public",),
    )
    assert (hit.kind, hit.language, hit.tokens) == ("text", "en", 12)
    assert "server" not in hit.payload
    passage = open_passage(CIPHER, hit.id, hit.payload)
    assert passage.text == PASSAGES["cooling"][1]
    assert passage.section == "Handbook > Rules" and passage.title == "HR"


def test_a_group_never_sees_another_groups_rows(corpus: ChunkStore) -> None:
    embedder = bundled_embedder()
    query = embedder.embed_query("finance budget cut third quarter")
    public = corpus.search_dense(query, groups=["public"], limit=10)
    assert set(docs(public)) == {"leave", "cooling"}
    assert corpus.search_sparse(terms("finance budget"), groups=["public"], limit=10) == []
    assert set(docs(corpus.search_dense(query, groups=["finance"], limit=10))) == {
        "budget",
        "merger",
    }
    assert corpus.search_dense(query, groups=[], limit=10) == []
    assert corpus.search_sparse(terms("budget"), groups=[], limit=10) == []
    assert corpus.search_dense(query, groups=["nobody"], limit=10) == []
    with pytest.raises(ValueError, match="not one string"):
        corpus.search_dense(query, groups="finance", limit=10)


@pytest.mark.parametrize(
    "group",
    [
        'public"]) or true or array_contains_any(groups, ["x',
        "public' || 1==1",
        "Public",
        "",
        "a" * 65,
        "fin ance",
        "财务",
    ],
)
def test_filter_injection_is_refused_before_milvus_is_asked(corpus: ChunkStore, group: str) -> None:
    vector = np.ones(DIM, dtype=np.float32)
    with pytest.raises(IngestError) as info:
        corpus.search_dense(vector, groups=["public", group], limit=5)
    assert info.value.code == "invalid-group"
    with pytest.raises(IngestError):
        corpus.search_sparse({1: 1.0}, groups=[group], limit=5)


def test_doc_id_injection_is_refused(store: ChunkStore) -> None:
    store.insert([record("keep", "a row that must survive")])
    for bad in ['x" or doc_id != "', "a b", "", "d:1"]:
        with pytest.raises(ValueError, match="document id"):
            store.delete_document(bad)
    assert store.count() == 1


def test_a_payload_moved_to_another_row_does_not_open(store: ChunkStore) -> None:
    secret = record("budget", PASSAGES["budget"][1], group="finance")
    moved = record("leave", "public text", group="public")
    moved = ChunkRecord(**{**moved.__dict__, "payload": secret.payload})
    store.insert([secret, moved])
    (hit,) = store.search_sparse(terms("public text"), groups=["public"], limit=5)
    assert hit.id == "leave:1:0"
    with pytest.raises(TamperedError):
        open_passage(CIPHER, hit.id, hit.payload)


def test_delete_by_document_and_version(store: ChunkStore) -> None:
    store.insert(
        [record("a", f"old {i}", version=1, index=i) for i in range(3)]
        + [record("a", f"new {i}", version=2, index=i) for i in range(2)]
        + [record("b", "other document")]
    )
    assert store.count() == 6 and store.doc_ids() == {"a", "b"}
    store.delete_versions_except("a", keep=2)
    assert store.chunk_ids("a") == ["a:2:0", "a:2:1"]
    assert docs(store.search_sparse(terms("old"), groups=["public"], limit=10)) == []
    store.delete_document("a", version=2)
    assert store.chunk_ids("a") == [] and store.doc_ids() == {"b"}
    store.delete_document("b")
    assert store.count() == 0 and store.doc_ids() == set()


def test_schema_mismatch_is_refused_with_what_to_do(tmp_path: Path, milvus: MilvusBackend) -> None:
    path = milvus.uri(tmp_path / "milvus.db")
    with open_store(path) as created:
        created.insert([record("a", "persisted row")])
    with open_store(path) as reopened:  # holds the Lite server for the refused opens below
        assert reopened.count() == 1
        with pytest.raises(SchemaMismatch) as info:
            open_store(path, dim=768, model_id="acme/e5-large@0123456789ab")
        message = info.value.diagnostics()
        assert f"built with {MODEL} (384-d)" in message
        assert "acme/e5-large@0123456789ab (768-d)" in message
        assert "appliance docs reindex" in message
        with pytest.raises(SchemaMismatch, match="other-model"):
            open_store(path, model_id="other-model")
        with pytest.raises(SchemaMismatch, match="768-d"):
            open_store(path, dim=768)
        other = open_store(path, collection="scratch", dim=8, model_id="tiny")
        assert other.count() == 0  # another collection in the same file is independent
        other.drop()
        assert reopened.count() == 1


def test_a_foreign_collection_is_not_adopted(tmp_path: Path, milvus: MilvusBackend) -> None:
    from pymilvus import DataType, MilvusClient

    path = milvus.uri(tmp_path / "milvus.db")
    with open_store(path, collection="ours"):
        client = MilvusClient(path)
        schema = MilvusClient.create_schema(auto_id=False, description="someone else's")
        schema.add_field("pk", DataType.INT64, is_primary=True)
        schema.add_field("v", DataType.FLOAT_VECTOR, dim=DIM)
        client.create_collection("chunks", schema=schema)
        with pytest.raises(SchemaMismatch, match="not created by the appliance"):
            open_store(path)


def test_bad_records_insert_nothing(store: ChunkStore) -> None:
    good = record("ok", "fine")
    bad_rows = [
        ChunkRecord(**{**good.__dict__, "dense": np.ones(DIM - 1)}),
        ChunkRecord(**{**good.__dict__, "dense": np.full(DIM, np.nan)}),
        ChunkRecord(**{**good.__dict__, "sparse": {2**32 - 1: 1.0}}),
        ChunkRecord(**{**good.__dict__, "sparse": {5: -1.0}}),
        ChunkRecord(**{**good.__dict__, "groups": ()}),
        ChunkRecord(**{**good.__dict__, "groups": "finance"}),
        ChunkRecord(**{**good.__dict__, "version": -1}),
        ChunkRecord(**{**good.__dict__, "kind": 'text" or 1'}),
        ChunkRecord(**{**good.__dict__, "payload": "v1.ü"}),
        ChunkRecord(**{**good.__dict__, "payload": "Employees may carry over five days."}),
    ]
    for bad in bad_rows:
        with pytest.raises((ValueError, IngestError)):
            store.insert([good, bad])
    too_big = ChunkRecord(**{**good.__dict__, "payload": "v1." + "A" * 70_000})
    with pytest.raises(IngestError) as info:
        store.insert([too_big])
    assert info.value.code == "chunk-too-large"
    assert store.count() == 0


def test_no_plaintext_in_the_milvus_files(tmp_path: Path, milvus: MilvusBackend) -> None:
    with open_store(milvus.uri(tmp_path / "milvus.db")) as opened:
        opened.insert([record("merger", CANARY, group="finance")])
        opened.flush()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "milvus.db" for p in files)
    for needle in (CANARY.encode(), b"Kestrel", b"Handbook"):
        assert not [p for p in files if needle in p.read_bytes()]


def test_limits_and_closed_store(tmp_path: Path, milvus: MilvusBackend) -> None:
    uri = milvus.uri(tmp_path / "milvus.db")
    opened = open_store(uri)
    with pytest.raises(ValueError, match="limit"):
        opened.search_dense(np.ones(DIM), groups=["public"], limit=0)
    with pytest.raises(ValueError):
        open_store(uri, collection="bad-name")
    opened.close()
    opened.close()
    with pytest.raises(IngestError, match="closed"):
        opened.count()
    with pytest.raises(IngestError, match="does not exist"):
        open_store(str(tmp_path / "missing" / "milvus.db"))


def test_two_stores_on_one_milvus_share_it(tmp_path: Path, milvus: MilvusBackend) -> None:
    """Ingest and retrieval may open the same file or server in one process: closing one keeps
    the other (for Lite, the file's server process stays until its last store closes)."""
    uri = milvus.uri(tmp_path / "milvus.db")
    first = open_store(uri)
    second = open_store(uri)
    first.insert([record("a", "shared row")])
    first.close()
    assert second.count() == 1
    second.close()
    with open_store(uri) as third:  # the Lite server restarts on demand
        assert third.doc_ids() == {"a"}
