"""Serving under the policy gate: in-memory loading, answers, expiry, revocation, refusal.

Real parts throughout: a home with real keys, the tiny Qwen2 model packaged and decrypted in
memory, a Milvus Lite file with documents ingested by the real pipeline, the bundled embedder.
Time is injected (a mutable clock), so expiry during serving is exercised without waiting.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from appliance.errors import Forbidden, ModelUnavailable
from tests.ingest.test_embed import bundled_embedder
from tests.support.fixtures import TinyModel, make_tiny_model_fixture
from tests.support.serving import MODEL, NOW, Clock, World, build_world, open_runtime

tiny_model = make_tiny_model_fixture(scope="module")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModel) -> World:
    root = tmp_path_factory.mktemp("serve")
    return build_world(root, model_dir=tiny_model.path, embedder=bundled_embedder())


@pytest.fixture
def runtime(world: World) -> Iterator[object]:
    clock = Clock(NOW + 10)
    rt = open_runtime(world, clock=clock, embedder=bundled_embedder())
    rt.extras["clock"] = clock
    yield rt
    rt.close()


def _user(rt: object, name: str) -> object:
    return rt.app.users.get(name)  # type: ignore[attr-defined]


def test_encrypted_model_generates_token_for_token_like_plaintext(
    runtime: object, tiny_model: TinyModel
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rt = runtime
    assert rt.models.loaded() == [MODEL]  # type: ignore[attr-defined]
    plain = AutoModelForCausalLM.from_pretrained(tiny_model.path).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    prompts = ["the appliance answers questions", "合同 预算 报告", "quarterly revenue rose"]
    with rt.models.lease(MODEL, user="bob", role="staff") as lease:  # type: ignore[attr-defined]
        for prompt in prompts:
            ids = tok(prompt, return_tensors="pt").input_ids
            enc_ids = lease.model.tokenizer(prompt, return_tensors="pt").input_ids
            assert torch.equal(ids, enc_ids)
            want = plain.generate(ids, max_new_tokens=24, do_sample=False)
            got = lease.model.model.generate(enc_ids, max_new_tokens=24, do_sample=False)
            assert torch.equal(want, got)


def test_streamed_generation_matches_plain_generate(runtime: object) -> None:
    from appliance.serve.generate import GenerationRequest, GenerationStats, stream_generate

    rt = runtime
    with rt.models.lease(None, user="bob", role="staff") as lease:  # type: ignore[attr-defined]
        prompt = "staff drop files into a folder"
        stats = GenerationStats()
        pieces = list(stream_generate(lease.model, GenerationRequest(prompt, 16), stats))
        tok = lease.model.tokenizer
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        full = lease.model.model.generate(ids, max_new_tokens=16, do_sample=False)
        want = tok.decode(full[0, ids.shape[1] :], skip_special_tokens=True)
    assert "".join(pieces) == want
    assert 0 < stats.tokens <= 16 and stats.first_token_s is not None


def test_generative_answer_uses_only_the_users_groups(runtime: object) -> None:
    rt = runtime
    answer = rt.engine.answer("What is the travel budget?", user=_user(rt, "bob"))  # type: ignore[attr-defined]
    assert answer.mode == "generative" and answer.model == MODEL
    assert answer.sources and {s.group for s in answer.sources} <= {"finance", "public"}
    assert any("48,000" in s.text for s in answer.sources)
    assert set(answer.cited) <= {s.n for s in answer.sources}
    last = [e for e in rt.app.secure.audit.tail(10) if e.action == "question.answer"][-1]  # type: ignore[attr-defined]
    assert last.object == answer.question_id and last.details["result"] == "answered"
    assert str(last.details["question"]).startswith("hmac:")  # no question text in the log
    other = rt.engine.answer("What is the travel budget?", user=_user(rt, "carol"))  # type: ignore[attr-defined]
    assert all(s.group in ("hr", "public") for s in other.sources)
    assert not any("48,000" in s.text for s in other.sources)


def test_the_server_answers_from_its_in_memory_dense_index_once_loaded(runtime: object) -> None:
    rt = runtime
    memory = rt.knowledge.dense_memory  # type: ignore[attr-defined]
    assert memory is not None and memory.wait_ready(), memory.status()  # serve started it
    before = memory.status()["searches"]
    answer = rt.engine.answer("What is the travel budget?", user=_user(rt, "bob"))  # type: ignore[attr-defined]
    assert any("48,000" in s.text for s in answer.sources)
    assert all(s.group in ("finance", "public") for s in answer.sources)
    assert memory.status()["searches"] == before + 1
    # serve built the checked trace of the query encoder at start and publishes it
    from appliance.ops.status import server_info

    assert rt.knowledge.embedder.query_path == "traced"  # type: ignore[attr-defined]
    assert server_info(rt)["query_path"] == "traced"


def test_an_answer_no_source_supports_is_flagged_as_not_found(world: World) -> None:
    """The tiny model's random text cites nothing and no source holds it: with
    ``answer.unsupported = "flag"`` the stream ends with the note and the outcome (returned and
    audited) is not found; ``keep`` returns the same text as an ordinary answer."""
    from appliance.rag.prompt import UNSUPPORTED_NOTE

    outcomes = {}
    for rule in ("flag", "keep"):
        rt = open_runtime(world, clock=Clock(NOW + 10), answer={"unsupported": rule})
        try:
            events = list(rt.engine.stream("What is the travel budget?", user=_user(rt, "bob")))
            audit = [e for e in rt.app.secure.audit.tail(10) if e.action == "question.answer"]
        finally:
            rt.close()
        answer = next(e.answer for e in events if e.kind == "done")
        streamed = "".join(e.text for e in events if e.kind == "delta")
        assert answer.mode == "generative" and not answer.cited and streamed == answer.text
        outcomes[rule] = (answer, audit[-1].details["result"])
    flagged, result = outcomes["flag"]
    assert flagged.not_found and result == "not_found"
    assert flagged.text.endswith("\n\n" + UNSUPPORTED_NOTE["en"])
    kept, result = outcomes["keep"]
    assert not kept.not_found and result == "answered"
    assert flagged.text == kept.text + "\n\n" + UNSUPPORTED_NOTE["en"]  # the same generation


def test_streaming_events_order(runtime: object) -> None:
    rt = runtime
    events = list(rt.engine.stream("How many days of annual leave?", user=_user(rt, "carol")))  # type: ignore[attr-defined]
    kinds = [e.kind for e in events]
    assert kinds[0] == "sources" and kinds[-1] == "done" and set(kinds[1:-1]) <= {"delta"}
    answer = events[-1].answer
    assert answer is not None
    assert "".join(e.text for e in events if e.kind == "delta").strip() == answer.text


def test_role_not_in_the_policy_is_refused_the_model_and_answered_extractively(
    runtime: object,
) -> None:
    rt = runtime
    admin = _user(rt, "admin")  # the test policy grants role staff only
    with pytest.raises(Forbidden) as info:
        rt.engine.answer("canteen", user=admin, require_model=True)  # type: ignore[attr-defined]
    assert info.value.code == "ROLE_DENIED"
    answer = rt.engine.answer("When does the canteen open?", user=admin)  # type: ignore[attr-defined]
    assert answer.mode == "extractive" and "role" in answer.fallback_reason
    assert "11:30" in answer.text and answer.cited


def test_policy_expiry_while_serving_unloads_zeroes_and_falls_back(
    runtime: object, world: World
) -> None:
    rt = runtime
    with rt.models.lease(MODEL, user="bob", role="staff") as lease:  # type: ignore[attr-defined]
        weight = next(lease.model.model.parameters())
        assert weight.abs().sum() > 0
    rt.extras["clock"].now = NOW + 3600 + 3600  # type: ignore[attr-defined]
    bob = _user(rt, "bob")
    with pytest.raises(ModelUnavailable) as info:
        rt.engine.answer("travel budget", user=bob, model=MODEL, require_model=True)  # type: ignore[attr-defined]
    assert info.value.reason_code == "EXPIRED"
    assert weight.abs().sum() == 0  # tensors zeroed on unload
    assert rt.models.loaded() == []  # type: ignore[attr-defined]
    state = {s.name: s for s in rt.models.states()}[MODEL]  # type: ignore[attr-defined]
    assert not state.loaded and state.reason_code == "EXPIRED"
    answer = rt.engine.answer("What is the travel budget?", user=bob)  # type: ignore[attr-defined]
    assert answer.mode == "extractive" and "expired" in answer.fallback_reason.lower()
    unloads = [e for e in rt.app.secure.audit.tail(50) if e.action == "model.unload"]  # type: ignore[attr-defined]
    assert unloads and unloads[-1].reason == "EXPIRED" and unloads[-1].object == MODEL


def test_an_unknown_model_name_is_quoted_bounded(runtime: object) -> None:
    """A client's model name goes into the error bounded (a 100,000-character name was
    echoed in full; outside-style review)."""
    error = runtime.models.why_unavailable("x" * 100_000)  # type: ignore[attr-defined]
    assert error.reason_code == "UNKNOWN_MODEL" and len(error.message) < 200
    assert runtime.models.why_unavailable("nope").message == "Model 'nope' is not installed."  # type: ignore[attr-defined]


def test_watchdog_unloads_on_expiry_without_requests(world: World, tmp_path: Path) -> None:
    clock = Clock(NOW + 10)
    rt = open_runtime(world, clock=clock, embedder=bundled_embedder(), watchdog=False)
    try:
        assert rt.models.loaded() == [MODEL]
        clock.now = NOW + 10_000
        rt.models.recheck()
        assert rt.models.loaded() == []
    finally:
        rt.close()


def test_revocation_from_another_process_is_seen(runtime: object, world: World) -> None:
    rt = runtime
    policy_id = {s.name: s for s in rt.models.states()}[MODEL].policy_id  # type: ignore[attr-defined]
    other = world.appliance(now=NOW + 20)  # the admin CLI in another process
    other.models.revoke(policy_id, actor="cli:admin", now=NOW + 20)
    with pytest.raises(ModelUnavailable) as info:
        rt.engine.answer("travel", user=_user(rt, "bob"), require_model=True)  # type: ignore[attr-defined]
    assert info.value.reason_code == "REVOKED"
