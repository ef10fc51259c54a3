"""Retrieval-aware training examples: the answer engine's own prompt over the appliance's own
retrieval, the right [n] citation or the engine's not-found sentence, loss on answers only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.finetune.context_index import ContextIndex
from appliance.finetune.examples import (
    ExampleOptions,
    build_examples,
    chat_example,
    qa_example,
    rendered_source,
)
from appliance.finetune.rows import ChatRow, QaRow, parse_training_file
from appliance.llm.loader import LoadOptions, load_causal_lm
from appliance.rag.prompt import NOT_FOUND_TEXT, build_prompt
from appliance.rag.retrieve import Passage
from tests.support.finetune_kit import training_rows
from tests.support.fixtures import TinyModel, make_tiny_model_fixture

tiny_model = make_tiny_model_fixture(scope="module")
OPTIONS = ExampleOptions(max_seq_tokens=2048, passages=3, drop_gold=0.0, seed=0)


@pytest.fixture(scope="module")
def tok(tiny_model: TinyModel) -> Any:
    return load_causal_lm("tiny", tiny_model.files(), options=LoadOptions()).tokenizer


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import json

    from ingest.embed import Embedder

    data = "".join(json.dumps(r) + "\n" for r in training_rows(24)).encode()
    rows = parse_training_file(data).rows
    idx = ContextIndex(rows)
    idx.build(tmp_path_factory.mktemp("ctx") / "scratch", Embedder.load("bundled", threads=1))
    yield idx, rows
    idx.close()


def _passage(doc: str, text: str) -> Passage:
    return Passage(f"c-{doc}", doc, doc, "eval", "", (), None, None, text, 1.0)


def _decode(tok: Any, ids: Any) -> str:
    return str(tok.decode(list(ids)))


def test_the_prompt_is_the_answer_engines_prompt(tok: Any) -> None:
    row = QaRow(1, "what is the budget code?", ("512",), "the budget code is 512", False)
    passages = [_passage("d1", "the canteen opens at noon"), _passage("d2", row.context or "")]
    ex = qa_example(row, passages, "d2", tokenizer=tok, eos_id=tok.eos_token_id, o=OPTIONS)
    ((start, end),) = ex.spans
    prompt = build_prompt(
        row.question,
        passages,
        tokenizer=tok,
        context_tokens=OPTIONS.max_seq_tokens,
        max_new_tokens=64,
        max_passages=3,
    )
    assert _decode(tok, ex.ids[:start]) == prompt.text  # token for token what serving sends
    assert list(ex.ids[:start]) == tok(prompt.text, add_special_tokens=False)["input_ids"]
    assert _decode(tok, ex.ids[start:end]) == "512 [2]<|im_end|>"  # gold is source 2
    assert ex.kind == "answer" and end == len(ex.ids)


def test_the_passages_are_ordered_as_serving_orders_them(tok: Any) -> None:
    """answer.best_source_last writes the best passage last at serving; a job built with it
    trains on exactly that prompt, and the citation still names the gold's number."""
    from dataclasses import replace

    row = QaRow(1, "what is the budget code?", ("512",), "the budget code is 512", False)
    passages = [_passage("d2", row.context or ""), _passage("d1", "the canteen opens at noon")]
    options = replace(OPTIONS, best_last=True)
    ex = qa_example(row, passages, "d2", tokenizer=tok, eos_id=tok.eos_token_id, o=options)
    ((start, _end),) = ex.spans
    served = build_prompt(
        row.question,
        passages,
        tokenizer=tok,
        context_tokens=OPTIONS.max_seq_tokens,
        max_new_tokens=64,
        max_passages=3,
        best_last=True,
    )
    text = _decode(tok, ex.ids[:start])
    assert text == served.text
    assert text.index('<source id="2"') < text.index('<source id="1"')  # best written last
    assert _decode(tok, ex.ids[start:]) == "512 [1]<|im_end|>"
    plain = qa_example(row, passages, "d2", tokenizer=tok, eos_id=tok.eos_token_id, o=OPTIONS)
    assert plain.ids != ex.ids


def test_a_job_records_the_serving_order_of_passages() -> None:
    from appliance.config import load_settings
    from appliance.finetune.jobs import JobOptions, job_settings

    settings = load_settings(Path("/nonexistent-home"))
    assert job_settings(settings, JobOptions())["best_source_last"] is True
    off = load_settings(Path("/nonexistent-home"), answer={"best_source_last": False})
    assert job_settings(off, JobOptions())["best_source_last"] is False


def test_a_job_trains_at_most_the_default_steps_unless_told() -> None:
    from appliance.config import load_settings
    from appliance.finetune.jobs import JobOptions, job_settings

    settings = load_settings(Path("/nonexistent-home"))
    assert settings.finetune.max_steps == 120
    assert job_settings(settings, JobOptions())["max_steps"] == 120
    assert job_settings(settings, JobOptions(max_steps=7))["max_steps"] == 7
    assert job_settings(settings, JobOptions(max_steps=0))["max_steps"] is None  # every epoch
    uncapped = load_settings(Path("/nonexistent-home"), finetune={"max_steps": 0})
    assert job_settings(uncapped, JobOptions())["max_steps"] is None


def test_missing_gold_and_impossible_questions_get_the_not_found_answer(tok: Any) -> None:
    row = QaRow(1, "what is the budget code?", ("512",), "the budget code is 512", False)
    distractors = [_passage("d1", "the canteen opens at noon")]
    ex = qa_example(row, distractors, "d2", tokenizer=tok, eos_id=tok.eos_token_id, o=OPTIONS)
    target = _decode(tok, ex.ids[ex.spans[0][0] :])
    assert (target, ex.kind) == (NOT_FOUND_TEXT["en"] + "<|im_end|>", "not_found")
    # a passage from the gold document that does not hold the answer is not the gold
    other_chunk = [_passage("d2", "the budget code changed last year")]
    ex = qa_example(row, other_chunk, "d2", tokenizer=tok, eos_id=tok.eos_token_id, o=OPTIONS)
    assert ex.kind == "not_found"
    impossible = QaRow(2, "what colour is the budget?", (), "the budget code is 512", True)
    ex = qa_example(
        impossible,
        [_passage("d2", "the budget code is 512")],
        "d2",
        tokenizer=tok,
        eos_id=tok.eos_token_id,
        o=OPTIONS,
    )
    assert ex.kind == "impossible"
    zh = QaRow(3, "预算是多少？", (), None, True)
    ex = qa_example(zh, [], None, tokenizer=tok, eos_id=tok.eos_token_id, o=OPTIONS)
    assert _decode(tok, ex.ids[ex.spans[0][0] :]).startswith(NOT_FOUND_TEXT["zh"])


def test_drop_gold_takes_every_answering_passage_out(tok: Any) -> None:
    row = QaRow(7, "what is the budget code?", ("512",), "the budget code is 512", False)
    passages = [
        _passage("d2", "the budget code is 512"),
        _passage("d9", "as said, 512 is the budget code"),  # another passage that answers
        _passage("d1", "the canteen opens at noon"),
    ]
    options = ExampleOptions(2048, 3, 1.0, 0)
    ex = qa_example(row, passages, "d2", tokenizer=tok, eos_id=tok.eos_token_id, o=options)
    prompt = _decode(tok, ex.ids[: ex.spans[0][0]])
    assert ex.kind == "not_found" and "512" not in prompt and "canteen" in prompt


def test_a_cut_gold_passage_only_counts_if_the_answer_survived_the_cut(tok: Any) -> None:
    long = "the budget code is filed. " * 40 + "finally it is 512."
    row = QaRow(1, "what is the budget code?", ("512",), long, False)
    options = ExampleOptions(max_seq_tokens=900, passages=3, drop_gold=0.0, seed=0)
    ex = qa_example(row, [_passage("d2", long)], "d2", tokenizer=tok, eos_id=2, o=options)
    prompt = _decode(tok, ex.ids[: ex.spans[0][0]])
    assert "512" not in rendered_source(prompt, 1)  # the budget cut the answer off
    assert ex.kind == "not_found" and len(ex.ids) <= 900


def test_chat_rows_train_on_every_assistant_message(tok: Any) -> None:
    row = ChatRow(
        1,
        (
            ("system", "be brief"),
            ("user", "hi"),
            ("assistant", "hello"),
            ("user", "budget?"),
            ("assistant", "48 euros"),
        ),
    )
    ex = chat_example(row, tokenizer=tok, eos_id=tok.eos_token_id)
    assert [_decode(tok, ex.ids[a:b]) for a, b in ex.spans] == [
        "hello<|im_end|>",
        "48 euros<|im_end|>",
    ]
    rendered = tok.apply_chat_template(
        [{"role": r, "content": c} for r, c in row.messages], tokenize=False
    )
    assert rendered.startswith(_decode(tok, ex.ids))  # the template's own rendering


def test_examples_from_the_appliances_retrieval(tok: Any, index: Any) -> None:
    idx, rows = index
    built = build_examples(
        rows,
        tokenizer=tok,
        eos_id=tok.eos_token_id,
        retrieve=lambda q: idx.search(q, 3),
        gold_of=idx.gold_of,
        options=OPTIONS,
    )
    counts = built.counts
    assert counts["impossible"] == 4 and sum(counts[k] for k in ("answer", "not_found")) == 20
    assert counts["answer"] >= 10  # retrieval finds most gold passages
    for row, ex in zip(rows, built.examples, strict=True):
        assert isinstance(row, QaRow)
        start = ex.spans[0][0]
        prompt, target = _decode(tok, ex.ids[:start]), _decode(tok, ex.ids[start:])
        assert prompt.count("<source id=") <= 3
        if ex.kind == "answer":
            n = int(target.split("[")[1].split("]")[0])
            assert row.answers[0] in rendered_source(prompt, n)
            assert f'document="{idx.gold_of(row)}"' in prompt
    again = build_examples(
        rows,
        tokenizer=tok,
        eos_id=tok.eos_token_id,
        retrieve=lambda q: idx.search(q, 3),
        gold_of=idx.gold_of,
        options=OPTIONS,
    )
    assert again.examples == built.examples  # deterministic


def test_the_scratch_collection_is_deleted(tmp_path: Path) -> None:
    from ingest.embed import Embedder

    rows = [QaRow(1, "q?", ("a",), "a b c", False)]
    idx = ContextIndex(rows)
    idx.build(tmp_path / "scratch", Embedder.load("bundled", threads=1))
    assert (tmp_path / "scratch").exists() and idx.search("a b", 3)
    idx.close()
    assert not (tmp_path / "scratch").exists()
