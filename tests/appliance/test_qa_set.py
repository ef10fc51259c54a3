"""The question-answering set loader: the shared sets, the tuning split, refusals, sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import InvalidInput
from appliance.rag.qa_set import TUNE_ARTICLES, load_qa_set, sample_questions

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
SQUAD = DATA / "squad2-train-subset" / "beir"
CMRC = DATA / "cmrc2018-trial"

CORPUS = [
    {"_id": "p1", "title": "Budget", "text": "The travel budget is 48,000 euros."},
    {"_id": "p2", "title": "Leave", "text": "Every employee has 28 days of leave."},
]


def write_set(
    root: Path, queries: list[dict[str, object]], qrels: str = "", extra: dict | None = None
) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in CORPUS) + "\n")
    (root / "queries.jsonl").write_text("\n".join(json.dumps(r) for r in queries) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    if extra is not None:
        (root / "answers.json").write_text(json.dumps(extra))
    return root


def q(qid: str, answers: list[str] | None = None, **meta: object) -> dict[str, object]:
    metadata = dict(meta)
    if answers is not None:
        metadata["answers"] = answers
    return {"_id": qid, "text": f"question {qid}?", "metadata": metadata}


@pytest.mark.skipif(not SQUAD.is_dir(), reason="shared data not present")
def test_squad_subset_and_its_fixed_split() -> None:
    data = load_qa_set(SQUAD)
    assert data.name == "squad2-train-subset"  # a folder named "beir" takes its parent's name
    assert (len(data.passages), len(data.questions)) == (642, 4470)
    assert sum(x.impossible for x in data.questions) == 348
    titles = {x.article for x in data.questions}
    assert titles > TUNE_ARTICLES and len(titles) == 9
    tune, held = data.only("tune").questions, data.only("held-out").questions
    assert len(tune) + len(held) == 4470 and len(held) == 2407
    assert {x.article for x in tune}.isdisjoint({x.article for x in held})
    # each side has one of the two articles with unanswerable questions
    assert sum(x.impossible for x in tune) == 188 and sum(x.impossible for x in held) == 160
    first = data.questions[0]
    assert first.answers == ("in the late 1990s",) and first.gold_docs == {"a00-p00"}


@pytest.mark.skipif(not CMRC.is_dir(), reason="shared data not present")
def test_cmrc_trial_is_all_held_out() -> None:
    data = load_qa_set(CMRC)
    assert len(data.questions) == 1002 and not any(x.impossible for x in data.questions)
    assert data.only("held-out").questions == data.questions
    assert data.questions[0].answers == ("踢爆",)


def test_missing_answers_come_from_a_squad_json(tmp_path: Path) -> None:
    squad = {
        "data": [{"paragraphs": [{"qas": [{"id": "q1", "answers": [{"text": "48,000 euros"}]}]}]}]
    }
    root = write_set(tmp_path / "s", [q("q1"), q("q2", ["28 days"])], "q1\tp1\t1\n", squad)
    data = load_qa_set(root)
    assert [x.answers for x in data.questions] == [("48,000 euros",), ("28 days",)]
    assert data.questions[0].gold_docs == {"p1"} and data.questions[0].article == "Budget"
    assert data.questions[1].gold_docs == frozenset() and data.questions[1].article == ""
    assert json.loads((root / "answers.json").read_text()) == squad  # never rewritten


@pytest.mark.parametrize(
    ("queries", "qrels", "message"),
    [
        ([q("q1")], "", r"line 1 has no gold answers"),
        ([q("q1", [])], "", r"line 1 has no gold answers"),
        ([q("q1", ["ok"]), q("q2", [""])], "", r"line 2 has \"metadata.answers\" that is not"),
        ([q("q1", [3])], "", r"not a list of non-empty strings"),
        ([q("q1", ["x"], impossible=True)], "", r"marked impossible but has gold answers"),
        ([q("q1", impossible=True)], "q1\tp2\t1\n", r"impossible but qrels judge passage p2"),
        ([q("q1", impossible="yes")], "", r"impossible\" that is not true or false"),
        ([q("q1", ["x"])], "q1\tp9\t1\n", r"passage p9, which corpus.jsonl does not hold"),
        ([], "", r"holds no questions"),
    ],
)
def test_bad_sets_are_refused_with_the_line(
    tmp_path: Path, queries: list[dict[str, object]], qrels: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        load_qa_set(write_set(tmp_path / "s", queries, qrels))


def test_unanswerable_with_a_not_relevant_judgement_is_fine(tmp_path: Path) -> None:
    data = load_qa_set(write_set(tmp_path / "s", [q("q1", impossible=True)], "q1\tp2\t0\n"))
    assert data.questions[0].impossible and data.questions[0].gold_docs == frozenset()


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"corpus\.jsonl is missing"):
        load_qa_set(tmp_path)


def test_sampling_is_seeded_proportional_and_in_file_order(tmp_path: Path) -> None:
    queries = [q(f"a{i}", ["x"]) for i in range(90)] + [
        q(f"u{i}", impossible=True) for i in range(10)
    ]
    data = load_qa_set(write_set(tmp_path / "s", queries))
    first = sample_questions(data.questions, 20, seed=7)
    assert first == sample_questions(data.questions, 20, seed=7)
    assert first != sample_questions(data.questions, 20, seed=8)
    assert len(first) == 20 and sum(x.impossible for x in first) == 2
    order = [x.id for x in data.questions]
    assert [x.id for x in first] == sorted((x.id for x in first), key=order.index)
    assert sample_questions(data.questions, None, seed=7) == data.questions
    assert sample_questions(data.questions, 500, seed=7) == data.questions
