"""The appliance's training job beside a plain ``peft`` loop, interleaved in one process.

*Appliance side*: a job created like `finetune start` with the default options, run by the
product's :class:`~appliance.finetune.runner.JobRunner` in slices of ``steps`` steps. The first
slice builds the job's examples (retrieval over the data's contexts, encrypted into the job);
every later slice is a **resume**: the base model decrypted and built again, the examples and
the last checkpoint decrypted, the trainer restored. A slice ends the way Ctrl-C ends a job: a
checkpoint, then ``interrupted``. Its rate comes from the job's own step records (the end of its
first step to the end of its last), so it includes what the job does around the steps.

*Plain side*: what one would write with ``peft`` alone: the same base weights (decrypted once
by the product's loader, float32, as the job trains them), the same LoRA configuration, the same
examples decrypted from the job (token for token what the job trains on) in the same batches,
the same torch thread count in a thread of its own, AdamW, a linear schedule, gradient clipping,
the model's own forward and loss; no encryption, no checkpoints, no records.

Rounds alternate plain, appliance, plain, appliance…, each side covering the same steps of the
same example order, so both process the same tokens.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

from appliance.finetune.examples import Example
from appliance.finetune.jobs import Finetuning, JobOptions
from appliance.finetune.runner import JobRunner

SLICE_ADAPTER = "bench-slice"
IGNORE = -100


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(ex.ids) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ex in enumerate(batch):
        ids[row, : len(ex.ids)] = torch.tensor(ex.ids, dtype=torch.long)
        mask[row, : len(ex.ids)] = 1
        for start, end in ex.spans:
            labels[row, start:end] = ids[row, start:end]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class PlainLoop:
    """A plain peft LoRA loop over ``examples`` in the job's example order."""

    def __init__(self, model: Any, examples: list[Example], s: dict[str, Any], pad_id: int) -> None:
        import peft
        import torch
        from transformers import get_linear_schedule_with_warmup

        torch.manual_seed(int(s["seed"]))
        config = peft.LoraConfig(
            r=int(s["rank"]),
            lora_alpha=float(s["alpha"]),
            lora_dropout=float(s["dropout"]),
            target_modules="all-linear",
            bias="none",
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():  # peft reads a property transformers 5 deprecated
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            self.model = peft.get_peft_model(model, config)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=float(s["lr"]), weight_decay=0.0)
        total = math.ceil(len(examples) / int(s["batch_size"])) * int(s["epochs"])
        total = min(total, int(s["max_steps"])) if s.get("max_steps") else total
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, max(1, int(total * float(s["warmup_share"]))), total
        )
        self.examples, self.s, self.pad_id = examples, s, pad_id
        gen = torch.Generator().manual_seed(int(s["seed"]) * 1_000_003)  # the job's epoch 0
        self.order = [int(i) for i in torch.randperm(len(examples), generator=gen)]

    def batch(self, step: int) -> list[Example]:
        size = int(self.s["batch_size"])
        start = (step - 1) * size % len(self.order)
        return [self.examples[i] for i in self.order[start : start + size]]

    def run(self, first: int, last: int) -> list[dict[str, float]]:
        """Train steps ``first..last`` (1-based) in a new thread with the job's thread count."""
        out: list[dict[str, float]] = []
        error: list[BaseException] = []

        def work() -> None:
            import torch

            from ingest.threads import use_threads

            use_threads(int(self.s["threads"]))
            try:
                for step in range(first, last + 1):
                    batch = collate(self.batch(step), self.pad_id)
                    loss = self.model(**batch).loss
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.params, 1.0)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    tokens = int(batch["attention_mask"].sum())
                    value, at = float(loss.detach()), time.time()
                    out.append({"step": step, "loss": value, "tokens": tokens, "at": at})
            except BaseException as exc:  # re-raised in the caller
                error.append(exc)

        thread = threading.Thread(target=work, name="plain-peft")
        thread.start()
        thread.join()
        if error:
            raise error[0]
        return out


def appliance_slice(
    service: Finetuning, job_id: str, steps: int, embedder: Any
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Run (or resume) the job for ``steps`` steps, then stop it as Ctrl-C does."""
    done: list[int] = []
    runner = JobRunner(service, job_id, embedder=embedder)
    timings: dict[str, float] = {}
    load_checkpoint = runner.files.load_checkpoint

    def timed_load() -> Any:
        t0 = time.perf_counter()
        try:
            return load_checkpoint()
        finally:
            timings["load_checkpoint_s"] = time.perf_counter() - t0

    def progress(p: Any) -> None:
        if not done:
            timings["start_to_first_step_end_s"] = time.perf_counter() - started
        done.append(p.step)
        if len(done) >= steps:
            runner.stop.set()

    runner.files.load_checkpoint = timed_load  # type: ignore[method-assign]
    runner.on_progress = progress
    started = time.perf_counter()
    state = runner.run()
    if state != "interrupted" or len(done) != steps:
        raise RuntimeError(f"slice of job {job_id} ended {state} after {len(done)} steps")
    losses = [r for r in service.db.losses(job_id) if r["step"] in done]
    return losses, timings


def rate(records: list[dict[str, Any]]) -> float:
    """Tokens/s from the end of the first step to the end of the last."""
    seconds = records[-1]["at"] - records[0]["at"]
    return sum(r["tokens"] for r in records[1:]) / seconds


def interleaved(
    app: Any,
    embedder: Any,
    *,
    base: str,
    data: str,
    rounds: int,
    steps: int,
    actor: str,
    warm_steps: int = 2,
) -> dict[str, Any]:
    """Plain and appliance slices, alternating (module doc); tokens/s ratio appliance ÷ plain."""
    from appliance.finetune.runner import _eos_id, _load_fp32

    service = Finetuning(app)
    job = service.create(
        base=base,
        data=data,
        name=SLICE_ADAPTER,
        options=JobOptions(),
        actor=actor,
        now=int(time.time()),
    )
    job_id, s = job["id"], job["settings"]
    out: dict[str, Any] = {"job": job_id, "rounds": rounds, "steps_per_slice": steps, "slices": []}
    # the first slice builds the examples (not compared); the plain side trains on the very same
    t0 = time.perf_counter()
    _warm, warm_t = appliance_slice(service, job_id, warm_steps, embedder)
    out["first_slice_s"] = round(time.perf_counter() - t0, 1)
    out["first_slice"] = {k: round(v, 2) for k, v in warm_t.items()}
    examples, meta = service.files(job_id).load_examples()
    out["example_counts"] = meta.get("counts")
    out["checkpoint_encrypted_bytes"] = _checkpoint_bytes(service, job_id)
    opened = app.models.open_model(
        job["base"],
        user=None,
        role=None,
        now=int(time.time()),
        host=app.secure.host(),
        purpose="finetune",
    )
    loaded = _load_fp32(job["base"], opened, app.settings)
    tok = loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else _eos_id(loaded)
    plain = PlainLoop(loaded.model, examples, s, pad)
    resumes = []
    try:
        for r in range(1, rounds + 1):
            first = warm_steps + (r - 1) * steps + 1
            last = first + steps - 1
            plain_records = plain.run(first, last)
            t0 = time.perf_counter()
            app_records, timings = appliance_slice(service, job_id, steps, embedder)
            resumes.append({k: round(v, 2) for k, v in timings.items()})
            same = [a["tokens"] for a in app_records] == [p["tokens"] for p in plain_records]
            out["slices"].append(
                {
                    "steps": [first, last],
                    "same_tokens": same,
                    "plain_tokens_per_s": round(rate(plain_records), 1),
                    "appliance_tokens_per_s": round(rate(app_records), 1),
                    "ratio": round(rate(app_records) / rate(plain_records), 3),
                    "plain_loss": [round(p["loss"], 4) for p in plain_records],
                    "appliance_loss": [round(a["loss"], 4) for a in app_records],
                    "wall_s": round(time.perf_counter() - t0, 1),
                }
            )
    finally:
        loaded.wipe()
        service.cancel(job_id, actor=actor, now=int(time.time()))  # shreds its files
    out["resumes"] = resumes
    return out


def _checkpoint_bytes(service: Finetuning, job_id: str) -> int:
    """Size on disk of the job's encrypted checkpoint container."""
    from appliance.finetune.checkpoint import CHECKPOINT_ID
    from secure.vault import SUFFIX

    return (service.files(job_id).root / f"{CHECKPOINT_ID}{SUFFIX}").stat().st_size
