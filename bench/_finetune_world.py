"""The fine-tuning benchmark's scratch appliance, training data and `finetune start` child.

A new home in a temporary folder (random passphrase, the scratch settings of `eval answers`:
`appliance.rag.eval_home.scratch_settings`), with:

* the base model packaged **encrypted** the way `appliance model package` does it (a GGUF such
  as the bundled SmolLM2 is dequantised in memory and encrypted from memory; a model directory is
  packaged file by file), installed, and granted by a scratch issuer's signed policy for roles
  staff and admin **with fine-tuning allowed** (`policy issue --allow-finetune`);
* the staff account of `eval answers` (``eval-staff``, group ``eval``);
* the training rows of the *tuning* articles of the SQuAD subset (`qa_set.article_split`),
  imported through `finetune data add`'s service (validated, encrypted into the home); the
  source file the benchmark writes for it is deleted right after, as a customer would.

:func:`run_start` runs ``appliance finetune start`` as a child process, exactly as a customer
types it (defaults unless told otherwise), and measures its wall time and peak RSS
(``wait4``); :func:`job_report` reads what the job recorded (steps, loss curve, tokens/s,
checkpoints from the audit log).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config import Settings, write_settings
from appliance.rag.eval_home import GROUP, ROLE, USER, scratch_settings
from appliance.rag.qa_set import article_split
from appliance.users import User
from appliance.wiring import Appliance, init_appliance, open_appliance
from secure.issuer import IssuerKey
from secure.package import package_model, unseal_package_key
from secure.policy import issue_policy

BASE = "smollm2"  # the name the demo packages the bundled model under
DATASET = "squad-tune"
ADAPTER = "smollm2-squad"
ACTOR = "bench:finetune"
POLICY_S = 7 * 24 * 3600


@dataclass
class World:
    root: Path
    passphrase: str
    settings: Settings
    app: Appliance
    user: User
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.settings.home

    def reopen(self) -> Appliance:
        """The home opened again: after a child process wrote to it (audit log, keyring), this
        process must not append with what it read before."""
        self.app = open_appliance(self.settings, self.passphrase, now=int(time.time()), actor=ACTOR)
        return self.app


def build_world(
    root: Path, model_source: Path, *, settings: dict[str, dict[str, Any]] | None = None
) -> World:
    """The scratch home with the base model installed and fine-tuning allowed (module doc).

    ``settings`` (section -> values) are written into the home's ``appliance.toml``, so the
    `finetune start` child reads them too (the benchmark's test uses it for the tiny model; the
    real run passes nothing: the defaults)."""
    home = root / "home"
    home.mkdir(mode=0o700, parents=True)
    for section, values in (settings or {}).items():
        write_settings(home, section, values)
    scratch = scratch_settings(home, None)
    passphrase = secrets.token_urlsafe(32)
    now = int(time.time())
    app = init_appliance(scratch, passphrase, now=now, actor=ACTOR)
    user = app.users.add_user(
        USER, role=ROLE, groups=[GROUP], password=secrets.token_urlsafe(24), now=now
    )
    world = World(root, passphrase, scratch, app, user)
    started = time.perf_counter()
    package = root / "package"
    issuer = IssuerKey.generate("bench-vendor")
    package_base(model_source, package, issuer, now)
    world.timings["package_s"] = time.perf_counter() - started
    app.models.install_package(package, actor=ACTOR, now=now)
    manifest, key = unseal_package_key(package, issuer)
    host = app.secure.host()
    policy = issue_policy(
        issuer,
        identity=app.secure.public_identity(host, now=now),
        grants=[(BASE, manifest.package_id, manifest.sha256, key, [ROLE, "admin"], [])],
        serial=1,
        issued_at=now - 60,
        not_before=now - 60,
        not_after=now + POLICY_S,
        allow_finetune=True,
    )
    app.models.install_policy(policy, actor=ACTOR, now=now, host=host)
    shutil.rmtree(package)  # installed: the home holds its own copy
    return world


def package_base(source: Path, out_dir: Path, issuer: IssuerKey, now: int) -> None:
    """`appliance model package SOURCE`: a GGUF dequantised and encrypted from memory, or a
    model directory encrypted file by file."""
    if source.is_dir():
        package_model(source, out_dir, name=BASE, issuer=issuer.public(), now=now)
        return
    from appliance.llm.gguf_import import package_gguf

    package_gguf(source, out_dir, name=BASE, issuer=issuer.public(), now=now)


def tune_lines(train_file: Path) -> list[str]:
    """The rows of ``train_file`` (SQuAD subset, QA form) whose article is a tuning article."""
    kept = []
    with open(train_file, encoding="utf-8") as fh:
        for line in fh:
            if line.strip() and article_split(json.loads(line).get("title", "")) == "tune":
                kept.append(line if line.endswith("\n") else line + "\n")
    return kept


def import_data(world: World, lines: list[str]) -> dict[str, Any]:
    """`finetune data add`: the rows validated and encrypted into the home; source deleted."""
    source = world.root / "src" / "train-tune.jsonl"
    source.parent.mkdir(mode=0o700)
    source.write_text("".join(lines), encoding="utf-8")
    started = time.perf_counter()
    try:
        dataset = world.app.training_data.add(
            source, name=DATASET, actor=ACTOR, now=int(time.time())
        )
    finally:
        source.unlink()
    return {
        "rows": dataset.counts["rows"],
        "impossible": dataset.counts["impossible"],
        "bytes": dataset.size,
        "sha256": dataset.sha256,
        "import_s": round(time.perf_counter() - started, 2),
    }


def run_start(world: World, extra_args: list[str], *, log: Path) -> dict[str, Any]:
    """``appliance finetune start --base … --data … --name …`` as a child process, foreground
    (the passphrase on its stdin, as `--detach` hands it over); returns wall time, peak RSS."""
    args = [sys.executable, "-m", "appliance", "--home", str(world.home)]
    args += ["--passphrase-file", "/dev/stdin", "finetune", "start"]
    args += ["--base", BASE, "--data", DATASET, "--name", ADAPTER, *extra_args]
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
    assert proc.stdin is not None
    proc.stdin.write(world.passphrase.encode() + b"\n")
    proc.stdin.close()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"finetune start exited with {proc.returncode}:\n{tail}")
    return {
        "command": "appliance finetune start --base {} --data {} --name {} {}".format(
            BASE, DATASET, ADAPTER, " ".join(extra_args)
        ).strip(),
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # KiB on Linux
        "cpu_user_s": round(usage.ru_utime, 1),
        "cpu_system_s": round(usage.ru_stime, 1),
    }


def training_rate(losses: list[dict[str, Any]]) -> float | None:
    """Tokens per second from the job's own step records, over wall time between the end of
    the first step and the end of the last (so it includes everything the job does between
    steps: loss records, status updates, policy checks, encrypted checkpoints)."""
    if len(losses) < 2:
        return None
    seconds = losses[-1]["at"] - losses[0]["at"]
    return sum(r["tokens"] for r in losses[1:]) / seconds if seconds > 0 else None


def job_report(app: Appliance, job: dict[str, Any], *, curve_points: int = 60) -> dict[str, Any]:
    """What a job recorded: its settings, timeline, loss curve, tokens/s and checkpoints."""
    losses = app.finetune_db.losses(job["id"])
    every = max(1, len(losses) // curve_points)
    checkpoints = [
        {"step": e.details.get("step"), "bytes": e.details.get("bytes"), "ms": e.details.get("ms")}
        for e in app.secure.audit.tail(100_000)
        if e.action == "finetune.checkpoint" and e.object == job["id"]
    ]
    first_at = losses[0]["at"] if losses else None
    last_at = losses[-1]["at"] if losses else None
    rate = training_rate(losses)
    report: dict[str, Any] = {
        "job": job["id"],
        "state": job["state"],
        "settings": job["settings"],
        "examples": job["examples"],
        "steps": job["step"],
        "total_steps": job["total_steps"],
        "tokens": sum(r["tokens"] for r in losses),
        "tokens_per_s": round(rate, 1) if rate else None,
        "tokens_per_s_job_status": job["tokens_per_s"],
        "seconds_per_step": round((last_at - first_at) / (len(losses) - 1), 2)
        if len(losses) > 1 and first_at is not None and last_at is not None
        else None,
        "timeline_s": {
            "created_to_first_step_end": _delta(job["created_at"], first_at),
            "training": _delta(first_at, last_at),
            "last_step_to_finished": _delta(last_at, job.get("finished_at")),
        },
        "loss_every": every,
        "loss_curve": [[r["step"], round(r["loss"], 4)] for r in losses if r["step"] % every == 0],
        "loss_first_10_mean": _mean([r["loss"] for r in losses[:10]]),
        "loss_last_10_mean": _mean([r["loss"] for r in losses[-10:]]),
        "checkpoints": checkpoints,
    }
    return report


def _delta(a: float | None, b: float | None) -> float | None:
    return round(b - a, 1) if a is not None and b is not None else None


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None
