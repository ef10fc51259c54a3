"""Golden policy vectors (C7): policies signed by earlier releases keep verifying.

``policy_v1.json`` was written by the release *before* the fine-tuning permission existed: its
grants have no ``finetune`` field. It must still parse, verify and open with the vector identity,
and mean "fine-tuning not allowed". ``policy_v2.json`` carries ``finetune: true``. Regenerate a
vector only deliberately (``UPDATE_GOLDEN=1``) and review the diff: policy ids and sealed keys
are random, so a regenerated file differs byte for byte.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from secure.identity import ApplianceIdentity, PublicIdentity
from secure.issuer import IssuerKey, IssuerPublic
from secure.policy import Policy, check_signature, issue_policy, open_model_key

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "keys"
FACTORS = {"machine-id": "a" * 64, "nic:eth0": "b" * 64, "disk-serial": "c" * 64}
ISSUER_SEED = bytes([3] * 32)
MODEL_KEY = bytes(range(100, 132))
GRANT = ("golden", "pkg-000000000000000000000000", "f" * 64)


def _identity() -> ApplianceIdentity:
    return ApplianceIdentity.from_private_bytes(
        bytes([1] * 32), bytes([2] * 32), created_at=1_767_225_600
    )


def _issuer() -> IssuerKey:
    return IssuerKey(ISSUER_SEED, "golden-issuer")


def _public_identity() -> PublicIdentity:
    ident = _identity()
    return PublicIdentity.from_document(
        ident.public(host_factors=FACTORS, host_k=2).to_document(ident)
    )


def _write(name: str, **extra: object) -> None:
    name_, package_id, digest = GRANT
    data = issue_policy(
        _issuer(),
        identity=_public_identity(),
        grants=[(name_, package_id, digest, MODEL_KEY, ["staff"], [])],
        serial=7,
        issued_at=1_767_225_600,
        not_before=1_767_225_600,
        not_after=1_798_761_600,
        **extra,  # type: ignore[arg-type]
    )
    doc = {"issuer_public": _issuer().public().to_bytes().decode(), "policy": data.decode()}
    (VECTORS / name).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def _load(name: str) -> tuple[Policy, IssuerPublic]:
    doc = json.loads((VECTORS / name).read_text())
    return Policy.from_bytes(doc["policy"].encode()), IssuerPublic.from_bytes(
        doc["issuer_public"].encode()
    )


@pytest.mark.skipif(os.environ.get("UPDATE_GOLDEN") != "1", reason="writes golden files")
def test_write_policy_v1() -> None:
    _write("policy_v1.json")


def _check(policy: Policy, issuer: IssuerPublic) -> None:
    check_signature(policy, {issuer.issuer_id: issuer})
    assert policy.appliance_id == _identity().appliance_id
    name, package_id, digest = GRANT
    key = open_model_key(policy, name, _identity(), manifest_sha256=digest, package_id=package_id)
    assert key == MODEL_KEY


def test_old_policy_without_finetune_field_still_verifies_and_means_no() -> None:
    policy, issuer = _load("policy_v1.json")
    assert b"finetune" not in policy.payload_raw
    _check(policy, issuer)


@pytest.mark.skipif(os.environ.get("UPDATE_GOLDEN") != "1", reason="writes golden files")
def test_write_policy_v2() -> None:
    _write("policy_v2.json", allow_finetune=True)


def test_old_policy_grant_means_finetune_not_allowed() -> None:
    from secure.errors import PolicyRefused
    from secure.policy import check_finetune

    policy, _issuer_pub = _load("policy_v1.json")
    assert policy.grant(GRANT[0]) is not None
    assert policy.grant(GRANT[0]).finetune is False  # type: ignore[union-attr]
    with pytest.raises(PolicyRefused) as info:
        check_finetune(policy, GRANT[0])
    assert info.value.code == "FINETUNE_NOT_ALLOWED"


def test_policy_with_finetune_permission_verifies_and_allows() -> None:
    from secure.policy import check_finetune

    policy, issuer = _load("policy_v2.json")
    assert b'"finetune":true' in policy.payload_raw
    _check(policy, issuer)
    check_finetune(policy, GRANT[0])


def test_without_the_flag_a_new_grant_is_encoded_as_before() -> None:
    """A policy issued today without --allow-finetune has the old grant fields exactly."""
    import base64

    data = issue_policy(
        _issuer(),
        identity=_public_identity(),
        grants=[(*GRANT, MODEL_KEY, ["staff"], [])],
        serial=1,
        issued_at=1,
        not_before=1,
        not_after=2,
    )
    env = json.loads(data)
    payload = json.loads(base64.urlsafe_b64decode(env["payload"] + "=="))
    assert set(payload["models"][0]) == {
        "name",
        "package_id",
        "manifest_sha256",
        "sealed_key",
        "roles",
        "users",
    }


@pytest.mark.parametrize("value", ["yes", 1, None, []])
def test_a_finetune_flag_that_is_not_a_boolean_is_malformed(value: object) -> None:
    from secure.errors import FormatError
    from secure.policy import ModelGrant

    policy, _ = _load("policy_v2.json")
    entry = policy.models[0].to_dict()
    entry["finetune"] = value
    with pytest.raises(FormatError):
        ModelGrant.from_dict(entry)
    entry["surprise"] = True
    entry["finetune"] = True
    with pytest.raises(FormatError):
        ModelGrant.from_dict(entry)
