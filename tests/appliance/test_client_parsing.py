"""The client's pure parts: error mapping, the answer stream, nodes (no server needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from llama_index.core.llms import ChatMessage
from llama_index.core.schema import MetadataMode

from appliance.client import (
    ApplianceClientError,
    AuthenticationFailed,
    InvalidRequest,
    ModelUnavailable,
    PermissionDenied,
    ProtocolError,
    RateLimited,
    RequestCancelled,
    ServerError,
)
from appliance.client.errors import error_from_body
from appliance.client.events import ChatResult, chat_events, sse_data
from appliance.client.http import _events, normalise_base_url
from appliance.client.llamaindex import passage_node, source_nodes
from appliance.client.llamaindex.llm import wire_messages
from appliance.errors import ApplianceError


def body(code: str, type_: str, message: str = "m", **extra: Any) -> bytes:
    error = {"message": message, "type": type_, "code": code, "param": None, **extra}
    return json.dumps({"error": error}).encode()


@pytest.mark.parametrize(
    ("status", "type_", "cls"),
    [
        (400, "invalid_request_error", InvalidRequest),
        (401, "authentication_error", AuthenticationFailed),
        (403, "permission_error", PermissionDenied),
        (408, "timeout_error", RequestCancelled),
        (413, "invalid_request_error", InvalidRequest),
        (503, "model_unavailable", ModelUnavailable),
        (500, "server_error", ServerError),
        (502, "whatever", ServerError),
    ],
)
def test_statuses_map_to_typed_errors_keeping_the_servers_words(
    status: int, type_: str, cls: type[ApplianceClientError]
) -> None:
    err = error_from_body(status, body("SOME_CODE", type_, "What went wrong.", hint="Do this."))
    assert type(err) is cls and isinstance(err, ApplianceError)
    assert (err.status, err.code, err.message, err.hint) == (
        status,
        "SOME_CODE",
        "What went wrong.",
        "Do this.",
    )


def test_reason_param_and_retry_after_are_kept() -> None:
    err = error_from_body(503, body("MODEL_UNAVAILABLE", "model_unavailable", reason="REVOKED"))
    assert err.reason == "REVOKED" and "extractive" in err.hint  # the client's default hint
    bad = error_from_body(400, body("MESSAGE_TOO_LONG", "invalid_request_error", param="m[3]"))
    assert bad.param == "m[3]"
    busy = error_from_body(429, body("OVERLOADED", "rate_limit_error"), retry_after="5")
    assert isinstance(busy, RateLimited) and busy.retry_after == 5.0


def test_an_error_in_the_middle_of_a_stream_is_typed_by_its_type() -> None:
    chunk = json.loads(body("ROLE_DENIED", "permission_error"))
    with pytest.raises(PermissionDenied) as info:
        chat_events(chunk)
    assert info.value.status is None and info.value.code == "ROLE_DENIED"


@pytest.mark.parametrize("raw", [b"<html>502 Bad Gateway</html>", b"[]", b'{"error": "x"}'])
def test_a_body_that_is_not_an_appliance_error_is_a_protocol_error(raw: bytes) -> None:
    err = error_from_body(502, raw)
    assert isinstance(err, ProtocolError) and "502" in err.message


def test_sse_lines() -> None:
    assert sse_data(": keep-alive") is None and sse_data("") is None
    assert sse_data("data: [DONE]") is None
    assert sse_data('data: {"a": 1}') == {"a": 1}
    with pytest.raises(ProtocolError):
        sse_data("data: {not json")
    with pytest.raises(ProtocolError):
        sse_data("data: [1, 2]")


@given(st.text())
def test_any_line_parses_or_is_a_protocol_error(line: str) -> None:
    try:
        out = sse_data(line)
    except ProtocolError:
        return
    assert out is None or isinstance(out, dict)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
KEYS = st.sampled_from(["choices", "sources", "mode", "delta", "content", "error", "x"])


@given(st.dictionaries(KEYS, JSON, max_size=4))
def test_any_chunk_gives_events_or_a_typed_error(chunk: dict[str, Any]) -> None:
    try:
        events = chat_events(chunk)
    except ApplianceClientError:
        return
    result = ChatResult()
    for event in events:
        result.add(event)


SOURCE = {
    "n": 1,
    "chunk_id": "c1",
    "doc_id": "d1",
    "document": "finance/budget.md",
    "group": "finance",
    "title": "Budget 2027",
    "section": ["Budget 2027", "Travel"],
    "page_start": 3,
    "page_end": 5,
    "score": 0.5,
}


def stream_lines(*, done: bool = True) -> list[str]:
    first = {"choices": [{"delta": {"role": "assistant"}}], "sources": [{**SOURCE, "text": "T"}]}
    last = {
        "model": "m",
        "choices": [{"delta": {}, "finish_reason": "stop"}],
        "mode": "generative",
        "label": "",
        "fallback_reason": "",
        "not_found": False,
        "cited": [1],
        "question_id": "q",
        "sources": [{**SOURCE, "snippet": "T"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
    deltas = [{"choices": [{"delta": {"content": t}}]} for t in ("The ", "answer [1]")]
    chunks = [first, *deltas, *([last] if done else [])]
    return [f"data: {json.dumps(c)}" for c in chunks] + ["data: [DONE]"]


def test_a_stream_gathers_into_one_result() -> None:
    result = ChatResult()
    kinds = []
    for event in _events(iter(stream_lines())):
        kinds.append(event.kind)
        result.add(event)
    assert kinds == ["sources", "delta", "delta", "done"]
    assert result.text == "The answer [1]" and result.cited == [1] and result.done
    assert result.sources == [{**SOURCE, "text": "T", "snippet": "T"}]
    assert result.extras()["completion_tokens"] == 2 and result.extras()["mode"] == "generative"


def test_a_stream_cut_before_its_end_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="ended before"):
        list(_events(iter(stream_lines(done=False))))


def test_a_passage_becomes_a_node_with_flat_metadata() -> None:
    node = passage_node({**SOURCE, "text": "The travel budget is 48,000 euros."})
    assert node.score == 0.5 and node.node.node_id == "c1"
    meta = node.node.metadata
    assert meta["section"] == "Budget 2027 > Travel" and meta["pages"] == "3-5"
    assert "text" not in meta and "score" not in meta and "text_is_snippet" not in meta
    shown = node.node.get_content(metadata_mode=MetadataMode.LLM)
    assert "finance/budget.md" in shown and "d1" not in shown and "c1" not in shown


def test_a_source_with_only_a_snippet_says_so_and_cited_ones_are_marked() -> None:
    second = {**SOURCE, "n": 2, "chunk_id": "c2", "page_end": 3, "snippet": "short…"}
    nodes = source_nodes([{**SOURCE, "text": "T"}, second], cited=[2])
    assert [n.node.metadata["cited"] for n in nodes] == [False, True]
    assert nodes[1].node.metadata["text_is_snippet"] is True
    assert nodes[1].node.get_content() == "short…" and nodes[1].node.metadata["pages"] == "3"


def test_a_passage_without_an_id_or_with_a_bad_score_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="chunk_id"):
        passage_node({"text": "x", "score": 1.0})
    with pytest.raises(ProtocolError, match="score"):
        passage_node({"chunk_id": "c", "text": "x", "score": "high"})


def test_llamaindex_roles_become_api_roles() -> None:
    messages = [
        ChatMessage(role="system", content="s"),
        ChatMessage(role="chatbot", content="a"),
        ChatMessage(role="function", content="f"),
        ChatMessage(role="user", content="q"),
    ]
    assert [m["role"] for m in wire_messages(messages)] == ["system", "assistant", "tool", "user"]


@pytest.mark.parametrize(
    "url", ["http://h:8080", "http://h:8080/", "http://h:8080/v1", " http://h:8080/v1/ "]
)
def test_base_urls(url: str) -> None:
    assert normalise_base_url(url) == "http://h:8080"


def test_a_base_url_without_a_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        normalise_base_url("h:8080")


def test_the_http_client_imports_no_server_part_and_no_llama_index() -> None:
    """A customer's process importing `appliance.client` loads httpx and the error classes only."""
    code = (
        "import sys, appliance.client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'llama_index', 'fastapi', 'torch', 'pydantic', 'secure', 'ingest'} "
        "or m in {'appliance.config', 'appliance.api', 'appliance.wiring'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
