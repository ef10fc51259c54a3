"""Questions embedded through the checked TorchScript trace (ingest/query_trace.py): the same
vectors as the eager model, and the eager model whenever the trace cannot be trusted."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ingest.embed import Embedder
from ingest.query_trace import PROBES, TOLERANCE, trace_queries

from .test_embed import bundled_embedder

QUESTIONS = [
    "How many days of annual leave do new staff get?",
    "leave",
    "年假有多少天",
    "Wer genehmigt Überstunden im Außendienst?",
    " ".join(["travel budget approvals for the finance group"] * 60),  # past the window
    "x" * 3,
]


@pytest.fixture(scope="module")
def traced() -> Embedder:
    embedder = bundled_embedder()
    assert embedder.prepare_queries() == "traced"
    return embedder


@pytest.fixture(scope="module")
def eager() -> Embedder:
    embedder = Embedder.load("bundled", trace_queries=False)
    assert embedder.prepare_queries() == "eager: tracing is off"
    return embedder


@pytest.mark.parametrize("question", QUESTIONS)
def test_traced_vectors_equal_the_eager_models(
    traced: Embedder, eager: Embedder, question: str
) -> None:
    a, b = traced.embed_query(question), eager.embed_query(question)
    assert a.dtype == np.float32 and a.shape == (384,)
    assert np.abs(a - b).max() <= TOLERANCE
    assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-5


def test_the_trace_is_used_and_ranks_like_the_eager_model(traced: Embedder) -> None:
    assert traced._traced is not None and traced.query_path == "traced"
    docs = traced.embed_documents(["Staff get 25 days of annual leave.", "The canteen opens at 8."])
    assert int(np.argmax(docs @ traced.embed_query("How much holiday do I get?"))) == 0


def test_concurrent_questions_get_their_own_vectors(traced: Embedder, eager: Embedder) -> None:
    expected = {q: eager.embed_query(q) for q in QUESTIONS}
    got: dict[tuple[int, str], np.ndarray] = {}

    def ask(worker: int) -> None:
        for question in QUESTIONS * 3:
            got[(worker, question)] = traced.embed_query(question)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (_, question), vector in got.items():
        assert np.abs(vector - expected[question]).max() <= TOLERANCE


def test_a_trace_that_disagrees_with_the_eager_model_is_refused(eager: Embedder) -> None:
    """The check is real: a trace built with a prompt the reference does not use differs."""
    reason = trace_queries(eager._model, "query: ", eager.embed_query)
    assert isinstance(reason, str) and "differ from the eager ones" in reason


def test_the_models_query_prompt_is_traced_too() -> None:
    prompts = {"query": "query: ", "document": ""}
    embedder, reference = Embedder.load("bundled"), Embedder.load("bundled", trace_queries=False)
    embedder._model.prompts = reference._model.prompts = prompts
    assert embedder.prepare_queries() == "traced"
    with_prompt = embedder.embed_query("annual leave")
    assert np.abs(with_prompt - reference.embed_query("annual leave")).max() <= TOLERANCE
    plain = bundled_embedder().embed_query("annual leave")
    assert np.abs(with_prompt - plain).max() > 1e-3


def test_a_model_that_cannot_be_traced_keeps_answering(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    reason = trace_queries(object(), None, lambda text: np.zeros(3))
    assert isinstance(reason, str) and reason.startswith("tracing failed: AttributeError")
    # The embedder given that answer (what trace_queries returns for any failure):
    import ingest.embed as embed_module

    monkeypatch.setattr(embed_module, "trace_queries", lambda *args: reason)
    embedder = Embedder.load("bundled")
    assert embedder.prepare_queries() == f"eager: {reason}" and embedder._traced is None
    vector = embedder.embed_query("annual leave")
    assert "Queries use the eager embedder: tracing failed" in caplog.text
    assert np.abs(vector - bundled_embedder().embed_query("annual leave")).max() <= TOLERANCE


def test_only_prepared_embedders_trace(eager: Embedder) -> None:
    """One-shot commands embed one question: 0.6 s of tracing would not pay for itself."""
    embedder = Embedder.load("bundled")
    embedder.embed_query("annual leave")
    assert embedder._traced is None and embedder.query_path == "eager: not prepared (one-shot)"
    assert embedder.prepare_queries() == "traced" == embedder.prepare_queries()


def test_probes_cover_short_long_and_other_scripts() -> None:
    assert "" in PROBES and any(len(p.split()) > 256 for p in PROBES)
    assert any(ord(c) > 0x4E00 for p in PROBES for c in p)
