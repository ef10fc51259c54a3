"""The retry schedule (`ingest.retry`) with an injected clock, and how `ingest.milvus_conn`
names failures and builds connection options (real pymilvus and gRPC error objects)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from pymilvus import MilvusException

from ingest.errors import IngestError, StoreUnavailable
from ingest.milvus_conn import ConnectOptions, store_error
from ingest.retry import Retrier, RetryPolicy


class FakeClock:
    """Time that moves only when the retrier sleeps (the schedule without the wait)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def down() -> StoreUnavailable:
    return StoreUnavailable("Milvus is unavailable: connection refused", hint="Start it.")


def test_pauses_double_up_to_the_cap() -> None:
    policy = RetryPolicy(for_s=60, initial_s=0.5, max_s=4)
    assert [policy.pause(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    with pytest.raises(ValueError):
        RetryPolicy(initial_s=0)
    with pytest.raises(ValueError):
        RetryPolicy(initial_s=2, max_s=1)


def test_an_outage_is_ridden_out_and_counted() -> None:
    clock = FakeClock()
    retrier = Retrier(RetryPolicy(60, 0.5, 4), sleep=clock.sleep, clock=clock)
    outcomes: list[object] = [down(), down(), down(), "written"]

    def write() -> object:
        result = outcomes.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    assert retrier.call(write, what="writing doc-1") == "written"
    assert clock.sleeps == [0.5, 1.0, 2.0]
    assert (retrier.retries, retrier.waited_s) == (3, 3.5)


def test_the_retry_runs_the_clean_up_step_and_other_errors_are_not_retried() -> None:
    clock = FakeClock()
    retrier = Retrier(RetryPolicy(60, 1, 1), sleep=clock.sleep, clock=clock)
    calls: list[str] = []

    def first() -> str:
        calls.append("insert")
        raise down()

    def again() -> str:
        calls.append("delete partial + insert")
        return "ok"

    assert retrier.call(first, what="x", again=again) == "ok"
    assert calls == ["insert", "delete partial + insert"]

    def refused() -> None:
        raise IngestError("bad filter", code="milvus-error")

    with pytest.raises(IngestError, match="bad filter"):
        retrier.call(refused, what="x")
    assert clock.sleeps == [1]


def test_past_the_limit_the_error_says_nothing_was_quarantined() -> None:
    clock = FakeClock()
    retrier = Retrier(RetryPolicy(10, 1, 4), sleep=clock.sleep, clock=clock)

    def always() -> None:
        raise down()

    with pytest.raises(StoreUnavailable) as info:
        retrier.call(always, what="writing doc-9")
    assert sum(clock.sleeps) <= 10 and clock.sleeps == [1, 2, 4]
    assert "Gave up writing doc-9 after 4 attempts over 7 s" in info.value.message
    assert "Nothing was quarantined" in info.value.hint and "Start it." in info.value.hint
    no_retry = Retrier(RetryPolicy(0, 1, 1), sleep=clock.sleep, clock=clock)
    with pytest.raises(StoreUnavailable):
        no_retry.call(always, what="x")


class RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_failures_are_named_by_what_the_operator_must_do() -> None:
    refused = store_error(
        MilvusException(code=2, message="Fail connecting to server on 10.0.0.5:19530"), timeout=10
    )
    assert isinstance(refused, StoreUnavailable) and not refused.timed_out
    assert "10.0.0.5:19530" in refused.message and "milvus.uri" in refused.hint
    slow = store_error(RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), timeout=3)
    assert isinstance(slow, StoreUnavailable) and slow.timed_out
    assert "did not answer within 3 s" in slow.message and "milvus.timeout_s" in slow.hint
    gone = store_error(RpcError(grpc.StatusCode.UNAVAILABLE, "connection reset"), timeout=3)
    assert isinstance(gone, StoreUnavailable) and "connection reset" in gone.message
    retried = store_error(
        MilvusException(code=grpc.StatusCode.UNAVAILABLE, message="[query] Retry timeout: 10s"),
        timeout=10,
    )
    assert isinstance(retried, StoreUnavailable)
    bad = store_error(MilvusException(code=1100, message="invalid expression"), timeout=10)
    assert not isinstance(bad, StoreUnavailable) and bad.code == "milvus-error"
    denied = store_error(RpcError(grpc.StatusCode.PERMISSION_DENIED, "denied"), timeout=10)
    assert not isinstance(denied, StoreUnavailable)


def test_each_store_gets_its_own_channel_with_a_short_reconnect_backoff() -> None:
    kwargs = ConnectOptions(reconnect_max_s=1.5).client_kwargs("http://milvus:19530")
    assert kwargs["dedicated"] is True
    options = kwargs["grpc_options"]
    assert options["grpc.use_local_subchannel_pool"] == 1
    assert options["grpc.max_reconnect_backoff_ms"] == 1500
    assert "secure" not in kwargs


def test_tls_options(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "client.pem", "client.key"))
    for path in (ca, cert, key):
        path.write_text("PEM")
    one_way = ConnectOptions(tls_ca=ca, tls_server_name="milvus.internal").client_kwargs(
        "https://10.0.0.5:19530"
    )
    assert one_way["secure"] is True and one_way["server_pem_path"] == str(ca)
    assert one_way["server_name"] == "milvus.internal"
    mutual = ConnectOptions(tls_ca=ca, tls_cert=cert, tls_key=key).client_kwargs("https://m:1")
    assert (mutual["ca_pem_path"], mutual["client_pem_path"], mutual["client_key_path"]) == (
        str(ca),
        str(cert),
        str(key),
    )
    assert "server_pem_path" not in mutual
    for options, uri, text in [
        (ConnectOptions(tls_ca=ca), "http://m:1", "https://"),
        (ConnectOptions(tls_ca=tmp_path / "nope.pem"), "https://m:1", "does not exist"),
        (ConnectOptions(tls_ca=ca, tls_cert=cert), "https://m:1", "both"),
        (ConnectOptions(tls_cert=cert, tls_key=key), "https://m:1", "tls_ca"),
    ]:
        with pytest.raises(IngestError, match=text) as info:
            options.client_kwargs(uri)
        assert info.value.code == "milvus-config"
