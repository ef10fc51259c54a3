"""Stop rules of generation: a looping answer stops instead of running to the token limit.

The random tiny model does not loop, so the rule is checked on token ids directly and, on
the model, for never cutting an answer that does not loop.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from appliance.llm.loader import LoadedModel
from appliance.serve.generate import (
    GenerationRequest,
    GenerationStats,
    _stopping,
    repeating,
    stream_generate,
)
from tests.support.fixtures import TinyModel, make_tiny_model_fixture

tiny = make_tiny_model_fixture(scope="module", name="tiny")


@pytest.mark.parametrize(
    ("ids", "run", "expected"),
    [
        ([1, 2, 3, 4, 1, 2, 3, 4], 4, True),  # a sentence written twice
        ([1, 2, 3, 4, 1, 2, 3, 5], 4, False),
        ([7, 7, 7, 7, 7], 4, True),  # a one-token cycle overlaps itself
        ([1, 2, 1, 2, 1], 3, True),  # "1 2 1" occurred at the start
        ([1, 2, 3], 3, False),  # nothing before the tail
        ([1, 2, 3, 1, 2, 3], 0, False),  # 0: never stop
        ([], 4, False),
    ],
)
def test_repeating(ids: list[int], run: int, expected: bool) -> None:
    assert repeating(ids, run) is expected


def _stop(ids: list[int], prompt: int, run: int) -> tuple[bool, str]:
    request = GenerationRequest("p", max_new_tokens=100, stop_repeat_tokens=run)
    stats = GenerationStats(prompt_tokens=prompt)
    stop = _stopping(request, stats)[0](torch.tensor([ids]), None)
    return bool(stop[0]), stats.stopped


def test_the_stopping_rule_reads_only_the_answer() -> None:
    loop = [5, 6, 7, 8, 5, 6, 7, 8]
    assert _stop([1, 2, 3, *loop], prompt=3, run=4) == (True, "repetition")
    assert _stop([1, 2, 3, *loop], prompt=3, run=0) == (False, "")
    # a run repeated from the prompt (the sources) is quoting, not looping
    assert _stop([5, 6, 7, 8, 5, 6, 7, 8], prompt=4, run=4) == (False, "")


@pytest.fixture(scope="module")
def loaded(tiny: TinyModel) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny.path).eval()
    return LoadedModel("tiny", model, AutoTokenizer.from_pretrained(tiny.path))


def test_a_model_that_does_not_loop_is_not_cut(loaded: Any) -> None:
    request = GenerationRequest("合同 预算 报告", max_new_tokens=120, stop_repeat_tokens=8)
    plain = GenerationRequest("合同 预算 报告", max_new_tokens=120)
    with_rule, without = GenerationStats(), GenerationStats()
    assert "".join(stream_generate(loaded, request, with_rule)) == "".join(
        stream_generate(loaded, plain, without)
    )
    assert with_rule.stopped == "" and with_rule.tokens == without.tokens > 100
