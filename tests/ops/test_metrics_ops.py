"""Metrics: values checked through prometheus_client's own parser; nothing identifying leaks."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from appliance.ops.metrics import Metrics, reason_code
from appliance.users import User

from .conftest import make_answer

USER = User("wang.fang", "staff", ("finance", "hr"), False, 0, 0, 0, 0)


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = m.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
    }


def test_question_path_counters_and_histograms() -> None:
    m = Metrics()
    m.observe_answer(make_answer(tokens=40), USER, "api", "answered")
    m.observe_answer(make_answer(tokens=60, generation_ms=3000.0), USER, "web", "answered")
    extractive = make_answer(
        mode="extractive",
        model=None,
        tokens=0,
        generation_ms=0.0,
        first_token_ms=None,
        fallback_reason="POLICY_EXPIRED: ended",
    )
    m.observe_answer(extractive, USER, "api", "not_found")
    m.observe_answer(None, USER, "api", "refused")
    s = _samples(m)
    q = "appliance_questions_total"
    assert s[(q, (("channel", "api"), ("mode", "generative"), ("outcome", "answered")))] == 1
    assert s[(q, (("channel", "web"), ("mode", "generative"), ("outcome", "answered")))] == 1
    assert s[(q, (("channel", "api"), ("mode", "extractive"), ("outcome", "not_found")))] == 1
    assert s[(q, (("channel", "api"), ("mode", "none"), ("outcome", "refused")))] == 1
    assert s[("appliance_generated_tokens_total", (("model", "new-model"),))] == 100
    assert s[("appliance_retrieval_seconds_count", ())] == 3
    assert abs(s[("appliance_retrieval_seconds_sum", ())] - 0.045) < 1e-9
    assert s[("appliance_retrieval_seconds_bucket", (("le", "0.025"),))] == 3
    assert s[("appliance_generation_seconds_count", ())] == 2
    assert s[("appliance_generation_seconds_sum", ())] == 5.0
    assert s[("appliance_first_token_seconds_count", ())] == 2
    assert s[("appliance_extractive_fallbacks_total", (("reason", "POLICY_EXPIRED"),))] == 1
    assert s[("appliance_refusals_total", (("reason", "none"),))] == 1


def test_refusals_unlocks_ingestion_and_models() -> None:
    m = Metrics()
    m.refusal("ROLE_NOT_ALLOWED")
    m.refusal("ROLE_NOT_ALLOWED: staff may not use qwen")
    m.unlock("qwen-ft", "refused", "EXPIRED")
    m.unlock("qwen-ft", "ok")
    m.ingest_file("indexed", 2.5, 12)
    m.ingest_file("failed", 0.2, 0)
    now = 1_800_000_000

    class State:
        def __init__(self, name: str, loaded: bool, until: int) -> None:
            self.name, self.loaded, self.valid_until = name, loaded, until

    m.set_models([State("qwen-ft", True, now + 86_400), State("old", False, now - 1)], now=now)
    s = _samples(m)
    assert s[("appliance_refusals_total", (("reason", "ROLE_NOT_ALLOWED"),))] == 2
    unlock = "appliance_model_unlocks_total"
    assert s[(unlock, (("model", "qwen-ft"), ("outcome", "refused"), ("reason", "EXPIRED")))] == 1
    assert s[(unlock, (("model", "qwen-ft"), ("outcome", "ok"), ("reason", "none")))] == 1
    assert s[("appliance_ingest_files_total", (("outcome", "indexed"),))] == 1
    assert s[("appliance_ingest_files_total", (("outcome", "failed"),))] == 1
    assert s[("appliance_ingest_chunks_total", ())] == 12
    assert s[("appliance_ingest_file_seconds_count", ())] == 2
    assert s[("appliance_models_loaded", ())] == 1
    assert s[("appliance_model_loaded", (("model", "old"),))] == 0
    assert s[("appliance_model_policy_seconds_left", (("model", "qwen-ft"),))] == 86_400


def test_no_question_text_user_or_document_name_in_metrics() -> None:
    m = Metrics()
    answer = make_answer()
    m.observe_answer(answer, USER, "api", "answered")
    body = m.render()[0].decode()
    for secret in ("salary", "wang.fang", "finance", "hr"):
        assert secret not in body
    label_names = {
        label for f in text_string_to_metric_families(body) for s in f.samples for label in s.labels
    }
    assert label_names <= {"mode", "outcome", "channel", "model", "reason", "le", "version"}


def test_reason_codes_are_bounded() -> None:
    assert reason_code("POLICY_EXPIRED: Policy p1 expired") == "POLICY_EXPIRED"
    assert reason_code("") == "none"
    assert reason_code("  !!! free text") == "other"
    assert len(reason_code("A" * 500)) == 48
    # prose fallback reasons are not codes (`/metrics` showed reason="No" for "No model …")
    assert reason_code("No model is unlocked for your role.") == "other"
    assert reason_code("no model installed") == "other"
    assert reason_code("Model m is locked [POLICY_EXPIRED]: ended") == "POLICY_EXPIRED"


def test_observing_costs_microseconds() -> None:
    """The full benchmark (bench/bench_metrics.py) compares with a measured retrieval; this
    guards against a regression by orders of magnitude (e.g. I/O on the question path)."""
    m = Metrics()
    answer = make_answer()
    start = time.perf_counter()
    for _ in range(2000):
        m.observe_answer(answer, USER, "api", "answered")
    per_call_ms = (time.perf_counter() - start) / 2000 * 1000
    assert per_call_ms < 0.2  # 1 % of a 20 ms retrieval
