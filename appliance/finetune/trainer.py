"""The LoRA training loop (the only module that imports ``peft``).

Deterministic for a seed: the LoRA initialisation, the dropout masks and the example order come
from seeded generators, and everything a later step depends on is in :meth:`LoraTrainer.state`
(adapter weights, AdamW moments, scheduler, the python / numpy / torch RNG states and the data
cursor), so a trainer restored from a checkpoint computes the same losses as one that never
stopped (with the same torch thread count: the job records it). Examples are grouped into
batches in a per-epoch seeded permutation, padded on the right; the loss covers the answer
spans only (every other label is -100), as the mean over those tokens.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ApplianceError
from .examples import Example

IGNORE = -100
#: Architectures whose causal-LM forward is "decoder, then output layer" with nothing in between
#: (no logit scaling or soft-capping), so the output layer may run at the loss positions only.
SPARSE_HEAD_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})
TARGET_MODULES = "all-linear"  # every linear layer of the blocks (peft leaves the LM head out)


@dataclass(frozen=True)
class TrainSettings:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    lr: float = 1e-3
    epochs: int = 1
    max_steps: int | None = None
    seed: int = 0
    batch_size: int = 2
    warmup_share: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    layers: int = 0  # LoRA on the top ``layers`` decoder layers only (0 = every layer)

    def total_steps(self, examples: int) -> int:
        per_epoch = math.ceil(examples / self.batch_size)
        total = per_epoch * self.epochs
        return min(total, self.max_steps) if self.max_steps else total

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StepResult:
    step: int
    loss: float
    tokens: int  # tokens the forward pass processed (padding excluded)
    seconds: float


def _peft() -> Any:
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ApplianceError(
            f"The peft library is not installed ({exc}).",
            code="DEPENDENCY_MISSING",
            hint="Reinstall the appliance with its locked requirements (make setup).",
        ) from None
    return peft


def target_modules(model: Any, layers: int) -> str | list[str]:
    """What LoRA adapts: every linear layer of the blocks, or those of the top ``layers`` blocks.

    With the top blocks only, the blocks below hold nothing to train, so autograd keeps none of
    their activations and the backward pass stops at the lowest adapted block: measured on
    SmolLM2-135M (30 blocks, 2 x 1,500 tokens, 1 thread), 31.8 s per step with every block,
    18.9 s with the top 15 and 15.6 s with the top 10.
    """
    blocks = _decoder_blocks(model)
    if layers <= 0 or layers >= len(blocks):
        return TARGET_MODULES
    names = []
    for prefix, block in blocks[len(blocks) - layers :]:
        for name, module in block.named_modules():
            if isinstance(module, torch.nn.Linear):
                names.append(f"{prefix}.{name}")
    return names


def _decoder_blocks(model: Any) -> list[tuple[str, Any]]:
    """(module name, block) of the decoder's layer stack, bottom first."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.endswith("layers") and len(module):
            return [(f"{name}.{i}", block) for i, block in enumerate(module)]
    raise ApplianceError(
        "This model has no decoder layer stack that LoRA layers could be chosen from.",
        code="FINETUNE_LAYERS",
        hint="Set finetune.lora_layers = 0 (every layer) in appliance.toml.",
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class LoraTrainer:
    """LoRA adapters on every linear layer of ``model``, trained on ``examples``."""

    def __init__(
        self, model: Any, examples: Sequence[Example], settings: TrainSettings, *, pad_id: int
    ) -> None:
        if not examples:
            raise ValueError("no examples to train on")
        self.settings, self.examples, self.pad_id = settings, list(examples), pad_id
        self.total_steps = settings.total_steps(len(examples))
        seed_everything(settings.seed)
        peft = _peft()
        config = peft.LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=target_modules(model, settings.layers),
            bias="none",
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():  # peft reads a property transformers 5 deprecated
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            self.model = peft.get_peft_model(model, config)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=settings.lr, weight_decay=settings.weight_decay
        )
        warmup = max(1, int(self.total_steps * settings.warmup_share))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _linear_schedule(warmup, self.total_steps)
        )
        self.step = 0
        self.epoch = 0
        self.position = 0  # index into the epoch's permutation
        self._order = self._permutation(0)

    # ----- data ----------------------------------------------------------------------------
    def _permutation(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + epoch)
        return [int(i) for i in torch.randperm(len(self.examples), generator=gen)]

    def _next_batch(self) -> list[Example]:
        if self.position >= len(self._order):
            self.epoch += 1
            self.position = 0
            self._order = self._permutation(self.epoch)
        picked = self._order[self.position : self.position + self.settings.batch_size]
        self.position += len(picked)
        return [self.examples[i] for i in picked]

    def collate(self, batch: Sequence[Example]) -> dict[str, torch.Tensor]:
        width = max(len(ex.ids) for ex in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ex in enumerate(batch):
            n = len(ex.ids)
            ids[row, :n] = torch.tensor(ex.ids, dtype=torch.long)
            mask[row, :n] = 1
            for start, end in ex.spans:
                labels[row, start:end] = ids[row, start:end]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    # ----- training ------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def train_step(self) -> StepResult:
        started = time.perf_counter()
        batch = self.collate(self._next_batch())
        loss = self.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        tokens = int(batch["attention_mask"].sum())
        return StepResult(self.step, float(loss.detach()), tokens, time.perf_counter() - started)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over the answer tokens.

        For the plain decoder architectures of :data:`SPARSE_HEAD_TYPES` the output layer runs
        only at the positions that predict an answer token (a few per example) instead of every
        position: the same loss as the model's own (a test checks), without a [tokens x vocab]
        logits tensor (382 MB per step for SmolLM2 at 2 x 972 tokens) and its backward pass.
        """
        causal = self.model.get_base_model()
        if getattr(causal.config, "model_type", "") not in SPARSE_HEAD_TYPES:
            return self.model(**batch).loss
        hidden = causal.get_decoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        labels = batch["labels"]
        rows, cols = (labels[:, 1:] != IGNORE).nonzero(as_tuple=True)
        logits = causal.get_output_embeddings()(hidden[rows, cols])
        return torch.nn.functional.cross_entropy(logits.float(), labels[rows, cols + 1])

    # ----- state ---------------------------------------------------------------------------
    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The LoRA weights by module name (``…q_proj.lora_A.weight``), detached copies."""
        peft = _peft()
        state = peft.get_peft_model_state_dict(self.model)
        return {_short(k): v.detach().clone().contiguous() for k, v in state.items()}

    def state(self) -> dict[str, Any]:
        """Everything a resumed trainer needs to continue exactly (tensors and plain values)."""
        np_state: Any = np.random.get_state()
        return {
            "adapter": self.adapter_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                "python": _python_rng(random.getstate()),
                "numpy": [
                    str(np_state[0]),
                    torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                    int(np_state[2]),
                    int(np_state[3]),
                    float(np_state[4]),
                ],
                "torch": torch.get_rng_state(),
            },
            "cursor": {"step": self.step, "epoch": self.epoch, "position": self.position},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        peft = _peft()
        adapter = {_long(k): v for k, v in state["adapter"].items()}
        result = peft.set_peft_model_state_dict(self.model, adapter)
        if getattr(result, "unexpected_keys", None):
            raise ApplianceError(
                "The checkpoint does not fit this model's adapter layout.",
                code="CHECKPOINT_MISMATCH",
                hint="Start a new job; the base model changed since this job began.",
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        version, internal, gauss = rng["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss))
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(rng["torch"])
        cursor = state["cursor"]
        self.step, self.epoch, self.position = cursor["step"], cursor["epoch"], cursor["position"]
        self._order = self._permutation(self.epoch)

    def wipe(self) -> None:
        """Zero the adapter weights, their gradients and the optimizer moments (policy stop)."""
        with torch.no_grad():
            for p in self.params:
                p.zero_()
                if p.grad is not None:
                    p.grad.zero_()
            for slot in self.optimizer.state.values():
                for value in slot.values():
                    if isinstance(value, torch.Tensor):
                        value.zero_()
        self.optimizer.state.clear()


def _linear_schedule(warmup: int, total: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _python_rng(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [int(version), torch.tensor(internal, dtype=torch.int64), gauss]


_PREFIX = "base_model.model."


def _short(key: str) -> str:
    return key[len(_PREFIX) :] if key.startswith(_PREFIX) else key


def _long(key: str) -> str:
    return key if key.startswith(_PREFIX) else _PREFIX + key
