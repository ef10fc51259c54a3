"""Policies: P1-P4, P6 and T1 of SECURITY.md, through the real model store where it matters."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure.errors import FormatError, PolicyRefused, SecureError
from secure.home import HostContext
from secure.issuer import IssuerKey
from secure.policy import Policy

from .helpers import DAY, HOST, NOW, World, make_home, make_world


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def refused(world: World, data: bytes, *, now: int = NOW, host: HostContext = HOST) -> str:
    with pytest.raises(PolicyRefused) as info:
        world.store.install_policy(data, actor="admin", now=now, host=host)
    return info.value.code


def last_audit(world: World) -> tuple[str, str, str]:
    """The newest entry other than a periodic signed checkpoint."""
    entry = next(e for e in reversed(world.home.audit.tail(2)) if not e.is_checkpoint)
    return entry.action, entry.outcome, entry.reason


def test_valid_policy_installs_and_opens(world: World) -> None:
    world.store.install_policy(world.policy(), actor="admin", now=NOW, host=HOST)
    opened = world.store.open_model("m1", user="bob", role="staff", now=NOW, host=HOST)
    assert set(opened.files) == {"model.safetensors", "config.json", "tokenizer.json"}
    src = world.tmp / "src"
    for name, buf in opened.files.items():
        assert bytes(buf) == (src / name).read_bytes()
    opened.wipe()
    assert last_audit(world) == ("model.unlock", "ok", "")


# ----- P1: any edited byte, or an unknown signer, is refused --------------------------------


def test_p1_every_byte_of_the_payload_matters(world: World) -> None:
    data = world.policy()
    env = json.loads(data)
    payload = base64.urlsafe_b64decode(env["payload"] + "==")
    step = max(1, len(payload) // 97)
    for i in range(0, len(payload), step):
        forged = bytearray(payload)
        forged[i] ^= 0x01
        env2 = dict(env, payload=base64.urlsafe_b64encode(forged).rstrip(b"=").decode())
        code = refused(world, json.dumps(env2).encode())
        assert code in {"BAD_SIGNATURE", "MALFORMED", "UNKNOWN_ISSUER", "WRONG_APPLIANCE"}
        assert last_audit(world)[1:] == ("refused", code)


def test_p1_every_byte_of_the_file(world: World) -> None:
    data = world.policy()
    for i in range(0, len(data), 7):
        forged = bytearray(data)
        forged[i] ^= 0x20
        with pytest.raises(SecureError):
            world.store.install_policy(bytes(forged), actor="admin", now=NOW, host=HOST)
    assert world.store.policies() == []


def test_p1_signature_by_unknown_key(world: World) -> None:
    stranger = IssuerKey.generate("stranger")
    assert refused(world, world.policy(issuer=stranger)) == "UNKNOWN_ISSUER"


def test_p1_signature_swapped_from_another_policy(world: World) -> None:
    a, b = json.loads(world.policy(serial=1)), json.loads(world.policy(serial=2))
    a["signature"] = b["signature"]
    assert refused(world, json.dumps(a).encode()) == "BAD_SIGNATURE"


# ----- P2: the validity window --------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (NOW - DAY - 1, "NOT_YET_VALID"),
        (NOW - DAY, None),  # not_before is inclusive
        (NOW + 30 * DAY - 1, None),
        (NOW + 30 * DAY, "EXPIRED"),  # not_after is exclusive
    ],
)
def test_p2_window_boundaries(world: World, now: int, expected: str | None) -> None:
    world.store.install_policy(world.policy(), actor="admin", now=NOW - DAY, host=HOST)
    status = world.store.status("m1", now=now, host=HOST)
    assert status.unlockable is (expected is None)
    if expected is None:
        world.store.open_model("m1", user="u", role="staff", now=now, host=HOST).wipe()
    else:
        assert status.reason_code == expected
        with pytest.raises(PolicyRefused) as info:
            world.store.open_model("m1", user="u", role="staff", now=now, host=HOST)
        assert info.value.code == expected
        assert last_audit(world) == ("model.unlock", "refused", expected)


def test_p2_expired_newer_policy_supersedes_older(world: World) -> None:
    world.store.install_policy(world.policy(serial=1), actor="a", now=NOW, host=HOST)
    late = world.policy(serial=2, not_before=NOW - 9 * DAY, not_after=NOW - 8 * DAY)
    world.store.install_policy(late, actor="a", now=NOW, host=HOST)
    assert world.store.status("m1", now=NOW, host=HOST).reason_code == "EXPIRED"


# ----- P3: a policy for appliance A installed on B ------------------------------------------


def test_p3_policy_for_another_appliance(world: World, tmp_path: Path) -> None:
    other = make_home(tmp_path / "other")
    data = world.policy(identity=other.public_identity(HOST, now=NOW))
    assert refused(world, data) == "WRONG_APPLIANCE"
    assert last_audit(world)[1:] == ("refused", "WRONG_APPLIANCE")


def test_p3_copied_home_identity_cannot_open_other_key(world: World, tmp_path: Path) -> None:
    """Even if the appliance-id check were skipped, B's identity key cannot open A's seal."""
    from secure.policy import open_model_key

    other = make_home(tmp_path / "other")
    policy = Policy.from_bytes(world.policy())
    with pytest.raises(PolicyRefused) as info:
        open_model_key(
            policy,
            "m1",
            other.identity,
            manifest_sha256=world.manifest.sha256,
            package_id=world.manifest.package_id,
        )
    assert info.value.code == "KEY_UNSEALABLE"


# ----- P4: host binding k-of-n --------------------------------------------------------------


def _host_with(changed: int) -> HostContext:
    factors = dict(HOST.factors)
    for name in list(factors)[:changed]:
        factors[name] = "e" * 64
    return HostContext(factors, "soft")


def test_p4_one_changed_factor_still_valid_and_audited(world: World) -> None:
    world.store.install_policy(world.policy(), actor="admin", now=NOW, host=HOST)
    world.store.open_model("m1", user="u", role="staff", now=NOW, host=_host_with(1)).wipe()
    entry = world.home.audit.tail(1)[0]
    assert entry.action == "model.unlock" and entry.outcome == "ok"
    assert entry.details["host_factors_changed"] == "machine-id"


def test_p4_fewer_than_k_refused(world: World) -> None:
    world.store.install_policy(world.policy(), actor="admin", now=NOW, host=HOST)
    with pytest.raises(PolicyRefused) as info:
        world.store.open_model("m1", user="u", role="staff", now=NOW, host=_host_with(2))
    assert info.value.code == "HOST_MISMATCH"
    assert "2 of 4 host factors match, 3 needed" in info.value.message
    assert refused(world, world.policy(serial=5), host=_host_with(2)) == "HOST_MISMATCH"


# ----- P5 (per request) and P6 (revocation, lower serial) ---------------------------------


def test_p5_role_and_user_denied(world: World) -> None:
    world.store.install_policy(world.policy(users=("bob",)), actor="admin", now=NOW, host=HOST)
    for user, role, code in [("bob", "guest", "ROLE_DENIED"), ("eve", "staff", "USER_DENIED")]:
        with pytest.raises(PolicyRefused) as info:
            world.store.open_model("m1", user=user, role=role, now=NOW, host=HOST)
        assert info.value.code == code
        assert last_audit(world) == ("model.unlock", "refused", code)


def test_p6_revocation(world: World) -> None:
    policy = world.store.install_policy(world.policy(), actor="admin", now=NOW, host=HOST)
    world.store.revoke(policy.policy_id, actor="admin", now=NOW)
    status = world.store.status("m1", now=NOW, host=HOST)
    assert (status.unlockable, status.reason_code) == (False, "REVOKED")
    assert refused(world, policy.raw) == "REVOKED"


def test_p6_lower_serial_refused(world: World) -> None:
    world.store.install_policy(world.policy(serial=7), actor="admin", now=NOW, host=HOST)
    assert refused(world, world.policy(serial=6)) == "SERIAL_ROLLBACK"


# ----- T1: trusted time ---------------------------------------------------------------------


def test_t1_clock_rollback_below_high_water(world: World) -> None:
    world.store.install_policy(world.policy(), actor="admin", now=NOW, host=HOST)
    world.store.open_model("m1", user="u", role="staff", now=NOW + 5 * DAY, host=HOST).wipe()
    with pytest.raises(PolicyRefused) as info:
        world.store.open_model("m1", user="u", role="staff", now=NOW + DAY, host=HOST)
    assert info.value.code == "CLOCK_ROLLBACK"
    assert last_audit(world) == ("model.unlock", "refused", "CLOCK_ROLLBACK")


def test_t1_before_issued_at(world: World) -> None:
    data = world.policy(issued_at=NOW + DAY, not_before=NOW - DAY)
    assert refused(world, data) == "BEFORE_ISSUED_AT"


def test_t1_past_maximum_offline_period(world: World) -> None:
    world.store.install_policy(world.policy(max_offline_s=7 * DAY), actor="a", now=NOW, host=HOST)
    world.store.open_model("m1", user="u", role="staff", now=NOW + 5 * DAY, host=HOST).wipe()
    with pytest.raises(PolicyRefused) as info:
        world.store.open_model("m1", user="u", role="staff", now=NOW + 7 * DAY, host=HOST)
    assert info.value.code == "OFFLINE_TOO_LONG"


# ----- parser fuzzing -----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_policy_parser_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(SecureError):
        Policy.from_bytes(data)


_SAMPLE: list[bytes] = []


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_policy_parser_mutations(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    if not _SAMPLE:
        _SAMPLE.append(make_world(tmp_path_factory.mktemp("fuzz")).policy())
    raw = bytearray(_SAMPLE[0])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    with contextlib.suppress(SecureError, FormatError):
        Policy.from_bytes(bytes(raw))


# ----- the signed fine-tuning permission ----------------------------------------------------


def test_finetune_needs_the_signed_permission_and_the_refusal_is_audited(world: World) -> None:
    world.store.install_policy(world.policy(), actor="admin", now=NOW, host=HOST)
    assert world.store.status("m1", now=NOW, host=HOST).finetune is False
    with pytest.raises(PolicyRefused) as info:
        world.store.open_model("m1", user=None, role=None, now=NOW, host=HOST, purpose="finetune")
    assert info.value.code == "FINETUNE_NOT_ALLOWED"
    assert last_audit(world) == ("model.unlock", "refused", "FINETUNE_NOT_ALLOWED")
    # serving the same model is unaffected
    world.store.open_model("m1", user="bob", role="staff", now=NOW, host=HOST).wipe()


def test_finetune_allowed_by_the_newest_valid_policy_only(world: World) -> None:
    world.store.install_policy(
        world.policy(serial=1, allow_finetune=True), actor="admin", now=NOW, host=HOST
    )
    assert world.store.status("m1", now=NOW, host=HOST).finetune is True
    opened = world.store.open_model(
        "m1", user=None, role=None, now=NOW, host=HOST, purpose="finetune"
    )
    opened.wipe()
    entry = next(e for e in reversed(world.home.audit.tail(2)) if not e.is_checkpoint)
    assert (entry.actor, entry.details.get("purpose")) == ("service:finetune", "finetune")
    # a newer policy without the permission supersedes it
    world.store.install_policy(world.policy(serial=2), actor="admin", now=NOW, host=HOST)
    assert world.store.status("m1", now=NOW, host=HOST).finetune is False
    with pytest.raises(PolicyRefused):
        world.store.open_model("m1", user=None, role=None, now=NOW, host=HOST, purpose="finetune")


def test_finetune_flag_cannot_be_added_without_the_issuer(world: World) -> None:
    """Editing the signed payload to switch fine-tuning on breaks the signature (P1)."""
    data = json.loads(world.policy())
    payload = base64.urlsafe_b64decode(data["payload"] + "==")
    forged = payload.replace(b'"users":[]', b'"finetune":true,"users":[]')
    assert forged != payload
    data["payload"] = base64.urlsafe_b64encode(forged).rstrip(b"=").decode()
    assert refused(world, json.dumps(data).encode()) == "BAD_SIGNATURE"
