"""The BEIR-layout loader on the real tuning sets and on small hand-made folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import InvalidInput
from appliance.rag.beir import load_beir

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _write_set(root: Path, qrels: str, *, queries: list[dict[str, object]] | None = None) -> Path:
    (root / "qrels").mkdir(parents=True)
    corpus = [
        {"_id": "d1", "title": "Alpha", "text": "first passage"},
        {"_id": "d2", "title": "", "text": "second passage"},
        {"_id": 3, "text": "numeric id, no title"},
    ]
    if queries is None:
        queries = [{"_id": "q1", "text": "alpha?"}, {"_id": "q2", "text": "never judged"}]
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in corpus) + "\n\n")
    (root / "queries.jsonl").write_text("\n".join(json.dumps(r) for r in queries) + "\n")
    (root / "qrels" / "test.tsv").write_text(qrels)
    return root


def test_small_set_keeps_judged_queries_only(tmp_path: Path) -> None:
    qrels = "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\t3\t0\nq9\td2\t1\n"
    data = load_beir(_write_set(tmp_path / "mini", qrels))
    assert data.name == "mini"
    assert [p.id for p in data.passages] == ["d1", "d2", "3"]
    assert [p.full_text for p in data.passages] == [
        "Alpha\nfirst passage",
        "second passage",
        "numeric id, no title",
    ]
    assert data.queries == {"q1": "alpha?"}  # q2 unjudged, q9 not in queries.jsonl
    assert data.qrels == {"q1": {"d1": 2, "3": 0}}
    assert data.unjudged_queries == 1


def test_qrels_without_header_lose_no_judgement(tmp_path: Path) -> None:
    data = load_beir(_write_set(tmp_path, "q1\td1\t1\nq1\td2\t2.0\n"))
    assert data.qrels == {"q1": {"d1": 1, "d2": 2}}


@pytest.mark.parametrize(
    ("qrels", "queries", "message"),
    [
        ("query-id\tcorpus-id\tscore\nq1 d1 1\n", None, "line 2 does not have 3"),
        ("q1\td1\t1\nq1\td2\thigh\n", None, "line 2 has a score 'high'"),
        ("q1\td1\t1\n", [{"text": "no id"}], 'line 1 has no "_id"'),
        ("q1\td1\t1\n", [{"_id": "q1", "text": 5}], 'line 1 has no "text"'),
    ],
)
def test_malformed_files_name_the_line(
    tmp_path: Path, qrels: str, queries: list[dict[str, object]] | None, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message) as err:
        load_beir(_write_set(tmp_path, qrels, queries=queries))
    assert "Fix that line" in err.value.diagnostics()


def test_broken_json_and_missing_files(tmp_path: Path) -> None:
    root = _write_set(tmp_path, "q1\td1\t1\n")
    (root / "corpus.jsonl").write_text('{"_id": "d1", "text": "ok"}\n[1, 2]\n')
    with pytest.raises(InvalidInput, match="line 2 is not a JSON object"):
        load_beir(root)
    (root / "corpus.jsonl").write_text("{not json\n")
    with pytest.raises(InvalidInput, match="line 1 is not valid JSON"):
        load_beir(root)
    (root / "qrels" / "test.tsv").unlink()
    with pytest.raises(InvalidInput, match=r"test\.tsv is missing"):
        load_beir(root)


@pytest.mark.parametrize(
    ("name", "passages", "judged", "judgements", "grades"),
    [
        ("msmarco-subset", 5000, 43, 4102, {1, 2, 3}),
        ("dbpedia-subset", 5000, 40, 3709, {0, 1, 2}),
        ("cmrc2018-trial", 256, 1002, 1002, {1}),
        ("squad2-train-subset/beir", 642, 4122, 4122, {1}),
    ],
)
def test_tuning_sets_load_with_the_documented_counts(
    name: str, passages: int, judged: int, judgements: int, grades: set[int]
) -> None:
    data = load_beir(DATA / name)
    assert len(data.passages) == passages
    assert len({p.id for p in data.passages}) == passages
    assert len(data.queries) == judged
    assert sum(len(j) for j in data.qrels.values()) == judgements
    assert {g for j in data.qrels.values() for g in j.values()} == grades
    corpus_ids = {p.id for p in data.passages}
    assert all(d in corpus_ids for j in data.qrels.values() for d in j)
