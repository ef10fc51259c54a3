"""kill -9 and resume, for real, through the CLI; and the D1 canary scan over the whole flow.

In child processes whose every writable location is redirected under the test's folder: `finetune
data add` (training rows carrying a canary string), an uninterrupted reference job, a detached
job killed with SIGKILL after its first checkpoint, `finetune resume`, then `ask --model` on the
adapter. The resumed job's loss at every step equals the reference job's (same data, seed and
settings) within 1e-5. Then every file under the home, the fake user home and the temp folder is
scanned for the training canary, the base model's planted canary, and bytes of the adapter's
weights (taken from the checkpoint at kill time and from the final adapter): none may be there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.finetune.jobs import Finetuning
from tests.support.finetune_kit import (
    BASE,
    ENV,
    PASSPHRASE,
    build_finetune_world,
    training_rows,
    write_rows,
)
from tests.support.fixtures import build_tiny, find_patterns, redirected_child

START = ["--base", BASE, "--data", "codes", "--rank", "4", "--epochs", "3", "--lr", "1e-3"]
START += ["--seed", "3", "--checkpoint-every", "5"]
TOTAL_STEPS = 24  # 16 rows, batch 2, 3 epochs


def _cli(env: dict[str, str], cwd: Path, *args: str, timeout: float = 600) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    return proc.stdout


def _weight_pattern(state: dict[str, Any]) -> bytes:
    """32 bytes from the middle of the largest trained LoRA B matrix (never all zero)."""
    name = max((k for k in state if "lora_B" in k), key=lambda k: float(state[k].abs().sum()))
    raw = state[name].contiguous().view(-1).numpy().tobytes()
    middle = len(raw) // 2
    pattern = raw[middle : middle + 32]
    assert any(pattern)
    return pattern


@pytest.mark.slow
def test_kill_9_then_resume_matches_the_uninterrupted_run_and_leaves_no_plaintext(
    tmp_path: Path,
) -> None:
    import secrets

    import torch

    from appliance.llm.adapter import WEIGHTS
    from appliance.llm.safetensors_mem import tensors_from_buffer

    model = build_tiny(tmp_path / "vendor-src", with_canary=True)
    child = redirected_child(tmp_path)
    world = build_finetune_world(child.work, model.path, now=int(time.time()))
    from tests.support.serving import ingest_docs

    app = world.appliance()
    docs = {"public/codes.md": "# Codes\n\nThe budget code is 512. The travel code is 640.\n"}
    ingest_docs(app, docs)
    canary = secrets.token_hex(12)
    source = write_rows(tmp_path / "customer" / "train.jsonl", training_rows(16, canary=canary))
    env = {
        **child.env,
        **ENV,
        "APPLIANCE_HOME": str(world.home),
        "APPLIANCE_PASSPHRASE": PASSPHRASE,
        "APPLIANCE__SERVE__WATCH_DROP": "false",
    }
    cwd = child.work
    _cli(env, cwd, "finetune", "data", "add", str(source), "--name", "codes")
    _cli(env, cwd, "finetune", "start", *START, "--name", "reference")
    service = Finetuning(world.appliance())
    reference = next(j for j in service.jobs() if j["name"] == "reference")
    assert reference["state"] == "finished"
    expected = [r["loss"] for r in service.db.losses(reference["id"])]
    assert len(expected) == TOTAL_STEPS

    # a detached job, killed with SIGKILL a few steps after its first checkpoint
    _cli(env, cwd, "finetune", "start", *START, "--name", "resumed", "--detach")
    job = next(j for j in service.jobs() if j["name"] == "resumed")
    deadline = time.monotonic() + 600
    while True:
        row = service.job(job["id"])
        if (row["checkpoint_step"] or 0) >= 5 and row["step"] >= row["checkpoint_step"] + 2:
            break
        assert row["state"] in ("queued", "preparing", "running"), row
        assert time.monotonic() < deadline, row
        time.sleep(0.05)
    os.kill(int(row["pid"]), signal.SIGKILL)
    time.sleep(0.5)
    killed = service.job(job["id"])
    assert killed["state"] == "interrupted" and not killed["running"]
    assert 5 <= killed["checkpoint_step"] < TOTAL_STEPS
    status = _cli(env, cwd, "finetune", "status", job["id"])
    assert "interrupted" in status and f"last checkpoint step {killed['checkpoint_step']}" in status
    state = service.files(job["id"]).load_checkpoint()
    assert state is not None and state["cursor"]["step"] == killed["checkpoint_step"]
    patterns = {canary.encode(), *model.patterns, _weight_pattern(state["adapter"])}
    before = [r["loss"] for r in service.db.losses(job["id"])]
    assert before == expected[: len(before)]  # the same run, up to the kill

    out = _cli(env, cwd, "finetune", "resume", job["id"])
    assert "finished" in out
    resumed = [r["loss"] for r in service.db.losses(job["id"])]
    assert len(resumed) == TOTAL_STEPS
    assert max(abs(a - b) for a, b in zip(resumed, expected, strict=True)) <= 1e-5

    # the adapter is served as a model of its own
    answer = _cli(
        env, cwd, "ask", "what is the budget code?", "--user", "bob", "--model", "resumed"
    )
    assert "[model resumed]" in answer
    listed = _cli(env, cwd, "model", "list")
    assert f"resumed (adapter of {BASE})" in listed

    app = world.appliance()
    files = app.models.adapters.open(
        "resumed", base_manifest_sha256=app.models.manifest(BASE).sha256
    )
    final = {k: v.clone() for k, v in tensors_from_buffer(files[WEIGHTS]).items()}
    patterns.add(_weight_pattern(final))
    del files
    # the plaintext exists where the customer and the vendor keep their sources, nowhere else
    assert find_patterns([source.parent], [canary.encode()])
    assert find_patterns([model.path], model.patterns)
    roots = [child.work, child.home, child.tmp]
    assert find_patterns(roots, patterns) == []
    assert torch.get_num_threads() >= 1
