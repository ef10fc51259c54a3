"""Fine-tuning jobs: create, list, cancel, and tell whether one is running (one at a time).

A job's record (:class:`.store.FinetuneDb`) holds its base model (name, package id, manifest
digest), its data set (name, SHA-256) and every setting it trains with, fixed at creation so a
resumed job trains exactly like the original. The process that trains holds an exclusive lock
(``<home>/finetune/job.lock``, ``flock``: the kernel drops it when the process dies, even on
``kill -9``), so there is one training job at a time, and a job whose record says it is active
while nobody holds the lock was interrupted and can be resumed.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secure.errors import PolicyRefused

from ..errors import AlreadyExists, ApplianceError, NotFound, UsageError
from .checkpoint import JobFiles
from .datasets import check_name

if TYPE_CHECKING:
    from ..wiring import Appliance

LOCK_FILE = "job.lock"
ACTIVE = ("queued", "preparing", "running", "paused")
FINAL = ("finished", "failed", "cancelled")
RESUMABLE = ("interrupted", "failed")


@dataclass(frozen=True)
class JobOptions:
    """What `finetune start` was asked for; the rest comes from the finetune settings."""

    rank: int = 16
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 1e-3
    seed: int = 0
    checkpoint_every: int | None = None


class JobLock:
    """The one-job-at-a-time lock. ``acquire`` never blocks."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, job_id: str) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{job_id} {os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def holder(self) -> str | None:
        """The job id of the process holding the lock, or None when no job runs."""
        if not self.path.exists():
            return None
        probe = JobLock(self.path.parent)
        if probe.acquire("probe"):
            probe.release()
            return None
        try:
            return self.path.read_text().split()[0]
        except (OSError, IndexError):
            return "unknown"


class Finetuning:
    """The job commands' library side (the CLI and the admin page call these)."""

    def __init__(self, app: Appliance) -> None:
        self.app, self.db = app, app.finetune_db
        self.lock = JobLock(self.db.root)
        self.jobs_root = self.db.root / "jobs"

    # ----- reading ---------------------------------------------------------------------------
    def view(self, row: dict[str, Any]) -> dict[str, Any]:
        """The record with the state a reader should see (``interrupted`` when its process is
        gone) and the progress fields computed."""
        out = dict(row)
        running = self.lock.holder() == row["id"]
        if row["state"] in ACTIVE and not running and not _queued_alive(row):
            out["state"] = "interrupted"
        out["running"] = running
        total = row["total_steps"] or 0
        out["percent"] = round(100 * row["step"] / total, 1) if total else 0.0
        return out

    def job(self, job_id: str) -> dict[str, Any]:
        row = self.db.job(job_id)
        if row is None:
            raise NotFound(f"No fine-tuning job {job_id}.", hint="See `appliance finetune list`.")
        return self.view(row)

    def jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        return [self.view(r) for r in self.db.jobs(limit)]

    def latest(self) -> dict[str, Any] | None:
        rows = self.db.jobs(1)
        return self.view(rows[0]) if rows else None

    # ----- creating --------------------------------------------------------------------------
    def create(
        self, *, base: str, data: str, name: str, options: JobOptions, actor: str, now: int
    ) -> dict[str, Any]:
        check_name(name, "adapter")
        models = self.app.models
        if models.is_adapter(base):
            raise UsageError(
                f"{base} is an adapter; fine-tune its base model instead.",
                hint="See `appliance model list`.",
            )
        dataset = self.app.training_data.get(data)
        manifest = models.manifest(base)
        self._check_name_free(name)
        self._check_allowed(base, actor, now)
        running = self.lock.holder()
        if running is not None:
            raise ApplianceError(
                f"Fine-tuning job {running} is running; one job runs at a time.",
                code="JOB_RUNNING",
                hint="Wait for it, or cancel it with `appliance finetune cancel JOB`.",
            )
        job_id = "ft-" + secrets.token_hex(6)
        job: dict[str, Any] = {
            "id": job_id,
            "name": name,
            "base": base,
            "base_package": manifest.package_id,
            "base_manifest_sha256": manifest.sha256,
            "dataset_id": dataset.id,
            "dataset": dataset.name,
            "data_sha256": dataset.sha256,
            "settings": job_settings(self.app.settings, options),
            "state": "queued",
            "pid": os.getpid(),  # the creating process trains it, or hands it to a child
            "created_by": actor,
            "created_at": now,
            "updated_at": now,
        }
        self.app.secure.record(
            "finetune.start",
            actor=actor,
            now=now,
            object=job_id,
            details={
                "base": base,
                "base_package": manifest.package_id,
                "data": dataset.name,
                "data_sha256": dataset.sha256,
                "adapter": name,
                "rank": options.rank,
                "epochs": options.epochs,
                "seed": options.seed,
            },
        )
        self.db.add_job(job)
        return self.job(job_id)

    def _check_name_free(self, name: str) -> None:
        if name in self.app.models.installed():
            raise AlreadyExists(
                f"A model or adapter named {name} is installed.",
                hint="Choose another --name.",
            )
        for row in self.db.jobs(1000):
            if row["name"] == name and row["state"] not in ("cancelled", "failed", "finished"):
                raise AlreadyExists(
                    f"Job {row['id']} is already training an adapter named {name}.",
                    hint="Choose another --name, or cancel that job.",
                )

    def _check_allowed(self, base: str, actor: str, now: int) -> None:
        """The base's policy must allow fine-tuning on this appliance now (audited if not)."""
        status = self.app.models.status(base, now=now, host=self.app.secure.host())
        if status.unlockable and status.finetune:
            return
        code = "FINETUNE_NOT_ALLOWED" if status.unlockable else status.reason_code
        self.app.secure.record(
            "finetune.start",
            actor=actor,
            now=now,
            object=base,
            outcome="refused",
            reason=code,
        )
        if not status.unlockable:
            raise PolicyRefused(status.reason, code=code, hint="")
        raise PolicyRefused(
            f"The policy of model {base} does not allow fine-tuning on this appliance.",
            code=code,
            hint="Ask the issuer for a policy issued with --allow-finetune, then run "
            "`appliance policy install FILE`.",
        )

    # ----- cancelling and resuming -----------------------------------------------------------
    def cancel(self, job_id: str, *, actor: str, now: int) -> dict[str, Any]:
        job = self.job(job_id)
        if job["state"] in FINAL:
            raise UsageError(f"Job {job_id} has already ended ({job['state']}).")
        self.app.secure.record(
            "finetune.cancel",
            actor=actor,
            now=now,
            object=job_id,
            details={"step": job["step"], "base": job["base"], "data_sha256": job["data_sha256"]},
        )
        if job["running"]:
            self.db.update_job(job_id, cancel_requested=1, updated_at=time.time())
            return self.job(job_id)
        self.files(job_id).shred()
        self.db.update_job(job_id, state="cancelled", finished_at=time.time())
        return self.job(job_id)

    def check_resumable(self, job_id: str) -> dict[str, Any]:
        job = self.job(job_id)
        if job["running"]:
            raise ApplianceError(
                f"Job {job_id} is running.", code="JOB_RUNNING", hint="See its status."
            )
        if job["state"] not in RESUMABLE:
            raise UsageError(
                f"Job {job_id} is {job['state']}; only an interrupted or failed job resumes.",
                hint="A paused job resumes by itself once a valid policy is installed.",
            )
        return job

    def files(self, job_id: str) -> JobFiles:
        return JobFiles(self.app.secure, self.jobs_root, job_id)


def _queued_alive(row: dict[str, Any]) -> bool:
    """A detached job between its start and taking the lock: alive while its process is."""
    if row["state"] != "queued" or not row.get("pid"):
        return False
    try:
        os.kill(int(row["pid"]), 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def training_threads(cores: int) -> int:
    """The default: every core but one, which stays with serving. On a 2-core box one training
    thread also ran twice as fast as two while other work shared the cores (OpenMP workers
    waiting for a preempted partner; `docs/benchmarks.md`, fine-tuning)."""
    return max(1, cores - 1)


def _max_steps(asked: int | None, default: int) -> int | None:
    """--max-steps if given (0: no cap), else finetune.max_steps (0: no cap); None = no cap."""
    steps = default if asked is None else asked
    return steps or None


def job_settings(settings: Any, options: JobOptions) -> dict[str, Any]:
    """Everything the job trains with, fixed now (a resume must not pick up new settings)."""
    f = settings.finetune
    threads = f.threads or training_threads(os.cpu_count() or 1)
    return {
        "rank": options.rank,
        "alpha": f.lora_alpha or 2.0 * options.rank,
        "dropout": f.lora_dropout,
        "lora_layers": f.lora_layers,
        "lr": options.lr,
        "epochs": options.epochs,
        "max_steps": _max_steps(options.max_steps, f.max_steps),
        "seed": options.seed,
        "batch_size": f.batch_size,
        "warmup_share": f.warmup_share,
        "checkpoint_every": options.checkpoint_every or f.checkpoint_every,
        "threads": threads,
        "max_seq_tokens": f.max_seq_tokens,
        "passages": f.passages,
        "drop_gold": f.drop_gold,
        "min_score": settings.answer.min_score,
        "best_source_last": settings.answer.best_source_last,  # the prompt as serving builds it
        "policy_check_s": f.policy_check_s,
    }
