"""The in-memory login throttles on their own: what counts as one client, the sliding window,
the global rate, bounded memory, rate-limited audit of refusals."""

from __future__ import annotations

import pytest

from appliance.login_guard import LoginLimits, LoginThrottle, client_key, device_token

NOW = 1_900_000_000


@pytest.mark.parametrize(
    ("client", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # an IPv4 client on a dual-stack socket
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::99", "2001:db8:1:2::/64"),
        ("testclient", "testclient"),
        ("x" * 200, "x" * 64),
    ],
)
def test_one_client_is_one_address_or_one_ipv6_64(client: str, key: str) -> None:
    assert client_key(client) == key


def test_failures_slide_out_of_the_window() -> None:
    throttle = LoginThrottle(LoginLimits(client_failures=2, client_window_s=100))
    for t in (NOW, NOW + 10):
        throttle.failed("192.0.2.1", now=t)
    assert throttle.check("192.0.2.1", now=NOW + 10) is not None
    assert throttle.check("192.0.2.1", now=NOW + 11) is None  # waited the 1 s
    assert throttle.check("192.0.2.2", now=NOW + 10) is None  # another address
    throttle.failed("192.0.2.1", now=NOW + 11)
    assert throttle.wait_s("192.0.2.1", now=NOW + 11) == 2
    assert throttle.wait_s("192.0.2.1", now=NOW + 111) == 0  # NOW and NOW + 10 slid out


def test_global_rate_and_audit_once_a_minute() -> None:
    throttle = LoginThrottle(LoginLimits(global_per_minute=3))
    for i in range(3):
        throttle.failed(f"192.0.2.{i}", now=NOW)
    refusals = [throttle.check("198.51.100.1", now=NOW + s) for s in (0, 1, 2, 59)]
    assert {r.reason for r in refusals if r} == {"GLOBAL_THROTTLED"}
    assert [r.audit for r in refusals if r] == [True, False, False, False]
    assert throttle.check("198.51.100.1", now=NOW + 60) is None  # the minute passed
    for i in range(3):
        throttle.failed(f"192.0.2.{i}", now=NOW + 61)
    again = throttle.check("198.51.100.1", now=NOW + 61)
    assert again is not None and again.audit and again.refused == 4  # 3 unaudited + this one


def test_memory_is_bounded() -> None:
    throttle = LoginThrottle(
        LoginLimits(client_failures=1, max_clients=50, global_per_minute=10**6)
    )
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}", now=NOW)
    assert len(throttle._clients) == 50
    assert throttle.check("10.0.3.231", now=NOW) is not None  # the most recent are kept


def test_device_tokens() -> None:
    fresh = device_token(None)
    assert len(fresh) == 43 and device_token(fresh) == fresh
    assert device_token("short") != "short" and device_token("a" * 44) != "a" * 44
    with pytest.raises(ValueError, match="positive"):
        LoginLimits(client_failures=0)
