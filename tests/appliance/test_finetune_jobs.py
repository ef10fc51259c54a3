"""Fine-tuning jobs end to end in one process (real home, crypto, SQLite, Milvus Lite scratch,
bundled embedder, tiny Qwen2, peft): permission, one job at a time, finish and install, serve
the adapter under its base's policy, policy stop and resume, cancel, tampering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from appliance.errors import ApplianceError, Forbidden, ModelUnavailable
from appliance.finetune.jobs import Finetuning, JobLock, JobOptions
from appliance.finetune.runner import JobRunner, Progress
from appliance.llm.loader import LoadOptions
from appliance.serve.models import ModelManager
from secure.errors import PolicyRefused, TamperedError
from secure.package import package_model
from tests.support.finetune_kit import (
    BASE,
    NOW,
    FinetuneWorld,
    build_finetune_world,
    training_rows,
    write_rows,
)
from tests.support.fixtures import TinyModel, make_tiny_model_fixture
from tests.support.serving import Clock

tiny_model = make_tiny_model_fixture(scope="module")
OPTIONS = JobOptions(rank=4, epochs=2, lr=1e-3, seed=3, checkpoint_every=4)


@pytest.fixture(scope="module")
def embedder() -> Any:
    from ingest.embed import Embedder

    return Embedder.load("bundled", threads=1)


def _world(tmp_path: Path, model: TinyModel, **kw: Any) -> tuple[FinetuneWorld, Any]:
    world = build_finetune_world(tmp_path, model.path, **kw)
    app = world.appliance()
    app.training_data.add(
        write_rows(tmp_path / "src" / "train.jsonl", training_rows(16)),
        name="codes",
        actor="admin",
        now=NOW,
    )
    return world, app


def _actions(app: Any, prefix: str = "finetune.") -> list[tuple[str, str, str]]:
    entries = app.secure.audit.tail(400)
    return [
        (e.action, e.outcome, e.reason)
        for e in entries
        if e.action.startswith(prefix) and not e.action.startswith("finetune.data.")
    ]


def _run(service: Finetuning, job_id: str, embedder: Any, **kw: Any) -> tuple[str, JobRunner]:
    runner = JobRunner(service, job_id, embedder=embedder, **kw)
    return runner.run(), runner


def test_without_the_signed_permission_no_job_starts(tmp_path: Path, tiny_model: TinyModel) -> None:
    _, app = _world(tmp_path, tiny_model, allow_finetune=False)
    with pytest.raises(PolicyRefused) as info:
        Finetuning(app).create(
            base=BASE, data="codes", name="x", options=OPTIONS, actor="admin", now=NOW
        )
    assert info.value.code == "FINETUNE_NOT_ALLOWED"
    assert _actions(app) == [("finetune.start", "refused", "FINETUNE_NOT_ALLOWED")]
    assert app.finetune_db.jobs() == []


def test_one_job_at_a_time(tmp_path: Path, tiny_model: TinyModel, embedder: Any) -> None:
    _, app = _world(tmp_path, tiny_model)
    service = Finetuning(app)
    job = service.create(base=BASE, data="codes", name="a", options=OPTIONS, actor="t", now=NOW)
    other = JobLock(service.db.root)
    assert other.acquire("ft-elsewhere")  # another process trains now
    try:
        with pytest.raises(ApplianceError) as info:
            service.create(base=BASE, data="codes", name="b", options=OPTIONS, actor="t", now=NOW)
        assert info.value.code == "JOB_RUNNING"
        with pytest.raises(ApplianceError) as info:
            _run(service, job["id"], embedder)
        assert info.value.code == "JOB_RUNNING"
    finally:
        other.release()
    assert service.job(job["id"])["state"] == "queued"  # its creating process still lives


def test_a_job_trains_installs_its_adapter_and_the_adapter_is_served(
    tmp_path: Path, tiny_model: TinyModel, embedder: Any
) -> None:
    world, app = _world(tmp_path, tiny_model)
    service = Finetuning(app)
    job = service.create(
        base=BASE, data="codes", name="tiny-codes", options=OPTIONS, actor="admin", now=NOW
    )
    seen: list[Progress] = []
    state, _ = _run(service, job["id"], embedder, clock=Clock(NOW), on_progress=seen.append)
    assert state == "finished"
    done = service.job(job["id"])
    assert (done["state"], done["step"], done["total_steps"]) == ("finished", 16, 16)
    assert [p.step for p in seen] == list(range(1, 17))
    assert [r["step"] for r in app.finetune_db.losses(job["id"])] == list(range(1, 17))
    assert done["checkpoint_step"] == 16 and done["tokens_per_s"] > 0
    # the job's examples and checkpoints are crypto-shredded; the adapter remains
    assert not service.files(job["id"]).key_path.exists()
    assert not service.files(job["id"]).root.exists()
    manifest = app.models.adapters.manifest("tiny-codes")
    assert manifest.base.manifest_sha256 == app.models.manifest(BASE).sha256
    assert manifest.data["sha256"] == app.training_data.get("codes").sha256
    assert manifest.training["rank"] == 4 and manifest.training["steps"] == 16
    actions = _actions(app)
    assert actions[0] == ("finetune.start", "ok", "")
    assert actions.count(("finetune.checkpoint", "ok", "")) == 4
    assert actions[-1] == ("finetune.finish", "ok", "")
    # served as a model of its own, under the base's policy
    assert "tiny-codes" in app.models.installed()
    status = app.models.status("tiny-codes", now=NOW, host=app.secure.host())
    assert (status.unlockable, status.base, status.roles) == (True, BASE, ("staff", "admin"))
    clock = Clock(NOW)
    manager = ModelManager(app.models, app.secure, options=LoadOptions(), clock=clock)
    try:
        assert manager.load("tiny-codes").loaded
        with manager.lease("tiny-codes", user="bob", role="staff") as lease:
            tok = lease.model.tokenizer
            ids = tok("what is the budget code?", return_tensors="pt").input_ids
            out = lease.model.model.generate(ids, max_new_tokens=4, do_sample=False)
            assert out.shape[1] > ids.shape[1]
        with pytest.raises(Forbidden), manager.lease("tiny-codes", user="eve", role="guest"):
            pass
        # the base's policy ends: the adapter is refused with the base's reason
        clock.now = NOW + 86_400 * 31
        with (
            pytest.raises(ModelUnavailable) as info,
            manager.lease("tiny-codes", user="bob", role="staff"),
        ):
            pass
        assert info.value.reason_code == "EXPIRED"
        assert f"base model {BASE}" in info.value.message
    finally:
        manager.close()
    # a base replaced by another package: the adapter was trained on other weights
    _replace_base(world, app, tmp_path)
    status = app.models.status("tiny-codes", now=NOW + 60, host=app.secure.host())
    assert (status.unlockable, status.reason_code) == (False, "TAMPERED")
    with pytest.raises(TamperedError):
        app.models.open_model(
            "tiny-codes", user="bob", role="staff", now=NOW + 60, host=app.secure.host()
        )
    last = app.secure.audit.tail(2)[-1]
    assert (last.action, last.outcome, last.reason) == ("adapter.unlock", "refused", "TAMPERED")


def _replace_base(world: FinetuneWorld, app: Any, tmp_path: Path) -> None:
    """The vendor ships a new package of the base (same name, other weights)."""
    from tests.support.tiny_model import build_tiny_model

    src = tmp_path / "retrained"

    build_tiny_model(src, seed=5)
    package_model(src, tmp_path / "pkg2", name=BASE, issuer=world.issuer.public(), now=NOW)
    app.models.install_package(tmp_path / "pkg2", actor="test", now=NOW + 30)
    world.package = tmp_path / "pkg2"
    world.install_policy(app, world.policy(app, serial=5), now=NOW + 30)


def test_policy_expiry_pauses_wipes_and_resumes_once_renewed(
    tmp_path: Path, tiny_model: TinyModel, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPLIANCE__FINETUNE__POLICY_CHECK_S", "1")
    world, app = _world(tmp_path, tiny_model)
    service = Finetuning(app)
    reference = service.create(
        base=BASE, data="codes", name="ref", options=OPTIONS, actor="t", now=NOW
    )
    assert _run(service, reference["id"], embedder, clock=Clock(NOW))[0] == "finished"
    expected = [r["loss"] for r in app.finetune_db.losses(reference["id"])]

    world.install_policy(app, world.policy(app, serial=2, not_after=NOW + 3600))
    job = service.create(
        base=BASE, data="codes", name="paused", options=OPTIONS, actor="t", now=NOW
    )
    clock = Clock(NOW)
    weights: list[torch.Tensor] = []
    holder: dict[str, JobRunner] = {}

    def progress(p: Progress) -> None:
        runner = holder["runner"]
        if p.step == 6 and not weights:
            weights.append(next(runner._loaded.model.parameters()))  # a base weight, in memory
            clock.now = NOW + 7200  # the policy ends while the job trains

    def sleep(_seconds: float) -> None:
        runner = holder["runner"]
        assert runner._loaded is None and runner._trainer is None  # nothing kept in memory
        assert float(weights[0].abs().sum()) == 0.0  # and what was there is zeroed
        row = service.job(job["id"])
        assert (row["state"], row["reason_code"]) == ("paused", "EXPIRED")
        world.install_policy(
            app, world.policy(app, serial=3, not_after=NOW + 86_400), now=NOW + 7200
        )

    runner = JobRunner(
        service, job["id"], embedder=embedder, clock=clock, sleep=sleep, on_progress=progress
    )
    holder["runner"] = runner
    assert runner.run() == "finished"
    actions = _actions(app)
    assert ("finetune.pause", "refused", "EXPIRED") in actions
    assert ("finetune.resume", "ok", "") in actions
    losses = [r["loss"] for r in app.finetune_db.losses(job["id"])]
    assert len(losses) == len(expected)
    assert max(abs(a - b) for a, b in zip(losses, expected, strict=True)) <= 1e-5


def test_cancel_stops_the_running_job_and_shreds_its_files(
    tmp_path: Path, tiny_model: TinyModel, embedder: Any
) -> None:
    _, app = _world(tmp_path, tiny_model)
    service = Finetuning(app)
    job = service.create(base=BASE, data="codes", name="gone", options=OPTIONS, actor="t", now=NOW)

    def progress(p: Progress) -> None:
        if p.step == 5:
            assert service.cancel(job["id"], actor="admin", now=NOW)["state"] == "running"

    state, _ = _run(service, job["id"], embedder, clock=Clock(NOW), on_progress=progress)
    assert state == "cancelled"
    row = service.job(job["id"])
    assert (row["state"], row["step"]) == ("cancelled", 5)
    assert not service.files(job["id"]).key_path.exists()
    assert "gone" not in app.models.installed()
    assert ("finetune.cancel", "ok", "") in _actions(app)
    with pytest.raises(ApplianceError):
        service.check_resumable(job["id"])


def test_a_revoked_policy_pauses_the_job_and_a_cancel_ends_the_wait(
    tmp_path: Path, tiny_model: TinyModel, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPLIANCE__FINETUNE__POLICY_CHECK_S", "0.001")
    _, app = _world(tmp_path, tiny_model)
    service = Finetuning(app)
    job = service.create(base=BASE, data="codes", name="rv", options=OPTIONS, actor="t", now=NOW)
    waits: list[float] = []

    def progress(p: Progress) -> None:
        if p.step == 3:
            (policy,) = app.models.policies()
            app.models.revoke(policy.policy_id, actor="admin", now=NOW)

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        row = service.job(job["id"])
        assert (row["state"], row["reason_code"]) == ("paused", "REVOKED")
        service.cancel(job["id"], actor="admin", now=NOW)  # from another shell, say

    state, _ = _run(
        service, job["id"], embedder, clock=Clock(NOW), on_progress=progress, sleep=sleep
    )
    assert state == "cancelled" and len(waits) == 1
    assert service.job(job["id"])["step"] in (3, 4)
    assert ("finetune.pause", "refused", "REVOKED") in _actions(app)
    assert not service.files(job["id"]).key_path.exists()


def test_a_detached_job_that_cannot_start_is_reported(
    tmp_path: Path, tiny_model: TinyModel
) -> None:
    from click.testing import CliRunner

    from appliance.cli import cli
    from tests.support.finetune_kit import PASSPHRASE

    world, app = _world(tmp_path, tiny_model)
    service = Finetuning(app)
    job = service.create(base=BASE, data="codes", name="late", options=OPTIONS, actor="t", now=NOW)
    service.db.update_job(job["id"], pid=2**22 + 12345, state="running")  # its process died
    assert service.job(job["id"])["state"] == "interrupted"
    other = JobLock(service.db.root)
    assert other.acquire("ft-elsewhere")
    try:
        result = CliRunner().invoke(
            cli,
            ["--home", str(world.home), "finetune", "resume", job["id"], "--detach"],
            env={"APPLIANCE_PASSPHRASE": PASSPHRASE},
        )
    finally:
        other.release()
    assert result.exit_code == 1
    assert f"Job {job['id']} did not start" in result.output
    log = (service.db.root / f"{job['id']}.log").read_text()
    assert "JOB_RUNNING" in log or "one job at a time" in log
