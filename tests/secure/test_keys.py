"""Appliance root key: passphrase sealing (K2), HKDF labels, caps on crafted files, golden vectors.

Golden vectors live in ``tests/vectors/keys/``; regenerate deliberately with
``UPDATE_GOLDEN=1 pytest tests/secure/test_keys.py`` and review the diff.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import struct
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secure._encoding import canonical_json
from secure.errors import FormatError, SealedError, SecureError
from secure.keys import (
    ARK_LEN,
    LABELS,
    MAGIC,
    KdfParams,
    combine_shares,
    derive_key,
    new_root_key,
    seal_root_key,
    split_root_key,
    unseal_root_key,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "keys"
FAST = KdfParams(n=2**10)
VECTOR_ARK = bytes(range(32))
VECTOR_PASSPHRASE = "correct horse battery staple"


def _sealed(passphrase: str = "s3cret passphrase", ark: bytes | None = None) -> tuple[bytes, bytes]:
    ark = ark or new_root_key()
    return ark, seal_root_key(ark, passphrase, params=FAST)


def _with_header(sealed: bytes, **changes: object) -> bytes:
    """Rebuild a sealed file with edited header fields (same ciphertext)."""
    (hlen,) = struct.unpack(">I", sealed[8:12])
    header = json.loads(sealed[12 : 12 + hlen])
    header.update(changes)
    new = canonical_json(header)
    return sealed[:8] + struct.pack(">I", len(new)) + new + sealed[12 + hlen :]


# -- K2: the passphrase --------------------------------------------------------------------


def test_round_trip_returns_the_root_key() -> None:
    ark, sealed = _sealed()
    assert sealed.startswith(MAGIC + b"\x01")
    assert ark not in sealed
    assert unseal_root_key(sealed, "s3cret passphrase") == ark


@pytest.mark.parametrize("wrong", ["s3cret passphrasE", "", "s3cret passphrase ", "x" * 1000])
def test_wrong_passphrase_stays_sealed_with_a_typed_code(wrong: str) -> None:
    _, sealed = _sealed()
    with pytest.raises(SealedError) as info:
        unseal_root_key(sealed, wrong)
    assert info.value.code == "WRONG_PASSPHRASE"
    assert "passphrase" in info.value.diagnostics()


def test_passphrase_is_unicode_normalised() -> None:
    composed = unicodedata.normalize("NFC", "Grüße café")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    ark, sealed = _sealed(composed)
    assert unseal_root_key(sealed, decomposed) == ark


def test_each_seal_uses_fresh_salt_and_nonce() -> None:
    ark = new_root_key()
    assert seal_root_key(ark, "pw", params=FAST) != seal_root_key(ark, "pw", params=FAST)


def test_default_kdf_cost_is_production_strength() -> None:
    assert KdfParams() == KdfParams(n=2**17, r=8, p=1)


@pytest.mark.parametrize("bad", [b"\x00" * 31, b"\x00" * 33, "x" * 32])
def test_misuse_is_loud(bad: object) -> None:
    with pytest.raises(ValueError):
        seal_root_key(bad, "pw", params=FAST)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        derive_key(bad, "kapp/v1 state-mac")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        seal_root_key(b"\x00" * 32, "", params=FAST)


# -- parsing and caps on crafted files -----------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n": 2**30}, "power of two"),
        ({"n": 2**20, "r": 16}, "exceed"),
        ({"n": 2**20, "p": 16, "r": 8}, "exceed"),
        ({"n": 1000}, "power of two"),
        ({"n": 2**8}, "power of two"),
        ({"r": 0}, "positive"),
        ({"n": True}, "integer"),
        ({"kdf": "argon2id"}, "unsupported"),
        ({"aead": "AES-128-GCM"}, "unsupported"),
        ({"extra": 1}, "unexpected"),
    ],
)
def test_crafted_kdf_parameters_are_refused_before_any_work(
    change: dict[str, object], message: str
) -> None:
    _, sealed = _sealed()
    start = time.monotonic()
    with pytest.raises(FormatError, match=message):
        unseal_root_key(_with_header(sealed, **change), "s3cret passphrase")
    assert time.monotonic() - start < 1.0


def test_header_fields_are_authenticated() -> None:
    _, sealed = _sealed()
    # A legal but different cost: the key changes, so the file stays sealed.
    with pytest.raises(SealedError):
        unseal_root_key(_with_header(sealed, n=2**11), "s3cret passphrase")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-1],
        lambda b: b + b"\x00",
        lambda b: b"XAPPARK" + b[7:],
        lambda b: b[:7] + b"\x02" + b[8:],
        lambda b: b[:8] + struct.pack(">I", 1 << 30) + b[12:],
        lambda b: b"",
    ],
    ids=["truncated", "appended", "magic", "version", "huge-header", "empty"],
)
def test_malformed_files_raise_format_error(mutate: Callable[[bytes], bytes]) -> None:
    _, sealed = _sealed()
    with pytest.raises(FormatError):
        unseal_root_key(mutate(sealed), "s3cret passphrase")


def test_every_single_byte_edit_is_refused() -> None:
    ark, sealed = _sealed()
    for i in range(len(sealed)):
        edited = bytearray(sealed)
        edited[i] ^= 0x01
        try:
            got = unseal_root_key(bytes(edited), "s3cret passphrase")
        except SecureError:
            continue
        pytest.fail(f"edit at byte {i} returned {'the same' if got == ark else 'another'} key")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400))
def test_fuzz_arbitrary_bytes_only_raise_secure_errors(data: bytes) -> None:
    with pytest.raises(SecureError):
        unseal_root_key(data, "pw")
    with pytest.raises(SecureError):
        unseal_root_key(MAGIC + b"\x01" + data, "pw")


_FUZZ_ARK, _FUZZ_SEALED = _sealed("pw")


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(_FUZZ_SEALED) - 1), st.integers(0, 255)), max_size=4
    ),
    cut=st.integers(0, len(_FUZZ_SEALED)),
)
def test_fuzz_mutations_never_yield_another_key(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_FUZZ_SEALED)
    for pos, value in edits:
        data[pos] = value
    data = data[:cut] if cut < len(data) else data
    with contextlib.suppress(SecureError):
        assert unseal_root_key(bytes(data), "pw") == _FUZZ_ARK


# -- derived keys --------------------------------------------------------------------------


def test_labels_give_distinct_keys_and_unknown_labels_are_refused() -> None:
    ark = new_root_key()
    keys = {derive_key(ark, label) for label in LABELS}
    assert len(keys) == len(LABELS)
    assert all(len(k) == 32 for k in keys)
    assert len(derive_key(ark, "kapp/v1 audit-mac", 64)) == 64
    assert derive_key(ark, "kapp/v1 audit-mac") == derive_key(ark, "kapp/v1 audit-mac")
    with pytest.raises(ValueError, match="Unknown key label"):
        derive_key(ark, "kapp/v1 audit-MAC")
    with pytest.raises(ValueError):
        derive_key(ark, "kapp/v1 audit-mac", 8)


def test_new_root_key_is_random() -> None:
    assert len(new_root_key()) == ARK_LEN
    assert new_root_key() != new_root_key()


# -- golden vectors ------------------------------------------------------------------------


def _write_golden_if_asked() -> None:
    if os.environ.get("UPDATE_GOLDEN") != "1":
        return
    VECTORS.mkdir(parents=True, exist_ok=True)
    derived = {label: derive_key(VECTOR_ARK, label).hex() for label in sorted(LABELS)}
    doc = {"ark": VECTOR_ARK.hex(), "derived": derived}
    (VECTORS / "derive_v1.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    sealed = seal_root_key(VECTOR_ARK, VECTOR_PASSPHRASE, params=FAST)
    (VECTORS / "root_key_v1.sealed").write_bytes(sealed)


def test_golden_derived_keys_are_byte_exact() -> None:
    _write_golden_if_asked()
    doc = json.loads((VECTORS / "derive_v1.json").read_text())
    assert bytes.fromhex(doc["ark"]) == VECTOR_ARK
    assert set(doc["derived"]) == set(LABELS)
    for label, hexkey in doc["derived"].items():
        assert derive_key(VECTOR_ARK, label).hex() == hexkey


def test_golden_sealed_root_key_still_unseals() -> None:
    _write_golden_if_asked()
    sealed = (VECTORS / "root_key_v1.sealed").read_bytes()
    assert unseal_root_key(sealed, VECTOR_PASSPHRASE) == VECTOR_ARK
    with pytest.raises(SealedError):
        unseal_root_key(sealed, VECTOR_PASSPHRASE.upper())


# -- k-of-n shares (K2: a wrong share stays sealed) ----------------------------------------


def test_any_k_of_n_shares_rebuild_the_root_key() -> None:
    ark = new_root_key()
    shares = split_root_key(ark, k=3, n=5)
    assert len(set(shares)) == 5 and all(ark.hex() not in s for s in shares)
    for subset in itertools.combinations(shares, 3):
        assert combine_shares(list(subset)) == ark
    assert combine_shares(shares) == ark
    shouted = [s.upper().replace("KAPP-SHARE-V1", "kapp-share-v1") for s in shares[:3]]
    assert combine_shares(shouted) == ark  # hex case does not matter


def _mistype(share: str) -> str:
    return share[:-1] + ("0" if share[-1] != "0" else "1")


def test_too_few_wrong_or_mixed_shares_stay_sealed() -> None:
    ark = new_root_key()
    shares = split_root_key(ark, k=3, n=5)
    cases = {
        "NOT_ENOUGH_SHARES": [shares[0], shares[1], shares[1]],
        "BAD_SHARE": [shares[0], shares[1], _mistype(shares[2])],
        "SHARES_MISMATCH": [shares[0], shares[1], split_root_key(new_root_key(), k=3, n=5)[2]],
    }
    for code, subset in cases.items():
        with pytest.raises(SealedError) as info:
            combine_shares(subset)
        assert info.value.code == code
    with pytest.raises(SealedError):  # two splits of the same key do not mix either
        combine_shares([shares[0], shares[1], split_root_key(ark, k=3, n=5)[2]])
    with pytest.raises(SealedError):
        combine_shares([])


_CHECK = "0011223344556677"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "kapp-share-v1:3:5:1",
        f"kapp-share-v1:3:5:6:{_CHECK}:" + "00" * 32,  # x > n
        f"kapp-share-v1:1:5:1:{_CHECK}:" + "00" * 32,  # k < 2
        "kapp-share-v1:3:5:1:00:" + "00" * 32,  # short check
        f"kapp-share-v1:3:5:1:{_CHECK}:" + "zz" * 32,  # not hex
        f"kapp-share-v1:3:5:1:{_CHECK}:" + "00" * 31,  # short key
        f"kapp-share-v2:3:5:1:{_CHECK}:" + "00" * 32,  # unknown version
    ],
)
def test_malformed_shares_are_format_errors(bad: str) -> None:
    with pytest.raises(FormatError):
        combine_shares([bad])


def test_split_misuse_is_loud() -> None:
    for k, n in [(1, 3), (4, 3), (2, 256)]:
        with pytest.raises(ValueError):
            split_root_key(new_root_key(), k=k, n=n)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=120), max_size=4))
def test_fuzz_shares(texts: list[str]) -> None:
    with pytest.raises(SecureError):
        combine_shares(texts)


def test_golden_shares_still_combine() -> None:
    path = VECTORS / "shares_v1.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        shares = split_root_key(VECTOR_ARK, k=2, n=3)
        path.write_text(json.dumps({"ark": VECTOR_ARK.hex(), "shares": shares}, indent=1) + "\n")
    doc = json.loads(path.read_text())
    assert combine_shares(doc["shares"][1:]) == bytes.fromhex(doc["ark"]) == VECTOR_ARK
