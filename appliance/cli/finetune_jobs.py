"""`finetune start | status | list | cancel | resume` (and the hidden `_run` of a detached job)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from typing import Any

import click

from ._context import CliContext, emit_json, iso, pass_ctx
from ._open import open_home

_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
_detach = click.option(
    "--detach", is_flag=True, help="Train in a background process; follow it with `status`."
)
DETACH_WAIT_S = 120.0


def _service(ctx: CliContext) -> Any:
    from ..finetune.jobs import Finetuning

    return Finetuning(open_home(ctx))


@click.command("start")
@click.option("--base", required=True, help="The installed model to fine-tune.")
@click.option("--data", "data", required=True, help="The training data set (`finetune data`).")
@click.option("--name", required=True, help="Name of the adapter it makes (a new model id).")
@click.option("--rank", type=click.IntRange(1, 256), default=16, show_default=True)
@click.option("--epochs", type=click.IntRange(1, 100), default=1, show_default=True)
@click.option(
    "--max-steps",
    type=click.IntRange(0),
    default=None,
    help="Stop after N steps (default: finetune.max_steps; 0: every epoch in full).",
)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(1),
    default=None,
    help="Steps between encrypted checkpoints (default: finetune.checkpoint_every).",
)
@_detach
@pass_ctx
def finetune_start(
    ctx: CliContext,
    base: str,
    data: str,
    name: str,
    rank: int,
    epochs: int,
    max_steps: int | None,
    lr: float,
    seed: int,
    checkpoint_every: int | None,
    detach: bool,
) -> None:
    """Train a LoRA adapter of BASE on a data set, at low CPU priority; the result is NAME.

    The base model's policy must allow fine-tuning. Kill or stop the job at any time and
    `finetune resume JOB` continues from its last checkpoint.
    """
    from ..finetune.jobs import JobOptions

    service = _service(ctx)
    options = JobOptions(rank, epochs, max_steps, lr, seed, checkpoint_every)
    job = service.create(
        base=base, data=data, name=name, options=options, actor=ctx.actor(), now=ctx.now()
    )
    click.echo(f"Job {job['id']}: {base} on {data} -> adapter {name}.", err=True)
    _launch(ctx, service, job["id"], detach)


@click.command("resume")
@click.argument("job_id")
@_detach
@pass_ctx
def finetune_resume(ctx: CliContext, job_id: str, detach: bool) -> None:
    """Continue an interrupted or failed job from its last checkpoint."""
    service = _service(ctx)
    job = service.check_resumable(job_id)
    service.app.secure.record(
        "finetune.resume",
        actor=ctx.actor(),
        now=ctx.now(),
        object=job_id,
        details={"from_step": job["checkpoint_step"] or 0},
    )
    click.echo(f"Resuming {job_id} from step {job['checkpoint_step'] or 0}.", err=True)
    _launch(ctx, service, job_id, detach)


def _launch(ctx: CliContext, service: Any, job_id: str, detach: bool) -> None:
    if detach:
        proc = _spawn(ctx, job_id)
        service.db.update_job(job_id, pid=proc.pid)
        _wait_started(service, job_id, proc)
        click.echo(f"Training in process {proc.pid}; see `appliance finetune status {job_id}`.")
        return
    os.nice(service.app.settings.finetune.nice)
    state = _run_foreground(service, job_id)
    _final_message(service.job(job_id), state)


def _spawn(ctx: CliContext, job_id: str) -> subprocess.Popen[bytes]:
    """The same CLI in a new session; the passphrase travels on its stdin, never in its env."""
    log = ctx.home / "finetune" / f"{job_id}.log"
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    args = [sys.executable, "-m", "appliance", "--home", str(ctx.home)]
    args += ["--passphrase-file", "/dev/stdin", "finetune", "_run", job_id]
    with open(log, "ab") as out:
        os.chmod(log, 0o600)
        proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=out, stderr=out, start_new_session=True
        )
    assert proc.stdin is not None
    proc.stdin.write(ctx.passphrase().encode() + b"\n")
    proc.stdin.close()
    return proc


def _wait_started(service: Any, job_id: str, proc: subprocess.Popen[bytes]) -> None:
    """Until the child holds the job (or ended, or did not take it in time)."""
    deadline = time.monotonic() + DETACH_WAIT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if service.job(job_id)["running"]:
            return
        time.sleep(0.2)
    job = service.job(job_id)
    if job["running"] or job["state"] in ("finished", "cancelled"):
        return
    why = f" ({job['reason_code']}: {job['reason']})" if job["reason_code"] else ""
    raise click.ClickException(
        f"Job {job_id} did not start{why}; see {service.db.root / (job_id + '.log')}."
    )


def _run_foreground(service: Any, job_id: str) -> str:
    from tqdm import tqdm

    from ..finetune.runner import JobRunner, Progress

    bar = tqdm(desc=job_id, unit="step", file=sys.stderr, disable=None, dynamic_ncols=True)

    def progress(p: Progress) -> None:
        if p.state == "paused":
            job = service.job(job_id)
            bar.write(f"paused [{job['reason_code']}]: {job['reason']}; waiting for a policy")
            return
        bar.total = p.total
        bar.update(p.step - bar.n)
        bar.set_postfix(loss=f"{p.loss:.4f}", tok_s=f"{p.tokens_per_s:.0f}")

    try:
        return str(JobRunner(service, job_id, on_progress=progress).run())
    finally:
        bar.close()


def _final_message(job: dict[str, Any], state: str) -> None:
    if state == "finished":
        click.echo(
            f"Job {job['id']} finished after {job['step']} steps (loss {job['loss']:.4f}); "
            f"adapter {job['name']} is installed: `appliance ask ... --model {job['name']}`."
        )
    elif state == "cancelled":
        click.echo(f"Job {job['id']} was cancelled; its examples and checkpoints are shredded.")
    else:
        click.echo(
            f"Job {job['id']} stopped at step {job['step']} ({state}"
            + (f": [{job['reason_code']}] {job['reason']}" if job["reason_code"] else "")
            + f"); resume with `appliance finetune resume {job['id']}`."
        )
        raise SystemExit(1)


@click.command("_run", hidden=True)
@click.argument("job_id")
@pass_ctx
def finetune_run(ctx: CliContext, job_id: str) -> None:
    """Train a job in this (detached) process."""
    from ..finetune.runner import JobRunner

    service = _service(ctx)
    os.nice(service.app.settings.finetune.nice)
    state = JobRunner(service, job_id).run()
    click.echo(f"{job_id}: {state}")


# ----- reading ------------------------------------------------------------------------------


_ROW_KEYS = (
    *("id", "name", "base", "base_package", "dataset", "data_sha256", "state", "reason_code"),
    *("reason", "step", "total_steps", "percent", "examples", "loss", "tokens_per_s", "eta_s"),
    *("checkpoint_step", "checkpoint_at", "checkpoint_bytes", "running", "created_by"),
    *("created_at", "updated_at", "finished_at", "settings"),
)


def _row(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job.get(k) for k in _ROW_KEYS}


def _line(job: dict[str, Any]) -> str:
    loss = f"{job['loss']:.4f}" if job["loss"] is not None else "-"
    rate = f"{job['tokens_per_s']:.0f} tok/s" if job["tokens_per_s"] else "- tok/s"
    eta = _duration(job["eta_s"]) if job["state"] == "running" else "-"
    ckpt = f"step {job['checkpoint_step']}" if job["checkpoint_step"] else "none"
    why = f" [{job['reason_code']}] {job['reason']}" if job["reason_code"] else ""
    return (
        f"{job['id']} {job['state']}{why}: {job['base']} + {job['dataset']} -> {job['name']}, "
        f"step {job['step']}/{job['total_steps']} ({job['percent']}%), loss {loss}, {rate}, "
        f"ETA {eta}, last checkpoint {ckpt}"
    )


def _duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@click.command("status")
@click.argument("job_id", required=False)
@_json
@pass_ctx
def finetune_status(ctx: CliContext, job_id: str | None, as_json: bool) -> None:
    """State, step/total, loss, tokens/s, ETA and last checkpoint (default: the newest job)."""
    service = _service(ctx)
    job = service.job(job_id) if job_id else service.latest()
    if job is None:
        click.echo("No fine-tuning jobs.")
        return
    if as_json:
        emit_json(_row(job))
        return
    click.echo(_line(job))
    if job["checkpoint_at"]:
        click.echo(f"  checkpoint written {iso(int(job['checkpoint_at']))}")


@click.command("list")
@_json
@pass_ctx
def finetune_list(ctx: CliContext, as_json: bool) -> None:
    """Every fine-tuning job, newest first."""
    jobs = _service(ctx).jobs()
    if as_json:
        emit_json([_row(j) for j in jobs])
        return
    if not jobs:
        click.echo("No fine-tuning jobs.")
    for job in jobs:
        click.echo(_line(job))


@click.command("cancel")
@click.argument("job_id")
@pass_ctx
def finetune_cancel(ctx: CliContext, job_id: str) -> None:
    """Stop a job for good: its examples and checkpoints are crypto-shredded."""
    job = _service(ctx).cancel(job_id, actor=ctx.actor(), now=ctx.now())
    if job["state"] == "cancelled":
        click.echo(f"Cancelled {job_id}; its examples and checkpoints are shredded.")
    else:
        click.echo(f"Cancelling {job_id}: it stops at its next step.")
