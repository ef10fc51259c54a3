"""BM25 statistics per group in the registry: kept on index, replace and delete, summed only
over the groups a query may read, and built for registries that kept one global set."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from ingest.bm25_stats import TermCounts
from ingest.registry import Registry
from ingest.sparse import TermHasher, analyze, query_vector
from tests.ingest.pipeline_kit import build_kit, put
from tests.ingest.test_embed import bundled_embedder


def index(reg: Registry, rel_path: str, group: str, counts: TermCounts) -> str:
    doc_id, version = reg.begin_version(
        source="inbox", rel_path=rel_path, group=group, content_hmac="h", size=1, fmt=".md"
    )
    reg.commit_version(
        doc_id, version, counts=counts, pages=1, title_enc="", size=1, fmt=".md", now=1.0
    )
    return doc_id


def test_a_query_sees_only_the_groups_it_may_read(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.db", durable=False)
    index(reg, "finance/a.md", "finance", TermCounts(2, 20, {1: 2, 2: 1}))
    index(reg, "public/p.md", "public", TermCounts(1, 5, {1: 1}))
    secret = index(reg, "hr/b.md", "hr", TermCounts(3, 60, {1: 3, 9: 3}))
    assert reg.query_stats([1, 2, 9], ["finance", "public"]) == (3, {1: 3, 2: 1})
    assert reg.query_stats([1, 9], ["hr"]) == (3, {1: 3, 9: 3})
    assert reg.query_stats([1], []) == (0, {})
    assert reg.corpus(["finance"]) == (2, 20) and reg.corpus() == (6, 85)
    assert reg.document_frequencies([1, 9]) == {1: 6, 9: 3}
    reg.delete(secret)
    assert reg.query_stats([1, 9], ["hr"]) == (0, {})
    assert reg.corpus() == (3, 25) and reg.document_frequencies([9]) == {}


def test_a_new_version_replaces_the_old_counts_in_its_group(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.db", durable=False)
    index(reg, "finance/a.md", "finance", TermCounts(2, 20, {1: 2, 2: 1}))
    index(reg, "finance/a.md", "finance", TermCounts(1, 7, {2: 1, 3: 1}))
    assert reg.query_stats([1, 2, 3], ["finance"]) == (1, {2: 1, 3: 1})
    with sqlite3.connect(reg.path) as db:  # emptied rows do not linger
        assert db.execute("SELECT COUNT(*) FROM bm25_group_df").fetchone()[0] == 2


def test_statistics_match_a_recount_after_random_changes(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.db", durable=False)
    rng = random.Random(7)
    current: dict[str, tuple[str, TermCounts]] = {}
    for _ in range(60):
        group = rng.choice(["finance", "hr", "public"])
        rel = f"{group}/{rng.randrange(6)}.md"
        if rel in current and rng.random() < 0.3:
            doc = reg.find("inbox", rel)
            assert doc is not None
            reg.delete(doc.doc_id)
            reg.purge(doc.doc_id)
            del current[rel]
            continue
        df = {t: rng.randint(1, 3) for t in rng.sample(range(20), rng.randint(1, 6))}
        counts = TermCounts(max(df.values()), rng.randint(5, 50), df)
        index(reg, rel, group, counts)
        current[rel] = (group, counts)
    for readable in (["finance"], ["hr", "public"], ["finance", "hr", "public"]):
        chunks = sum(c.chunks for g, c in current.values() if g in readable)
        expected: dict[int, int] = {}
        for g, c in current.values():
            for term, n in c.df.items():
                if g in readable:
                    expected[term] = expected.get(term, 0) + n
        assert reg.query_stats(range(20), readable) == (chunks, expected)


def test_a_registry_with_global_statistics_gets_per_group_ones(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    reg = Registry(path, durable=False)
    index(reg, "finance/a.md", "finance", TermCounts(2, 20, {1: 2, 2: 1}))
    index(reg, "hr/b.md", "hr", TermCounts(3, 60, {1: 3, 9: 3}))
    before = reg.query_stats([1, 2, 9], ["finance"]), reg.query_stats([1, 2, 9], ["hr"])
    with sqlite3.connect(path) as db:  # what an older version left: one global set
        db.executescript(
            "DELETE FROM meta WHERE key='bm25'; DELETE FROM bm25_group_df;"
            "DELETE FROM bm25_group_corpus;"
            "CREATE TABLE bm25_df (term INTEGER PRIMARY KEY, df INTEGER NOT NULL);"
            "CREATE TABLE bm25_corpus (id INTEGER PRIMARY KEY CHECK (id = 1),"
            " n_docs INTEGER NOT NULL, total_len INTEGER NOT NULL);"
            "INSERT INTO bm25_df VALUES (1, 5), (2, 1), (9, 3);"
            "INSERT INTO bm25_corpus VALUES (1, 5, 80);"
        )
    reopened = Registry(path, durable=False)
    after = reopened.query_stats([1, 2, 9], ["finance"]), reopened.query_stats([1, 2, 9], ["hr"])
    assert after == before
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert not {"bm25_df", "bm25_corpus"} & tables


def test_a_documents_weights_do_not_depend_on_other_groups(tmp_path: Path) -> None:
    """A chunk's BM25 weights use its own group's average length, not the whole corpus'."""
    keys = {"terms": b"t" * 32, "content": b"c" * 32}
    hr = {f"hr/long-{i}.md": "# Hiring\n\n" + "The hiring plan grows. " * 40 for i in range(4)}
    scores = []
    for name, earlier in (("alone", {}), ("after-hr", hr)):
        kit = build_kit(tmp_path / name, bundled_embedder(), keys=keys)
        for rel, text in earlier.items():
            put(kit.drop, rel, text)
        kit.pipeline.run_once(settle=False)
        put(kit.drop, "finance/review.md", "# Review\n\nBudget review: budget and canteen.\n")
        kit.pipeline.run_once(settle=False)
        tokens, hasher = analyze("budget canteen hiring"), TermHasher(keys["terms"])
        n_docs, df = kit.registry.query_stats({hasher.term_id(t) for t in tokens}, ["finance"])
        vector = query_vector(tokens, hasher, df=df, n_docs=n_docs)
        hits = kit.store.search_sparse(vector, groups=["finance"], limit=5)
        scores.append([h.score for h in hits])
        kit.store.close()
    assert scores[0] == scores[1] and len(scores[0]) == 1
