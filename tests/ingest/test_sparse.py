"""Keyed BM25: the analyzer, keyed term ids, BM25 weights and corpus statistics."""

from __future__ import annotations

import hashlib
import hmac
import math
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.sparse import (
    Bm25Params,
    CorpusStats,
    TermHasher,
    analyze,
    configure_jieba,
    doc_term_freqs,
    doc_vector,
    query_vector,
)

ROOT = Path(__file__).resolve().parents[2]
KEY = bytes(range(32))


# --- analyzer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("The running dogs are barking!", ["run", "dog", "bark"]),
        ("Per diem: 45 EUR, 2024-01-01.", ["per", "diem", "45", "eur", "2024", "01", "01"]),
        ("ＡＢＣ１２３ full-width", ["abc123", "full", "width"]),  # NFKC folds full-width forms
        ("naïve Café", ["naïv", "café"]),
        ("x" * 40 + " kept", ["kept"]),  # over-long "words" (hashes, base64) are noise
    ],
)
def test_english_analysis(text: str, terms: list[str]) -> None:
    assert analyze(text) == terms


def test_chinese_and_mixed_analysis() -> None:
    assert analyze("我爱北京天安门，你好！") == ["我", "爱", "北京", "天安", "天安门", "你好"]
    # Each script run on its own: Latin words lower-cased and stemmed, digits kept.
    assert analyze("使用Milvus 2.5数据库") == ["使用", "milvus", "2", "5", "数据", "据库", "数据库"]
    assert analyze("。，！？；：“”《》、 \n\t") == []


def test_analysis_is_the_same_from_many_threads() -> None:
    texts = [f"Running {i} travellers booked hotels 出差{i}人预订酒店" for i in range(300)]
    expected = [analyze(t) for t in texts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(analyze, texts)) == expected


def _run_python(code: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


def test_jieba_loads_lazily_quietly_and_writes_nothing_by_default(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom ingest.sparse import analyze\n"
        "assert analyze('plain English') == ['plain', 'english']\n"
        "assert 'jieba' not in sys.modules\n"
        "assert analyze('中文分词') == ['中文', '分词']\n"
        "assert 'jieba' in sys.modules\n"
    )
    done = _run_python(code, tmp_path)
    assert done.stderr == "" and done.stdout == ""
    assert list(tmp_path.iterdir()) == []  # no jieba.cache in the temp dir


def test_jieba_cache_goes_where_configured(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    code = (
        "from pathlib import Path\nfrom ingest.sparse import analyze, configure_jieba\n"
        f"configure_jieba(Path({str(cache)!r}))\n"
        "assert analyze('中文分词') == ['中文', '分词']\n"
    )
    for _ in range(2):  # the second start loads the cache written by the first
        done = _run_python(code, tmp_path)
        assert done.stderr == ""
    assert [p.name for p in cache.iterdir()] == ["jieba.cache"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_configure_jieba_after_first_use_is_refused() -> None:
    analyze("加载")
    with pytest.raises(RuntimeError):
        configure_jieba(None)


# --- keyed term ids ------------------------------------------------------------------------


def test_term_ids_are_frozen() -> None:
    """Ids are stored in Milvus: changing how they are made orphans every existing index."""
    hasher = TermHasher(KEY)
    assert [hasher.term_id(t) for t in ("travel", "旅行", "")] == [
        3319701597,
        989668555,
        1091319401,
    ]
    digest = hmac.new(KEY, b"travel", hashlib.sha256).digest()
    assert hasher.term_id("travel") == int.from_bytes(digest[:8], "big") % (2**32 - 1)


def test_term_ids_depend_on_the_key() -> None:
    terms = [f"term{i}" for i in range(200)]
    a, b = TermHasher(KEY), TermHasher(bytes(32))
    ids = [a.term_id(t) for t in terms]
    assert all(0 <= i < 2**32 - 1 for i in ids) and len(set(ids)) == len(terms)
    assert sum(x == b.term_id(t) for x, t in zip(ids, terms, strict=True)) == 0


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33), "k" * 32])
def test_term_key_must_be_32_bytes(key: object) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        TermHasher(key)  # type: ignore[arg-type]


def test_key_is_not_shown() -> None:
    assert KEY.hex() not in repr(TermHasher(KEY)) and str(KEY) not in repr(TermHasher(KEY))


# --- BM25 weights --------------------------------------------------------------------------


def test_document_and_query_weights_by_hand() -> None:
    hasher = TermHasher(KEY)
    tf = doc_term_freqs(["per", "diem", "per"], hasher)
    per, diem = hasher.term_id("per"), hasher.term_id("diem")
    assert tf == {per: 2, diem: 1}
    vec = doc_vector(tf, doc_len=3, avgdl=6.0, params=Bm25Params(k1=1.2, b=0.75))
    norm = 1.2 * (1 - 0.75 + 0.75 * 3 / 6)
    assert vec == pytest.approx({per: 2 * 2.2 / (2 + norm), diem: 1 * 2.2 / (1 + norm)})
    # Repeated query terms add (Milvus' query vector holds counts); unseen terms get df 0.
    q = query_vector(["per", "per", "rate"], hasher, df={per: 3}, n_docs=10)
    rate = hasher.term_id("rate")
    assert q == pytest.approx(
        {per: 2 * math.log(1 + (10 - 3 + 0.5) / 3.5), rate: math.log(1 + 10.5 / 0.5)}
    )
    assert doc_vector({}, doc_len=0, avgdl=0.0, params=Bm25Params()) == {}
    assert doc_vector({per: 1}, doc_len=1, avgdl=0.0, params=Bm25Params()) == pytest.approx(
        {per: 1.0}  # avgdl under 1 is raised to 1, as Milvus does
    )


DOCS = st.lists(
    st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), min_size=1, max_size=12),
    min_size=1,
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(DOCS, st.lists(st.sampled_from(["a", "b", "c", "z"]), min_size=1, max_size=4))
def test_keyed_scores_equal_textbook_bm25_on_words(docs: list[list[str]], query: list[str]) -> None:
    hasher, params = TermHasher(KEY), Bm25Params()
    stats = CorpusStats()
    for d in docs:
        stats.add(doc_term_freqs(d, hasher), len(d))
    q = query_vector(query, hasher, df=stats.df, n_docs=stats.n_docs)
    avgdl = sum(map(len, docs)) / len(docs)
    for d in docs:
        vec = doc_vector(
            doc_term_freqs(d, hasher), doc_len=len(d), avgdl=stats.avgdl, params=params
        )
        keyed = sum(w * vec.get(t, 0.0) for t, w in q.items())
        counts = Counter(d)
        plain = 0.0
        for term in query:
            df = sum(term in other for other in docs)
            idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
            tf = counts[term]
            plain += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(d) / max(avgdl, 1.0)))
        assert keyed == pytest.approx(plain)


def test_ranking_finds_the_matching_passage() -> None:
    hasher = TermHasher(KEY)
    passages = [
        "Per diem rates for travel to Paris are 120 EUR a day.",
        "Receipts must be kept for seven years.",
        "出差的每日津贴标准为每天一百二十欧元。",
        "报销时必须保留发票七年。",
    ]
    docs = [analyze(p) for p in passages]
    stats = CorpusStats()
    for d in docs:
        stats.add(doc_term_freqs(d, hasher), len(d))
    vecs = [
        doc_vector(
            doc_term_freqs(d, hasher), doc_len=len(d), avgdl=stats.avgdl, params=Bm25Params()
        )
        for d in docs
    ]

    def best(query: str) -> int:
        q = query_vector(analyze(query), hasher, df=stats.df, n_docs=stats.n_docs)
        scores = [sum(w * v.get(t, 0.0) for t, w in q.items()) for v in vecs]
        return scores.index(max(scores))

    assert best("what is the daily per diem in Paris?") == 0
    assert best("how long to keep receipts") == 1
    assert best("每日津贴是多少") == 2
    assert best("发票保留几年") == 3


# --- corpus statistics ---------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(DOCS)
def test_stats_add_then_remove_returns_to_empty(docs: list[list[str]]) -> None:
    hasher = TermHasher(KEY)
    stats = CorpusStats()
    tfs = [doc_term_freqs(d, hasher) for d in docs]
    for tf, d in zip(tfs, docs, strict=True):
        stats.add(tf, len(d))
    assert stats.n_docs == len(docs) and stats.total_len == sum(map(len, docs))
    assert stats.avgdl == pytest.approx(stats.total_len / len(docs))
    assert CorpusStats.from_json(stats.to_json()) == stats
    for tf, d in zip(reversed(tfs), reversed(docs), strict=True):
        stats.remove(tf, len(d))
    assert stats == CorpusStats() and stats.avgdl == 0.0


def test_removing_an_unknown_document_is_refused() -> None:
    stats = CorpusStats()
    stats.add({1: 2}, 2)
    with pytest.raises(ValueError, match="out of sync"):
        stats.remove({7: 1}, 1)
    with pytest.raises(ValueError, match="out of sync"):
        stats.remove({1: 1}, 5)
    assert stats == CorpusStats(n_docs=1, total_len=2, df={1: 1})


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"n_docs": True, "total_len": 0, "df": {}},
        {"n_docs": -1, "total_len": 0, "df": {}},
        {"n_docs": 1, "total_len": 1, "df": []},
        {"n_docs": 1, "total_len": 1, "df": {"x": 1}},
        {"n_docs": 1, "total_len": 1, "df": {"²": 1}},
        {"n_docs": 1, "total_len": 1, "df": {"5": 2}},  # df above n_docs
        {"n_docs": 1, "total_len": 1, "df": {"5": 0}},
        {"n_docs": 1, "total_len": 1, "df": {str(2**32 - 1): 1}},
    ],
)
def test_malformed_stats_are_refused(obj: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="malformed"):
        CorpusStats.from_json(obj)
