"""An installed adapter through every channel of a real server: `/v1/models`, chat completions
and the web UI's model choice, under its base model's policy (real uvicorn, real Gradio queue)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from appliance.knowledge import Knowledge
from appliance.llm.adapter import adapter_files
from appliance.serve.runtime import Runtime
from appliance.serve.server import build_app
from secure.adapter import BaseRef
from tests.support.finetune_kit import BASE, NOW, PASSWORD, build_finetune_world
from tests.support.fixtures import TinyModel, make_tiny_model_fixture
from tests.support.server import running_server
from tests.support.serving import Clock, ingest_docs
from tests.support.webui import Page, browser, login

tiny_model = make_tiny_model_fixture(scope="module")
ADAPTER = "tiny-ft"


def _install_adapter(app: Any) -> None:
    """A LoRA adapter on two layers of the tiny model (as a training job would install it)."""
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        weight = dict(app_model_shapes())[layer]
        tensors[f"{layer}.lora_A.weight"] = torch.randn(4, weight[1], generator=gen)
        tensors[f"{layer}.lora_B.weight"] = torch.randn(weight[0], 4, generator=gen)
    manifest = app.models.manifest(BASE)
    app.models.adapters.install(
        ADAPTER,
        adapter_files(tensors, rank=4, alpha=8),
        base=BaseRef(BASE, manifest.package_id, manifest.sha256),
        data={"dataset": "codes", "sha256": "0" * 64},
        training={"rank": 4},
        actor="test",
        now=NOW,
    )


def app_model_shapes() -> dict[str, tuple[int, int]]:
    return {"model.layers.0.self_attn.q_proj": (64, 64), "model.layers.1.mlp.down_proj": (64, 128)}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModel) -> Iterator[Any]:
    from ingest.embed import Embedder

    root = tmp_path_factory.mktemp("ft-serve")
    world = build_finetune_world(root, tiny_model.path)
    app = world.appliance()
    _install_adapter(app)
    embedder = Embedder.load("bundled", threads=1)
    ingest_docs(app, {"public/codes.md": "# Codes\n\nThe budget code is 512.\n"}, embedder=embedder)
    clock = Clock(NOW + 10)
    app = world.appliance()
    kb = Knowledge(app.settings, app.secure)
    kb.__dict__["embedder"] = embedder
    runtime = Runtime.build(app, clock=clock, watchdog=False, knowledge=kb)
    token = app.users.issue_token("bob", now=NOW)
    try:
        with running_server(build_app(runtime, ui=True)) as url:
            yield {"url": url, "runtime": runtime, "token": token, "clock": clock}
    finally:
        runtime.close()


def test_the_adapter_is_a_model_id_of_the_api(served: Any) -> None:
    headers = {"Authorization": f"Bearer {served['token']}"}
    models = httpx.get(served["url"] + "/v1/models", headers=headers).json()["data"]
    row = next(m for m in models if m["id"] == ADAPTER)
    assert (row["status"], row["your_role_allowed"]) == ("loaded", True)
    body = {"model": ADAPTER, "messages": [{"role": "user", "content": "What is the budget code?"}]}
    reply = httpx.post(
        served["url"] + "/v1/chat/completions", headers=headers, json=body, timeout=120
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == ADAPTER


def test_the_web_ui_offers_the_adapter_and_answers_with_it(served: Any) -> None:
    client = browser(served["url"])
    assert login(client, "bob", PASSWORD).status_code == 303
    page = Page(client)
    loaded = [page.call(fn, []) for fn in page.load_fns()]
    assert any(f"{ADAPTER} (fine-tuned from {BASE})" in out.raw for out in loaded)
    assert page.call(page.fn("model-choice", "input"), [ADAPTER]).ok
    answer = page.call(page.fn("ask"), ["What is the budget code?", [], None])
    assert answer.ok, answer.raw[-2000:]
    assert f"Model {ADAPTER}" in answer.raw or f"model {ADAPTER}" in answer.raw
    conversations = served["runtime"].app.conversations
    user = served["runtime"].app.users.get("bob")
    summary = conversations.history(user.id)[0]
    turn = conversations.read(user.id, summary.id).turns[-1]
    assert turn.model == ADAPTER


def test_a_choice_the_page_was_not_offered_means_automatic(served: Any) -> None:
    from ui.pages.chat import _CHOSEN, AUTO

    client = browser(served["url"])
    assert login(client, "bob", PASSWORD).status_code == 303
    page = Page(client)
    for fn in page.load_fns():
        page.call(fn, [])
    page.call(page.fn("model-choice", "input"), ["someone-elses-model"])
    assert _CHOSEN.get(page.session_hash, AUTO) == AUTO


def test_the_adapter_follows_its_base_policy(served: Any, tmp_path: Path) -> None:
    runtime, clock = served["runtime"], served["clock"]
    headers = {"Authorization": f"Bearer {served['token']}"}
    clock.now = NOW + 86_400 * 31  # the base's policy has ended
    body = {"model": ADAPTER, "messages": [{"role": "user", "content": "budget code?"}]}
    reply = httpx.post(served["url"] + "/v1/chat/completions", headers=headers, json=body)
    assert reply.status_code == 503
    assert "EXPIRED" in reply.text and f"base model {BASE}" in reply.text
    assert ADAPTER not in runtime.models.loaded() and BASE not in runtime.models.loaded()


def test_the_admin_fine_tuning_page_shows_jobs_and_the_loss_curve(served: Any) -> None:
    app = served["runtime"].app
    app.finetune_db.add_job(
        {
            "id": "ft-00000000aaaa",
            "name": "faq",
            "base": BASE,
            "base_package": "pkg",
            "base_manifest_sha256": "0" * 64,
            "dataset_id": "ds-1",
            "dataset": "codes",
            "data_sha256": "1" * 64,
            "settings": {},
            "state": "interrupted",
            "step": 3,
            "total_steps": 10,
            "loss": 1.25,
            "created_by": "admin",
            "created_at": NOW,
            "updated_at": NOW,
        }
    )
    for step, loss in ((1, 2.5), (2, 1.75), (3, 1.25)):
        app.finetune_db.record_loss("ft-00000000aaaa", step, loss, 100, NOW + step)
    client = browser(served["url"])
    assert login(client, "admin", PASSWORD).status_code == 303
    page = Page(client)
    for fn in page.load_fns():
        page.call(fn, [])
    shown = page.call(page.fn("ft-refresh"), [""])
    assert shown.ok, shown.raw[-1500:]
    assert "ft-00000000aaaa" in shown.raw and "3/10 (30.0%)" in shown.raw
    plot = shown.output[1]  # type: ignore[index]
    assert [row[1] for row in plot["data"]] == [2.5, 1.75, 1.25]
    cancelled = page.call(page.fn("ft-cancel"), ["ft-00000000aaaa"])
    assert "cancel requested" in cancelled.raw
    assert app.finetune_db.job("ft-00000000aaaa")["state"] == "cancelled"  # type: ignore[index]
    # a staff login gets nothing from the page's handlers
    staff = browser(served["url"])
    assert login(staff, "bob", PASSWORD).status_code == 303
    staff_page = Page(staff)
    for fn in staff_page.load_fns():
        staff_page.call(fn, [])
    refused = staff_page.call(staff_page.fn("ft-refresh"), [""])
    assert "ft-00000000aaaa" not in refused.raw
