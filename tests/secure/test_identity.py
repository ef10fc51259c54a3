"""Appliance identity (sealing, signed identity document) and HPKE sealing to it.

Golden vectors: ``tests/vectors/keys/identity_v1.*`` and ``hpke_v1.json``; regenerate with
``UPDATE_GOLDEN=1`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from secure._encoding import b64e, canonical_json
from secure.errors import FormatError, SecureError, TamperedError
from secure.identity import (
    PURPOSE_AUDIT_CHECKPOINT,
    PURPOSE_IDENTITY_DOCUMENT,
    ApplianceIdentity,
    PublicIdentity,
    appliance_id_for,
    verify_signature,
)
from secure.keys import new_root_key
from secure.seal import open_sealed, seal_to

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "keys"
VECTOR_ARK = bytes(range(32))
FACTORS = {"machine-id": "a" * 64, "nic:eth0": "b" * 64, "disk-serial": "c" * 64}


@pytest.fixture(scope="module")
def ident() -> ApplianceIdentity:
    return ApplianceIdentity.generate(created_at=1_700_000_000)


def _document(ident: ApplianceIdentity) -> bytes:
    return ident.public(host_factors=FACTORS, host_k=2).to_document(ident)


def _resign(ident: ApplianceIdentity, payload: dict[str, object]) -> bytes:
    """A document with an arbitrary payload, validly signed by ``ident``."""
    raw = canonical_json(payload)
    sig = ident.sign(raw, purpose=PURPOSE_IDENTITY_DOCUMENT)
    return canonical_json(
        {"format": "kapp-identity", "payload": raw.decode(), "sig": b64e(sig), "v": 1}
    )


# -- identity and sealing ------------------------------------------------------------------


def test_appliance_id_is_derived_from_both_public_keys(ident: ApplianceIdentity) -> None:
    assert ident.appliance_id.startswith("app-") and len(ident.appliance_id) == 20
    assert ident.appliance_id == appliance_id_for(ident.sign_pub, ident.box_pub)
    other = ApplianceIdentity.generate(created_at=0)
    assert appliance_id_for(ident.sign_pub, other.box_pub) != ident.appliance_id
    assert "PrivateKey" not in repr(ident)


def test_seal_unseal_round_trip(ident: ApplianceIdentity) -> None:
    ark = new_root_key()
    blob = ident.seal(ark)
    back = ApplianceIdentity.unseal(blob, ark)
    assert (back.appliance_id, back.created_at) == (ident.appliance_id, ident.created_at)
    msg = b"checkpoint"
    assert verify_signature(
        ident.sign_pub,
        msg,
        back.sign(msg, purpose=PURPOSE_AUDIT_CHECKPOINT),
        purpose=PURPOSE_AUDIT_CHECKPOINT,
    )
    assert back.open_sealed(seal_to(ident.box_pub, b"k", info=b"i"), info=b"i") == b"k"


def test_sealed_identity_refuses_wrong_root_key_and_edits(ident: ApplianceIdentity) -> None:
    ark = new_root_key()
    blob = ident.seal(ark)
    with pytest.raises(TamperedError):
        ApplianceIdentity.unseal(blob, new_root_key())
    for i in range(len(blob)):
        edited = bytearray(blob)
        edited[i] ^= 0x02
        with pytest.raises(SecureError):
            ApplianceIdentity.unseal(bytes(edited), ark)


def test_sealed_identity_public_keys_cannot_be_swapped(ident: ApplianceIdentity) -> None:
    ark = new_root_key()
    other = ApplianceIdentity.generate(created_at=ident.created_at)
    doc = json.loads(ident.seal(ark))
    doc["sign_pub"] = b64e(other.sign_pub)
    doc["appliance_id"] = appliance_id_for(other.sign_pub, ident.box_pub)
    with pytest.raises(TamperedError):
        ApplianceIdentity.unseal(canonical_json(doc), ark)


# -- signatures ----------------------------------------------------------------------------


def test_signatures_are_domain_separated(ident: ApplianceIdentity) -> None:
    sig = ident.sign(b"m", purpose="kapp/v1 a")
    assert verify_signature(ident.sign_pub, b"m", sig, purpose="kapp/v1 a")
    assert not verify_signature(ident.sign_pub, b"m", sig, purpose="kapp/v1 b")
    assert not verify_signature(ident.sign_pub, b"n", sig, purpose="kapp/v1 a")
    # "a" NUL "b\x00m" must not collide with "a\x00b" NUL "m": purposes cannot hold NUL.
    with pytest.raises(ValueError):
        ident.sign(b"m", purpose="kapp/v1 a\x00b")
    with pytest.raises(ValueError):
        ident.sign(b"m", purpose="")


@pytest.mark.parametrize("pub", [b"", b"\x00" * 31, b"\x00" * 33, "x" * 32])
def test_verify_signature_is_false_for_malformed_keys(
    pub: object, ident: ApplianceIdentity
) -> None:
    sig = ident.sign(b"m", purpose="p")
    assert verify_signature(pub, b"m", sig, purpose="p") is False  # type: ignore[arg-type]
    assert verify_signature(ident.sign_pub, b"m", sig[:-1], purpose="p") is False


# -- identity document ---------------------------------------------------------------------


def test_document_round_trip(ident: ApplianceIdentity) -> None:
    public = PublicIdentity.from_document(_document(ident))
    assert public == ident.public(host_factors=FACTORS, host_k=2)
    assert public.host_factors == FACTORS and public.host_k == 2
    assert public.created_at == 1_700_000_000
    assert public.verify(b"x", ident.sign(b"x", purpose="p"), purpose="p")


def test_document_signature_is_deterministic(ident: ApplianceIdentity) -> None:
    assert _document(ident) == _document(ident)


def test_every_single_byte_edit_of_the_document_is_refused(ident: ApplianceIdentity) -> None:
    doc = _document(ident)
    for i in range(len(doc)):
        edited = bytearray(doc)
        edited[i] ^= 0x01
        with pytest.raises(SecureError):
            PublicIdentity.from_document(bytes(edited))


@pytest.mark.parametrize(
    ("field", "value"),
    [("host_k", 1), ("created_at", 1), ("host_factors", {**FACTORS, "machine-id": "d" * 64})],
)
def test_edited_payload_fields_fail_the_signature(
    ident: ApplianceIdentity, field: str, value: object
) -> None:
    outer = json.loads(_document(ident))
    payload = json.loads(outer["payload"])
    payload[field] = value
    outer["payload"] = canonical_json(payload).decode()
    with pytest.raises(TamperedError):
        PublicIdentity.from_document(canonical_json(outer))


def test_document_signed_by_another_key_or_with_a_foreign_id_is_refused(
    ident: ApplianceIdentity,
) -> None:
    other = ApplianceIdentity.generate(created_at=0)
    payload = json.loads(json.loads(_document(ident))["payload"])
    with pytest.raises(TamperedError):  # claims ident's keys, signed by other
        PublicIdentity.from_document(_resign(other, payload))
    payload["appliance_id"] = other.appliance_id
    with pytest.raises(TamperedError):  # valid signature, id of another appliance
        PublicIdentity.from_document(_resign(ident, payload))


def test_document_field_rules(ident: ApplianceIdentity) -> None:
    payload = json.loads(json.loads(_document(ident))["payload"])
    for field, value in [
        ("host_k", 4),
        ("host_k", -1),
        ("host_factors", {"x": "raw value"}),
        ("box_pub", b64e(bytes(32))),  # low-order X25519 point: nothing could be sealed to it
        ("extra", 1),
    ]:
        bad = {**payload, field: value}
        with pytest.raises(FormatError):
            PublicIdentity.from_document(_resign(ident, bad))


def test_public_identity_checks_itself_and_its_signer(ident: ApplianceIdentity) -> None:
    with pytest.raises(ValueError):
        PublicIdentity("app-0000000000000000", ident.sign_pub, ident.box_pub)
    other = ApplianceIdentity.generate(created_at=0)
    with pytest.raises(ValueError):
        ident.public().to_document(other)
    assert ident.public(host_factors=FACTORS).host_k == 0  # 0: the issuer chooses k


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=500))
def test_fuzz_document_and_sealed_identity_bytes(data: bytes) -> None:
    with pytest.raises(SecureError):
        PublicIdentity.from_document(data)
    with pytest.raises(SecureError):
        ApplianceIdentity.unseal(data, VECTOR_ARK)


_FUZZ_IDENT = ApplianceIdentity.generate(created_at=5)
_FUZZ_DOC = _FUZZ_IDENT.public(host_factors=FACTORS, host_k=3).to_document(_FUZZ_IDENT)


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, len(_FUZZ_DOC) - 1), st.integers(0, 255)), max_size=3)
)
def test_fuzz_document_mutations(edits: list[tuple[int, int]]) -> None:
    raw = bytearray(_FUZZ_DOC)
    for pos, value in edits:
        raw[pos] = value
    try:
        public = PublicIdentity.from_document(bytes(raw))
    except SecureError:
        return
    assert public == PublicIdentity.from_document(_FUZZ_DOC)  # only whitespace-level changes


# -- HPKE ----------------------------------------------------------------------------------


def test_hpke_round_trip_and_uniform_failures() -> None:
    key = X25519PrivateKey.generate()
    sealed = seal_to(key.public_key(), b"model key", info=b"policy-1/model-a")
    assert open_sealed(key, sealed, info=b"policy-1/model-a") == b"model key"
    assert seal_to(key.public_key(), b"model key", info=b"x") != seal_to(
        key.public_key(), b"model key", info=b"x"
    )
    failures = [
        (X25519PrivateKey.generate(), sealed, b"policy-1/model-a"),  # wrong key: P3
        (key, sealed, b"policy-1/model-b"),  # wrong info: key for another model
        (key, sealed[:-1], b"policy-1/model-a"),
        (key, sealed + b"\x00", b"policy-1/model-a"),
        (key, b"", b"policy-1/model-a"),
    ]
    for i in range(len(sealed)):
        flipped = bytearray(sealed)
        flipped[i] ^= 0x80
        failures.append((key, bytes(flipped), b"policy-1/model-a"))
    for private, blob, info in failures:
        with pytest.raises(TamperedError) as exc:
            open_sealed(private, blob, info=info)
        assert exc.value.message == "The sealed key failed its integrity check and was refused."


def test_hpke_misuse_is_loud() -> None:
    key = X25519PrivateKey.generate()
    with pytest.raises(ValueError):
        seal_to(key.public_key(), b"k", info=b"")
    with pytest.raises(ValueError):
        seal_to(b"\x01" * 31, b"k", info=b"i")
    with pytest.raises(ValueError):
        open_sealed(object(), b"", info=b"i")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_hpke_open(data: bytes) -> None:
    with pytest.raises(TamperedError):
        open_sealed(_FUZZ_IDENT.box_key, data, info=b"i")
    with pytest.raises(TamperedError):
        open_sealed(_FUZZ_IDENT.box_key, b"KHPKE\x01" + data, info=b"i")


# -- golden vectors ------------------------------------------------------------------------

VECTOR_SIGN = bytes([1] * 32)
VECTOR_BOX = bytes([2] * 32)


def _vector_identity() -> ApplianceIdentity:
    return ApplianceIdentity.from_private_bytes(VECTOR_SIGN, VECTOR_BOX, created_at=1_767_225_600)


def _write_golden_if_asked() -> None:
    if os.environ.get("UPDATE_GOLDEN") != "1":
        return
    ident = _vector_identity()
    VECTORS.mkdir(parents=True, exist_ok=True)
    (VECTORS / "identity_v1.sealed").write_bytes(ident.seal(VECTOR_ARK))
    (VECTORS / "identity_v1.document").write_bytes(
        ident.public(host_factors=FACTORS, host_k=2).to_document(ident)
    )
    sealed = seal_to(ident.box_pub, b"golden model key", info=b"kapp/v1 golden")
    doc = {
        "box_private": VECTOR_BOX.hex(),
        "info": "kapp/v1 golden",
        "plaintext": "golden model key",
        "sealed": sealed.hex(),
    }
    (VECTORS / "hpke_v1.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def test_golden_identity_vectors() -> None:
    _write_golden_if_asked()
    ident = _vector_identity()
    sealed = ApplianceIdentity.unseal((VECTORS / "identity_v1.sealed").read_bytes(), VECTOR_ARK)
    assert sealed.appliance_id == ident.appliance_id
    document = (VECTORS / "identity_v1.document").read_bytes()
    # Ed25519 is deterministic: the document is reproduced byte for byte.
    assert ident.public(host_factors=FACTORS, host_k=2).to_document(ident) == document
    assert PublicIdentity.from_document(document).appliance_id == ident.appliance_id


def test_golden_hpke_vector_still_opens() -> None:
    _write_golden_if_asked()
    doc = json.loads((VECTORS / "hpke_v1.json").read_text())
    private = X25519PrivateKey.from_private_bytes(bytes.fromhex(doc["box_private"]))
    opened = open_sealed(private, bytes.fromhex(doc["sealed"]), info=doc["info"].encode())
    assert opened == doc["plaintext"].encode()
