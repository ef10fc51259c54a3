"""Running one fine-tuning job: start or resume, train, checkpoint, stop on policy, finish.

1. take the one-job lock; the job's record says ``preparing``;
2. open the base model for fine-tuning (every policy check plus the signed fine-tuning
   permission, audited) and build it in memory, float32 (:mod:`appliance.llm.loader`);
3. the first time, build the examples (:mod:`.examples` over :mod:`.context_index`) and keep them
   encrypted in the job's files; a resumed job reads them back, so it trains on exactly the same;
4. restore the last checkpoint, if any, and train: every step's loss is recorded; every
   ``checkpoint_every`` steps the trainer's whole state is encrypted into the home (audited);
5. every ``policy_check_s`` the base's policy is checked again: a policy that expired, was
   revoked or no longer allows fine-tuning stops the job: the weights in memory (base, adapter,
   optimizer moments) are zeroed, the record says ``paused`` and why, and the process waits for
   a valid policy, then resumes from the last checkpoint by itself;
6. at the end the adapter package is installed under the job's name and the job's encrypted
   examples and checkpoints are crypto-shredded.

All torch work runs in one thread of its own with the job's thread count (``ingest.threads``);
the calling thread only waits, so Ctrl-C stops the job at the next step with a checkpoint.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from secure.adapter import BaseRef
from secure.errors import SecureError

from ..errors import ApplianceError
from .examples import Example, ExampleOptions, build_examples
from .jobs import Finetuning
from .trainer import LoraTrainer, StepResult, TrainSettings

Clock = Callable[[], float]
ACTOR = "service:finetune"
RATE_WINDOW = 20  # steps the tokens/s and ETA average over


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    loss: float
    tokens_per_s: float
    eta_s: float | None
    state: str


class Stopped(Exception):
    """Raised inside the training thread to leave the loop (cancel, interrupt, policy)."""

    def __init__(self, state: str, code: str = "", reason: str = "") -> None:
        super().__init__(state)
        self.state, self.code, self.reason = state, code, reason


class JobRunner:
    def __init__(
        self,
        service: Finetuning,
        job_id: str,
        *,
        clock: Clock = time.time,
        on_progress: Callable[[Progress], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        embedder: Any = None,
    ) -> None:
        self.service, self.job_id, self.clock = service, job_id, clock
        self.app, self.db = service.app, service.db
        self.on_progress, self.sleep, self._embedder = on_progress, sleep, embedder
        self.stop = threading.Event()  # set by Ctrl-C in the calling thread
        self.job = service.job(job_id)
        self.s = self.job["settings"]
        self.files = service.files(job_id)
        self._loaded: Any = None
        self._trainer: LoraTrainer | None = None
        self._rates: deque[StepResult] = deque(maxlen=RATE_WINDOW)

    # ----- entry -----------------------------------------------------------------------------
    def run(self) -> str:
        """Train until finished, cancelled, interrupted or failed; returns the final state."""
        if not self.service.lock.acquire(self.job_id):
            raise ApplianceError(
                f"Fine-tuning job {self.service.lock.holder()} is running; one job at a time.",
                code="JOB_RUNNING",
                hint="Wait for it to finish or cancel it.",
            )
        try:
            return self._run_in_thread()
        finally:
            self.service.lock.release()

    def _run_in_thread(self) -> str:
        from ingest.threads import use_threads

        result: dict[str, Any] = {}

        def work() -> None:
            use_threads(int(self.s["threads"]))
            try:
                result["state"] = self._work()
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                result["error"] = exc

        thread = threading.Thread(target=work, name=f"finetune-{self.job_id}")
        thread.start()
        while thread.is_alive():
            try:
                thread.join(0.5)
            except KeyboardInterrupt:
                self.stop.set()
        if "error" in result:
            raise result["error"]
        return str(result["state"])

    def _work(self) -> str:
        self._update(state="preparing", pid=_pid(), cancel_requested=0)
        try:
            while True:
                try:
                    self._prepare()
                    self._train()
                    self._finish()
                    return "finished"
                except Stopped as stop:
                    self._wipe()
                    if stop.state != "paused":
                        return self._ended(stop)
                    try:
                        self._wait_for_policy(stop)
                    except Stopped as end:  # cancelled or interrupted while waiting
                        return self._ended(end)
        except BaseException as exc:
            self._wipe()
            self._failed(exc)
            raise
        finally:
            self._wipe()

    # ----- preparing -------------------------------------------------------------------------
    def _prepare(self) -> None:
        now = int(self.clock())
        models = self.app.models
        base = self.job["base"]
        if models.manifest(base).sha256 != self.job["base_manifest_sha256"]:
            raise ApplianceError(
                f"Model {base} was replaced by another package since job {self.job_id} began.",
                code="BASE_CHANGED",
                hint="Start a new job on the installed package.",
            )
        try:
            opened = models.open_model(
                base, user=None, role=None, now=now, host=self.app.secure.host(), purpose="finetune"
            )
        except SecureError as exc:
            raise Stopped("paused", exc.code, exc.diagnostics()) from None
        self._loaded = _load_fp32(base, opened, self.app.settings)
        if not self.files.has_examples():
            self._build_examples()
        examples, _meta = self.files.load_examples()
        self._update(examples=len(examples))
        self._trainer = self._make_trainer(examples)
        state = self.files.load_checkpoint()
        if state is not None:
            self._trainer.load_state(state)
        self._update(
            state="running", total_steps=self._trainer.total_steps, step=self._trainer.step
        )

    def _build_examples(self) -> None:
        from .context_index import ContextIndex

        service = self.app.training_data
        rows = service.open(service.get(self.job["dataset"])).rows
        index = ContextIndex(rows)
        tokenizer = self._loaded.tokenizer
        try:
            index.build(self.files.root / "scratch", self._embedder_for_examples())
            options = ExampleOptions(
                max_seq_tokens=int(self.s["max_seq_tokens"]),
                passages=int(self.s["passages"]),
                drop_gold=float(self.s["drop_gold"]),
                seed=int(self.s["seed"]),
                min_score=float(self.s["min_score"]),
                best_last=bool(self.s.get("best_source_last", False)),  # older jobs: False
            )
            built = build_examples(
                rows,
                tokenizer=tokenizer,
                eos_id=_eos_id(self._loaded),
                retrieve=lambda q: index.search(q, options.passages),
                gold_of=index.gold_of,
                options=options,
            )
        finally:
            index.close()
            self._embedder = None
        self.files.save_examples(built.examples, {"counts": built.counts})

    def _embedder_for_examples(self) -> Any:
        if self._embedder is None:
            from ingest.embed import Embedder

            e = self.app.settings.embedding
            self._embedder = Embedder.load(
                e.model, device=e.device, batch_size=e.batch_size, threads=e.threads or None
            )
        return self._embedder

    def _make_trainer(self, examples: list[Example]) -> LoraTrainer:
        s = self.s
        settings = TrainSettings(
            rank=int(s["rank"]),
            alpha=float(s["alpha"]),
            dropout=float(s["dropout"]),
            lr=float(s["lr"]),
            epochs=int(s["epochs"]),
            max_steps=s["max_steps"],
            seed=int(s["seed"]),
            batch_size=int(s["batch_size"]),
            warmup_share=float(s["warmup_share"]),
            layers=int(s.get("lora_layers", 0)),  # jobs started before the setting: every layer
        )
        tokenizer = self._loaded.tokenizer
        pad = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos_id(self._loaded)
        )
        return LoraTrainer(self._loaded.model, examples, settings, pad_id=pad)

    # ----- training --------------------------------------------------------------------------
    def _train(self) -> None:
        trainer = self._trainer
        assert trainer is not None
        every = int(self.s["checkpoint_every"])
        period = float(self.s["policy_check_s"])  # on the monotonic clock: a wall-clock jump
        next_check = time.monotonic() + period  # must not stall the checks
        while not trainer.done:
            self._check_stop(trainer)
            if time.monotonic() >= next_check:
                self._check_policy()
                next_check = time.monotonic() + period
            result = trainer.train_step()
            self._rates.append(result)
            self.db.record_loss(self.job_id, result.step, result.loss, result.tokens, self.clock())
            if result.step % every == 0 or trainer.done:
                self._checkpoint(trainer)
            self._report(trainer, result)

    def _check_stop(self, trainer: LoraTrainer) -> None:
        row = self.db.job(self.job_id) or {}
        if row.get("cancel_requested"):
            raise Stopped("cancelled")
        if self.stop.is_set():
            self._checkpoint(trainer)
            raise Stopped("interrupted", "INTERRUPTED", "stopped by the operator")

    def _check_policy(self) -> None:
        secure = self.app.secure
        secure.reload_state()
        base = self.job["base"]
        status = self.app.models.status(
            base, now=int(self.clock()), host=secure.host(), check_integrity=False
        )
        if status.unlockable and status.finetune:
            return
        code = status.reason_code if not status.unlockable else "FINETUNE_NOT_ALLOWED"
        reason = status.reason if not status.unlockable else "the policy no longer allows it"
        raise Stopped("paused", code, reason)

    def _checkpoint(self, trainer: LoraTrainer) -> None:
        size, seconds = self.files.save_checkpoint(trainer.state())
        now = self.clock()
        self._update(checkpoint_step=trainer.step, checkpoint_at=now, checkpoint_bytes=size)
        self.app.secure.record(
            "finetune.checkpoint",
            actor=ACTOR,
            now=int(now),
            object=self.job_id,
            details={
                "step": trainer.step,
                "bytes": size,
                "ms": int(seconds * 1000),
                "base": self.job["base"],
                "data_sha256": self.job["data_sha256"],
            },
        )

    def _report(self, trainer: LoraTrainer, result: StepResult) -> None:
        seconds = sum(r.seconds for r in self._rates)
        rate = sum(r.tokens for r in self._rates) / seconds if seconds else 0.0
        per_step = seconds / len(self._rates) if self._rates else 0.0
        eta = (trainer.total_steps - trainer.step) * per_step if per_step else None
        self._update(step=trainer.step, loss=result.loss, tokens_per_s=rate, eta_s=eta)
        if self.on_progress is not None:
            self.on_progress(
                Progress(trainer.step, trainer.total_steps, result.loss, rate, eta, "running")
            )

    # ----- endings ---------------------------------------------------------------------------
    def _finish(self) -> None:
        from ..llm.adapter import adapter_files

        trainer = self._trainer
        assert trainer is not None
        files = adapter_files(
            trainer.adapter_state(), rank=int(self.s["rank"]), alpha=float(self.s["alpha"])
        )
        job, now = self.job, int(self.clock())
        last = self._rates[-1].loss if self._rates else None
        self.app.models.adapters.install(
            job["name"],
            files,
            base=BaseRef(job["base"], job["base_package"], job["base_manifest_sha256"]),
            data={"dataset": job["dataset"], "sha256": job["data_sha256"]},
            training={**self.s, "job": self.job_id, "steps": trainer.step, "final_loss": last},
            actor=ACTOR,
            now=now,
        )
        self.app.secure.record(
            "finetune.finish",
            actor=ACTOR,
            now=now,
            object=self.job_id,
            details={
                "adapter": job["name"],
                "steps": trainer.step,
                "base": job["base"],
                "data_sha256": job["data_sha256"],
            },
        )
        self._wipe()
        self.files.shred()
        self._update(state="finished", finished_at=self.clock(), eta_s=0.0)

    def _ended(self, stop: Stopped) -> str:
        if stop.state == "cancelled":
            self.files.shred()
            self._update(state="cancelled", finished_at=self.clock())
        else:
            self._update(state=stop.state, reason_code=stop.code, reason=stop.reason)
        return stop.state

    def _failed(self, exc: BaseException) -> None:
        code = getattr(exc, "code", type(exc).__name__)
        message = exc.diagnostics() if hasattr(exc, "diagnostics") else str(exc)
        with contextlib.suppress(ApplianceError):
            self._update(state="failed", reason_code=str(code), reason=message[:500])

    def _wait_for_policy(self, stop: Stopped) -> None:
        """Paused: nothing of the model in memory; look for a valid policy every check period."""
        self._update(state="paused", reason_code=stop.code, reason=stop.reason)
        self.app.secure.record(
            "finetune.pause",
            actor=ACTOR,
            now=int(self.clock()),
            object=self.job_id,
            outcome="refused",
            reason=stop.code,
            details={"base": self.job["base"]},
        )
        if self.on_progress is not None:
            self.on_progress(Progress(-1, -1, float("nan"), 0.0, None, "paused"))
        while True:
            row = self.db.job(self.job_id) or {}
            if row.get("cancel_requested"):
                raise Stopped("cancelled")
            if self.stop.is_set():
                raise Stopped("interrupted", stop.code, stop.reason)
            try:
                self._check_policy()
            except Stopped:
                self.sleep(float(self.s["policy_check_s"]))
                continue
            self.app.secure.record(
                "finetune.resume", actor=ACTOR, now=int(self.clock()), object=self.job_id
            )
            self._update(state="preparing", reason_code="", reason="")
            return

    # ----- helpers ---------------------------------------------------------------------------
    def _wipe(self) -> None:
        """Zero the adapter, its optimizer moments and the base weights in memory."""
        if self._trainer is not None:
            self._trainer.wipe()
            self._trainer = None
        if self._loaded is not None:
            self._loaded.wipe()
            self._loaded = None

    def _update(self, **fields: Any) -> None:
        self.db.update_job(self.job_id, updated_at=self.clock(), **fields)


def _pid() -> int:
    import os

    return os.getpid()


def _eos_id(loaded: Any) -> int:
    eos = getattr(loaded.model.generation_config, "eos_token_id", None)
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    if eos is None:
        eos = loaded.tokenizer.eos_token_id
    if eos is None:
        raise ApplianceError(
            "The base model names no end-of-turn token; answers could not end.",
            code="MODEL_LOAD",
            hint="Package the model with its generation_config.json.",
        )
    return int(eos)


def _load_fp32(name: str, opened: Any, settings: Any) -> Any:
    """The base model from its decrypted buffers, float32 on the CPU (training precision)."""
    from typing import cast

    from ..llm.loader import LoadOptions, load_causal_lm
    from ..serve.runtime import load_options

    budget = load_options(settings).max_memory_bytes
    files = cast(dict[str, bytearray], opened.files)
    try:
        return load_causal_lm(
            name, files, options=LoadOptions(device="cpu", dtype="fp32", max_memory_bytes=budget)
        )
    finally:
        opened.files.clear()  # the loader owns (and on failure has zeroed) the buffers
