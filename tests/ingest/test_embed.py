"""The embedding adapter (ingest/embed.py) with the real bundled model, loaded once."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.embed import (
    BUNDLED_MODEL_ID,
    Embedder,
    EmbedderInfo,
    _bundled_dir,
    _model_id,
    read_card_languages,
)
from ingest.errors import DependencyMissing
from ingest.threads import use_threads


@functools.cache
def bundled_embedder() -> Embedder:
    """The bundled model, loaded once per test session (a few seconds); test_store uses it."""
    return Embedder.load("bundled")


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return bundled_embedder()


def test_bundled_model_info(embedder: Embedder) -> None:
    assert embedder.info == EmbedderInfo(
        model_id=BUNDLED_MODEL_ID, dimension=384, max_tokens=254, languages=frozenset({"en"})
    )
    assert embedder.info.supports("en-US") is True
    assert embedder.info.supports("zh") is False
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_embedding_uses_its_threads_and_leaves_the_callers_count() -> None:
    """In a fresh process: the embedder computes on one thread (DEFAULT_THREADS) without
    leaving the calling thread, which may generate next, on one core."""
    code = (
        "import torch; from ingest.embed import Embedder; n = torch.get_num_threads(); "
        "e = Embedder.load('bundled'); e.embed_query('x'); e.embed_documents(['y']); "
        "print(e.threads, torch.get_num_threads() == n, n)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    threads, kept, before = out.stdout.strip().splitlines()[-1].split()
    assert (threads, kept) == ("1", "True") and int(before) >= 1


def test_queries_embed_on_one_thread_whatever_documents_use(
    embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request thread lives on: a multi-threaded team left there would slow every answer."""
    import torch

    import ingest.embed as embed_module

    seen: list[int] = []
    checked = embed_module._checked  # the last step of either query path (traced or eager)

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_num_threads())
        return checked(*args, **kwargs)

    embedder.prepare_queries()
    monkeypatch.setattr(embed_module, "_checked", spy)
    monkeypatch.setattr(embedder, "threads", 2)

    def request() -> None:
        use_threads(2)
        embedder.embed_query("annual leave")
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=request)
    thread.start()
    thread.join()
    assert seen == [1, 2]


def test_bf16_documents_match_fp32_and_the_choice_is_validated(embedder: Embedder) -> None:
    texts = ["Invoices are paid within thirty days.", "财务预算 " * 60, "word " * 300]
    chosen = embedder.precision
    try:
        embedder.precision = "bf16"
        low = embedder.embed_documents(texts)
        embedder.precision = "fp32"
        full = embedder.embed_documents(texts)
    finally:
        embedder.precision = chosen
    assert np.all(np.sum(low * full, axis=1) > 0.999)
    np.testing.assert_allclose(np.linalg.norm(low, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="precision"):
        Embedder.load(precision="int4")


def test_unknown_languages_are_unknown_not_english() -> None:
    info = EmbedderInfo("m", 8, 100, frozenset())
    assert info.supports("en") is None
    assert EmbedderInfo("m", 8, 100, frozenset({"multilingual"})).supports("zh") is True


def test_document_vectors_are_normalised_float32(embedder: Embedder) -> None:
    texts = ["The cat sat on the mat.", "财务预算", "x" * 5000]
    vectors = embedder.embed_documents(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert embedder.embed_documents([]).shape == (0, 384)
    query = embedder.embed_query("The cat sat on the mat.")
    assert query.shape == (384,)
    assert float(query @ vectors[0]) > 0.9999  # no prompts here; documents may run in bf16


def test_nearest_passage_is_the_relevant_one(embedder: Embedder) -> None:
    passages = [
        "Employees may carry over at most five days of unused annual leave.",
        "The server room must stay below 24 degrees Celsius.",
        "Invoices are paid within thirty days of receipt.",
    ]
    docs = embedder.embed_documents(passages)
    queries = ["how many vacation days can I keep?", "cooling of the data center", "payment terms"]
    for expected, question in enumerate(queries):
        assert int(np.argmax(docs @ embedder.embed_query(question))) == expected


def test_token_counts_exclude_special_tokens_and_never_truncate(embedder: Embedder) -> None:
    assert embedder.count_tokens("") == 0
    assert embedder.count_tokens("hello world") == 2
    assert embedder.count_tokens("word " * 1000) == 1000  # past both 128 and 256


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=3000))
def test_token_counts_match_the_models_own_tokenizer(text: str) -> None:
    embedder = bundled_embedder()
    tokenizer = embedder._model.tokenizer
    expected = len(tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])
    assert embedder.count_tokens(text) == expected


def test_a_text_of_max_tokens_fits_the_window(embedder: Embedder) -> None:
    """count_tokens(text) <= info.max_tokens means the model sees all of it."""
    model = embedder._model
    text = " ".join(["budget"] * embedder.info.max_tokens)
    assert embedder.count_tokens(text) == embedder.info.max_tokens
    features = model.tokenize([text])
    assert features["input_ids"].shape[1] == model.max_seq_length


def test_missing_or_empty_model_directory_says_what_to_do(tmp_path: Path) -> None:
    for path in (tmp_path / "nope", tmp_path):
        with pytest.raises(DependencyMissing) as info:
            Embedder.load(str(path))
        assert str(path) in info.value.message
        assert "embedding model setting" in info.value.hint


def test_model_ids_follow_content_not_names(tmp_path: Path) -> None:
    bundled = _bundled_dir()
    copy = tmp_path / "my-model"
    copy.mkdir()
    for item in bundled.rglob("*"):
        target = copy / item.relative_to(bundled)
        if item.is_dir():
            target.mkdir()
        else:
            target.symlink_to(item)  # cheap "copy" of 90 MB of weights
    assert _model_id(copy, bundled=False) == BUNDLED_MODEL_ID
    config = copy / "1_Pooling" / "config.json"
    text = config.read_text()
    config.unlink()
    config.write_text(text.replace('"pooling_mode_mean_tokens": true', '"x": 1'))
    changed = _model_id(copy, bundled=False)
    assert changed.startswith("my-model@") and len(changed) == len("my-model@") + 12


@pytest.mark.parametrize(
    ("card", "expected"),
    [
        ("---\nlanguage: en\nlicense: mit\n---\n# x", {"en"}),
        ("---\nlanguage:\n- en\n- ZH\ntags:\n- a\n---\n", {"en", "zh"}),
        ("---\nlanguage: [en, 'fr']\n---\n", {"en", "fr"}),
        ("---\nlanguage: multilingual\n---\n", {"multilingual"}),
        ("---\nlicense: mit\n---\nlanguage: en\n", set()),
        ("# no front matter\nlanguage: en\n", set()),
    ],
)
def test_model_card_languages(tmp_path: Path, card: str, expected: set[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(card)
    assert read_card_languages(readme) == expected
    assert read_card_languages(tmp_path / "missing.md") == frozenset()


def test_languages_can_be_configured(tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(_bundled_dir(), model, ignore=shutil.ignore_patterns("model.safetensors"))
    (model / "model.safetensors").symlink_to(_bundled_dir() / "model.safetensors")
    loaded = Embedder.load(str(model), languages=["EN", "zh"], batch_size=4)
    assert loaded.info.languages == {"en", "zh"}
    assert loaded.info.model_id == BUNDLED_MODEL_ID
    assert loaded.batch_size == 4


def test_loading_prints_no_progress_bars_when_transformers_came_first() -> None:
    """HF_HUB_DISABLE_PROGRESS_BARS is read when transformers is imported; a process that
    imported it earlier (the LLM loader does) still gets no weight-loading bars in its output
    (they broke `--json` output on a shared terminal)."""
    code = (
        "import os; os.environ.pop('HF_HUB_DISABLE_PROGRESS_BARS', None)\n"
        "import transformers\n"
        "from ingest.embed import Embedder\n"
        "Embedder.load('bundled')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Loading weights" not in done.stderr + done.stdout
