"""The LoRA trainer (real tiny Qwen2, real peft): deterministic, exactly resumable, and the
adapter merged at load computes what the trained peft model computes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from appliance.finetune.examples import Example, ExampleOptions, qa_example
from appliance.finetune.rows import QaRow
from appliance.finetune.trainer import LoraTrainer, TrainSettings
from appliance.llm.adapter import adapter_files, load_with_adapter, merge_lora
from appliance.llm.loader import LoadOptions, load_causal_lm
from appliance.rag.retrieve import Passage
from tests.support.fixtures import TinyModel, make_tiny_model_fixture

tiny_model = make_tiny_model_fixture(scope="module")
SETTINGS = TrainSettings(rank=4, alpha=8, lr=1e-3, epochs=3, seed=7, batch_size=2)


def _load(model: TinyModel) -> object:
    return load_causal_lm("tiny", model.files(), options=LoadOptions(dtype="fp32"))


def _passage(i: int, text: str) -> Passage:
    return Passage(f"c{i}", f"d{i}", f"d{i:05d}", "eval", "", (), None, None, text, 1.0)


@pytest.fixture(scope="module")
def examples(tiny_model: TinyModel) -> list[Example]:
    tok = _load(tiny_model).tokenizer  # type: ignore[attr-defined]
    out = []
    for i in range(8):
        row = QaRow(i + 1, f"what is the budget {i}?", (f"{i} euros",), f"budget {i} euros", False)
        passages = [_passage(i, f"the budget is {i} euros"), _passage(50, "the canteen opens")]
        options = ExampleOptions(2048, 3, 0.0, 0)
        out.append(
            qa_example(
                row, passages, f"d{i:05d}", tokenizer=tok, eos_id=tok.eos_token_id, o=options
            )
        )
    return out


def _train(
    model: TinyModel, examples: list[Example], *, steps: int, state: bytes | None = None
) -> tuple[LoraTrainer, list[float], dict[int, bytes]]:
    loaded = _load(model)
    trainer = LoraTrainer(loaded.model, examples, SETTINGS, pad_id=0)  # type: ignore[attr-defined]
    if state is not None:
        trainer.load_state(torch.load(io.BytesIO(state), weights_only=True))
    losses, saved = [], {}
    while not trainer.done and len(losses) < steps:
        losses.append(trainer.train_step().loss)
        buf = io.BytesIO()
        torch.save(trainer.state(), buf)
        saved[trainer.step] = buf.getvalue()
    return trainer, losses, saved


def test_training_is_deterministic_and_learns(
    tiny_model: TinyModel, examples: list[Example]
) -> None:
    trainer, first, _ = _train(tiny_model, examples, steps=99)
    _, second, _ = _train(tiny_model, examples, steps=99)
    assert trainer.total_steps == 12  # 8 examples, batch 2, 3 epochs
    assert first == second
    assert sum(first[-3:]) < sum(first[:3])  # the answers' loss goes down


def test_a_restored_trainer_continues_exactly(
    tiny_model: TinyModel, examples: list[Example]
) -> None:
    _, full, saved = _train(tiny_model, examples, steps=99)
    for at in (1, 5, 8):  # mid-epoch and at an epoch boundary
        _, rest, _ = _train(tiny_model, examples, steps=99, state=saved[at])
        assert len(rest) == len(full) - at
        assert max(abs(a - b) for a, b in zip(full[at:], rest, strict=True)) <= 1e-5


def test_loss_covers_the_answer_tokens_only(tiny_model: TinyModel, examples: list[Example]) -> None:
    loaded = _load(tiny_model)
    trainer = LoraTrainer(loaded.model, examples, SETTINGS, pad_id=0)  # type: ignore[attr-defined]
    batch = trainer.collate(examples[:2])
    for row, ex in enumerate(examples[:2]):
        ((start, end),) = ex.spans
        labelled = (batch["labels"][row] != -100).nonzero().flatten().tolist()
        assert labelled == list(range(start, end))
        assert batch["attention_mask"][row].sum() == len(ex.ids)


def test_merged_adapter_computes_what_the_peft_model_computes(
    tiny_model: TinyModel, examples: list[Example]
) -> None:
    trainer, _, _ = _train(tiny_model, examples, steps=6)
    trainer.model.eval()
    ids = torch.tensor([examples[0].ids])
    with torch.no_grad():
        expected = trainer.model(input_ids=ids).logits
    files = adapter_files(trainer.adapter_state(), rank=4, alpha=8)
    adapter = {k: bytearray(v) for k, v in files.items()}
    merged = load_with_adapter(
        "tiny-ft", tiny_model.files(), adapter, options=LoadOptions(dtype="fp32")
    )
    assert all(not any(buf) for buf in adapter.values())  # adapter plaintext zeroed after merge
    with torch.no_grad():
        got = merged.model(input_ids=ids).logits
        base = _load(tiny_model).model(input_ids=ids).logits  # type: ignore[attr-defined]
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, base, atol=1e-4)  # the adapter changed something


def test_an_adapter_for_another_model_is_refused(tiny_model: TinyModel, tmp_path: Path) -> None:
    from appliance.errors import ModelLoadError

    bogus = {"model.layers.9.mlp.up_proj.lora_A.weight": torch.zeros(4, 64)}
    bogus["model.layers.9.mlp.up_proj.lora_B.weight"] = torch.zeros(128, 4)
    files = {k: bytearray(v) for k, v in adapter_files(bogus, rank=4, alpha=8).items()}
    with pytest.raises(ModelLoadError):
        merge_lora(_load(tiny_model).model, files)  # type: ignore[attr-defined]


def test_the_answer_only_loss_equals_the_models_own_loss(
    tiny_model: TinyModel, examples: list[Example]
) -> None:
    loaded = _load(tiny_model)
    trainer = LoraTrainer(loaded.model, examples, SETTINGS, pad_id=0)  # type: ignore[attr-defined]
    batch = trainer.collate(examples[:4])
    trainer.model.eval()  # the same (no) dropout in both passes
    for _ in range(3):  # LoRA B starts at zero: train a little so every gradient is non-trivial
        trainer.train_step()
    sparse = trainer.loss(batch)
    full = trainer.model(**batch).loss
    assert abs(float(sparse.detach()) - float(full.detach())) <= 1e-5
    sparse.backward()
    grads = [p.grad.clone() for p in trainer.params]
    trainer.optimizer.zero_grad()
    full.backward()
    for mine, theirs in zip(grads, [p.grad for p in trainer.params], strict=True):
        assert torch.allclose(mine, theirs, atol=1e-6)


def test_lora_on_the_top_layers_only_trains_and_merges_those(
    tiny_model: TinyModel, examples: list[Example]
) -> None:
    settings = TrainSettings(**{**SETTINGS.to_dict(), "layers": 1})
    loaded = _load(tiny_model)
    trainer = LoraTrainer(loaded.model, examples, settings, pad_id=0)  # type: ignore[attr-defined]
    losses = [trainer.train_step().loss for _ in range(trainer.total_steps)]
    assert sum(losses[-4:]) < sum(losses[:4])  # the answers' loss goes down
    state = trainer.adapter_state()
    assert state and all(".layers.1." in key for key in state)  # of the 2 layers, the top one
    assert {k.split(".")[-3] for k in state} >= {"q_proj", "down_proj"}
    trainer.model.eval()
    ids = torch.tensor([examples[0].ids])
    with torch.no_grad():
        expected = trainer.model(input_ids=ids).logits
    files = adapter_files(state, rank=4, alpha=8)
    adapter = {k: bytearray(v) for k, v in files.items()}
    merged = load_with_adapter(
        "tiny-ft", tiny_model.files(), adapter, options=LoadOptions(dtype="fp32")
    )
    with torch.no_grad():
        assert torch.allclose(merged.model(input_ids=ids).logits, expected, atol=1e-4)


def test_lora_layers_need_a_decoder_layer_stack(tiny_model: TinyModel) -> None:
    from appliance.errors import ApplianceError
    from appliance.finetune.trainer import TARGET_MODULES, target_modules

    model = _load(tiny_model).model  # type: ignore[attr-defined]
    assert target_modules(model, 0) == target_modules(model, 2) == TARGET_MODULES  # all of 2
    assert all(".layers.1." in name for name in target_modules(model, 1))
    with pytest.raises(ApplianceError, match="no decoder layer stack") as caught:
        target_modules(torch.nn.Sequential(torch.nn.Linear(2, 2)), 1)
    assert caught.value.code == "FINETUNE_LAYERS"
