"""Local settings may only make a signed policy stricter (P4 and T1 under unsigned settings).

The local host-factor minimum and clock skew come from `appliance.toml` or the environment,
which nobody signs. A minimum below the policy's k must not lower it; one above it raises it;
the skew is capped at `secure.clock.MAX_SKEW`, and at that cap rollback is still caught.
Real signed policies through the real model store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from secure.clock import MAX_SKEW, check_time
from secure.errors import PolicyRefused
from secure.home import HostContext
from secure.models import ModelStore
from secure.policy import TrustContext

from .helpers import DAY, HOST, NOW, World, make_world

HOST3 = HostContext(
    factors={"machine-id": "a" * 64, "dmi-uuid": "b" * 64, "disk": "d" * 64}, strength="soft"
)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def _changed(host: HostContext, count: int) -> HostContext:
    factors = dict(host.factors)
    for name in list(factors)[:count]:
        factors[name] = "e" * 64
    return HostContext(factors, host.strength)


def _install(world: World, store: ModelStore, *, host_k: int) -> None:
    data = world.policy(identity=world.identity(HOST3), host_k=host_k)
    store.install_policy(data, actor="admin", now=NOW, host=HOST3)


def _open_code(store: ModelStore, host: HostContext, now: int = NOW) -> str:
    """The refusal's reason code, or "OK" when the model opens."""
    try:
        store.open_model("m1", user="u", role="staff", now=now, host=host).wipe()
    except PolicyRefused as exc:
        return exc.code
    return "OK"


def test_local_minimum_below_the_signed_k_does_not_lower_it(world: World) -> None:
    store = ModelStore(world.home, host_k_min=1)
    _install(world, store, host_k=3)  # 3 of 3 signed
    assert _open_code(store, HOST3) == "OK"
    with pytest.raises(PolicyRefused) as info:
        store.open_model("m1", user="u", role="staff", now=NOW, host=_changed(HOST3, 1))
    assert info.value.code == "HOST_MISMATCH"
    assert "2 of 3 host factors match, 3 needed" in info.value.message
    entry = world.home.audit.tail(1)[0]
    assert (entry.action, entry.reason) == ("model.unlock", "HOST_MISMATCH")


def test_local_minimum_above_the_signed_k_makes_it_stricter(world: World) -> None:
    _install(world, world.store, host_k=2)  # 2 of 3 signed
    assert _open_code(world.store, _changed(HOST3, 1)) == "OK"  # the policy's own k
    strict = ModelStore(world.home, host_k_min=3)
    assert _open_code(strict, HOST3) == "OK"
    assert _open_code(strict, _changed(HOST3, 1)) == "HOST_MISMATCH"


def test_local_minimum_above_the_factor_count_refuses_rather_than_ignores(world: World) -> None:
    _install(world, world.store, host_k=2)
    assert _open_code(ModelStore(world.home, host_k_min=4), HOST3) == "HOST_MISMATCH"


def test_clock_rollback_still_detected_with_the_maximum_skew(world: World) -> None:
    store = ModelStore(world.home, skew_s=MAX_SKEW)
    _install(world, store, host_k=3)
    later = NOW + 5 * DAY
    assert _open_code(store, HOST3, later) == "OK"  # moves the trusted-time mark
    assert _open_code(store, HOST3, later - MAX_SKEW) == "OK"  # exactly at the skew
    assert _open_code(store, HOST3, later - MAX_SKEW - 1) == "CLOCK_ROLLBACK"
    assert _open_code(store, HOST3, later - DAY) == "CLOCK_ROLLBACK"


def test_before_issued_at_still_detected_with_the_maximum_skew(world: World) -> None:
    store = ModelStore(world.home, skew_s=MAX_SKEW)
    data = world.policy(issued_at=NOW + MAX_SKEW + 1, not_before=NOW - DAY)
    with pytest.raises(PolicyRefused) as info:
        store.install_policy(data, actor="admin", now=NOW, host=HOST)
    assert info.value.code == "BEFORE_ISSUED_AT"


@pytest.mark.parametrize("skew", [MAX_SKEW + 1, 10 * DAY, 2**62, -1])
def test_skew_beyond_the_cap_is_misuse_everywhere(world: World, skew: int) -> None:
    with pytest.raises(ValueError, match=f"from 0 to {MAX_SKEW} seconds"):
        ModelStore(world.home, skew_s=skew)
    with pytest.raises(ValueError, match=f"from 0 to {MAX_SKEW} seconds"):
        check_time(NOW, high_water=NOW, issued_at=0, last_signed_at=0, max_offline=None, skew=skew)
    with pytest.raises(ValueError, match=f"from 0 to {MAX_SKEW} seconds"):
        TrustContext(
            now=NOW, appliance_id="a", host_factors={}, app_version="1", issuers={}, skew_s=skew
        )


@pytest.mark.parametrize("k", [-1, True, 1.5])
def test_negative_or_non_integer_local_minimum_is_misuse(world: World, k: object) -> None:
    with pytest.raises(ValueError, match="host-factor minimum"):
        ModelStore(world.home, host_k_min=k)  # type: ignore[arg-type]
