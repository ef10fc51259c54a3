"""The serving benchmark's building blocks, for correctness only (no timing is asserted).

A tiny Qwen2 shape goes through the bench's own model build, packaging, home, policy and the
first-token children of both sides (run in-process here): the same greedy token either way, and
a RAG prompt of the requested size from the real prompt builder.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import bench_serve  # noqa: E402

TINY_SHAPE: dict[str, Any] = {
    **bench_serve.bml.QWEN2_05B,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("bench-serve")
    bench_serve.build_model_dir(work / "model", TINY_SHAPE)
    bench_serve.build_home(work, {bench_serve.MODEL_NAME: work / "model"})
    return work


def test_model_rows_beyond_the_tokenizer_are_zero(workdir: Path) -> None:
    import safetensors.torch
    from tokenizers import Tokenizer

    size = Tokenizer.from_file(str(workdir / "model" / "tokenizer.json")).get_vocab_size()
    embed = safetensors.torch.load_file(workdir / "model" / "model.safetensors")[
        "model.embed_tokens.weight"
    ]
    assert embed.shape[0] == TINY_SHAPE["vocab_size"] > size
    assert not embed[size:].any()
    assert embed[:size].abs().sum() > 0


def test_both_sides_reach_the_same_first_token(workdir: Path) -> None:
    encrypted = bench_serve.child_first_token("encrypted", workdir)
    plaintext = bench_serve.child_first_token("plaintext", workdir)
    assert encrypted["token"] == plaintext["token"]
    assert encrypted["dtype"] == plaintext["dtype"] == "torch.bfloat16"
    assert encrypted["unlock_s"] > 0 and plaintext["unlock_s"] is None
    assert 0 < encrypted["load_s"] <= encrypted["seconds"]
    # the installed package holds no plaintext model file: the encrypted side read containers
    installed = workdir / "home" / "models" / bench_serve.MODEL_NAME
    assert not list(installed.rglob("*.safetensors"))


def test_rag_prompt_reaches_the_size_with_the_real_builder(workdir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    text, builder = bench_serve.rag_prompt(tokenizer, 500)
    tokens = len(tokenizer(text, add_special_tokens=False).input_ids)
    assert builder == "appliance.rag.prompt.build_prompt"
    assert 500 <= tokens < 800
    assert '<source id="1"' in text and bench_serve.QUESTION in text


def test_generation_produces_exactly_the_requested_tokens(workdir: Path) -> None:
    model, tokenizer = bench_serve.load_plaintext(workdir / "model")
    result = bench_serve.timed_generate(
        model, bench_serve.chat_inputs(tokenizer, bench_serve.QUESTION), 6
    )
    assert result["new_tokens"] == len(result["tokens"]) == 6
    assert result["decode_tokens_per_s"] > 0
    assert tokenizer.decode(result["tokens"]).strip()  # real text, not unknown ids


def test_floor_side_fills_a_buffer_of_the_weights_size(workdir: Path) -> None:
    floor = bench_serve.child_floor(workdir)
    assert floor["bytes"] == (workdir / "model" / "model.safetensors").stat().st_size
    assert 0 < floor["load_s"] == floor["seconds"] and floor["threads"] >= 1


def test_floor_bound_adds_the_plaintext_forward_pass() -> None:
    runs = {
        "plaintext": [{"seconds": 0.30, "load_s": 0.20}, {"seconds": 0.40, "load_s": 0.28}],
        "floor": [{"seconds": 0.25, "load_s": 0.25}],
    }
    med = {"plaintext": 0.35, "floor": 0.25}
    bound = bench_serve._floor_summary(runs, med)
    assert bound["plaintext_forward_s"] == pytest.approx(0.11)
    assert bound["ratio_lower_bound"] == pytest.approx((0.25 + 0.11) / 0.35)
    assert bench_serve._floor_summary({"plaintext": runs["plaintext"]}, {"plaintext": 0.35}) == {}
