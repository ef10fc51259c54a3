"""Keyring and key stores: rotation and crypto-shredding (K1), parsing, fuzzing, golden vectors.

The crash-safety test (K3) lives in ``test_keyring_crash.py``.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure._keystore import read_store_file
from secure.errors import FormatError, KeyringError, SecureError, StateError, TamperedError
from secure.keyring import Keyring, KeyStore, WrappedKey, retire_old_keys
from secure.keys import new_root_key

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "keys"
VECTOR_ARK = bytes(range(32))
CTX = "collection:chunks"


@pytest.fixture
def ark() -> bytes:
    return new_root_key()


@pytest.fixture
def ring(tmp_path: Path, ark: bytes) -> Keyring:
    return Keyring.create(tmp_path / "keyring.json", ark)


# -- K1: rotation, minimum version, trim ---------------------------------------------------


def test_k1_rotate_rewrap_min_version_and_trim(tmp_path: Path, ark: bytes, ring: Keyring) -> None:
    a_path, b_path = tmp_path / "stores" / "a.json", tmp_path / "stores" / "b.json"
    a_path.parent.mkdir()
    _, key_a = KeyStore.create(a_path, ring, context="collection:a")
    backup_a = a_path.read_bytes()

    assert ring.rotate() == 2
    # Old wrapped keys still unwrap after rotation; new stores use the new kek.
    reloaded = Keyring.load(ring.path, ark)
    assert KeyStore.load(a_path, reloaded, context="collection:a")[1] == key_a
    store_b, key_b = KeyStore.create(b_path, reloaded, context="collection:b")
    assert store_b.wrapped.kek_version == 2

    # Rewrap + minimum version: everything current still loads; the old backup is refused.
    assert reloaded.rewrap_stores() == [a_path]
    reloaded.set_min_version(2)
    ring2 = Keyring.load(ring.path, ark)
    assert KeyStore.load(a_path, ring2, context="collection:a")[1] == key_a
    assert KeyStore.load(b_path, ring2, context="collection:b")[1] == key_b
    old = read_store_file(backup_a)[1]
    with pytest.raises(KeyringError) as below:
        ring2.unwrap(old, context="collection:a")
    assert below.value.code == "KEK_BELOW_MIN"

    # After trim the old backup can never be unwrapped again, not even by rewrap.
    assert ring2.trim() == [1]
    ring3 = Keyring.load(ring.path, ark)
    assert ring3.versions == [2]
    for keyring in (ring2, ring3):
        with pytest.raises(KeyringError) as trimmed:
            keyring.rewrap(old, context="collection:a")
        assert trimmed.value.code == "KEK_TRIMMED"
        assert "crypto-shredded" in trimmed.value.message
    a_path.write_bytes(backup_a)
    with pytest.raises(KeyringError):
        KeyStore.load(a_path, ring3, context="collection:a")


def test_rewrap_does_not_change_the_data_key_and_is_idempotent(
    ring: Keyring, tmp_path: Path
) -> None:
    store, key = KeyStore.create(tmp_path / "s.json", ring, context=CTX)
    assert store.rewrap() is False  # already current: no write
    ring.rotate()
    before = store.path.read_bytes()
    assert store.rewrap() is True
    assert store.path.read_bytes() != before
    assert store.rewrap() is False
    assert KeyStore.load(store.path, ring, context=CTX)[1] == key


def test_trim_refuses_while_a_known_store_needs_an_old_kek(ring: Keyring, tmp_path: Path) -> None:
    KeyStore.create(tmp_path / "s.json", ring, context=CTX)
    ring.rotate()
    ring.set_min_version(2)
    with pytest.raises(KeyringError, match=r"s\.json \(kek:1\)"):
        ring.trim()
    assert ring.versions == [1, 2]
    assert ring.rewrap_stores() == [tmp_path / "s.json"]
    assert ring.trim() == [1]


def test_trim_refuses_for_caller_held_keys_and_unreadable_stores(
    ring: Keyring, tmp_path: Path
) -> None:
    held = ring.wrap(os.urandom(32), context="vault:doc-1")
    store, _ = KeyStore.create(tmp_path / "s.json", ring, context=CTX)
    ring.rotate()
    store.rewrap()
    ring.set_min_version(2)
    with pytest.raises(KeyringError, match="caller-held"):
        ring.trim(also_referenced=[held.kek_version])
    store.path.write_text("garbage")
    with pytest.raises(KeyringError, match="unreadable"):
        ring.trim()
    store.path.unlink()  # a registered store that is gone holds no key
    assert ring.trim() == [1]


def test_retire_old_keys_runs_the_whole_sequence(ring: Keyring, tmp_path: Path) -> None:
    keys = {i: KeyStore.create(tmp_path / f"{i}.json", ring, context=f"c:{i}")[1] for i in range(3)}
    ring.rotate()
    ring.rotate()
    assert retire_old_keys(ring) == [1, 2]
    assert retire_old_keys(ring) == []  # re-runnable
    assert ring.versions == [3] and ring.min_version == 3
    for i, key in keys.items():
        assert KeyStore.load(tmp_path / f"{i}.json", ring, context=f"c:{i}")[1] == key


def test_a_stale_keyring_cannot_overwrite_a_newer_one(ring: Keyring, ark: bytes) -> None:
    other = Keyring.load(ring.path, ark)
    assert other.rotate() == 2
    with pytest.raises(KeyringError) as info:
        ring.rotate()  # would otherwise replace kek:2 with a different kek:2
    assert info.value.code == "KEYRING_STALE"
    assert Keyring.load(ring.path, ark).versions == [1, 2]


def test_refresh_adopts_a_newer_keyring_and_refuses_an_older_one(
    ring: Keyring, ark: bytes, tmp_path: Path
) -> None:
    """A server holds the keyring for days while the CLI changes it: after KEYRING_STALE it
    re-reads the file (nothing the other process wrote is lost) and retries."""
    server = Keyring.load(ring.path, ark)
    old_copy = ring.path.read_bytes()
    assert server.refresh() is False  # nothing new
    KeyStore.create(tmp_path / "cli.json", ring, context="cli")  # the CLI registers a store
    ring.rotate()
    with pytest.raises(KeyringError) as info:
        KeyStore.create(tmp_path / "server.json", server, context="server")
    assert info.value.code == "KEYRING_STALE" and not (tmp_path / "server.json").exists()
    assert server.refresh() is True
    assert (server.current_version, server.generation) == (ring.current_version, ring.generation)
    KeyStore.create(tmp_path / "server.json", server, context="server")
    on_disk = Keyring.load(ring.path, ark)
    assert set(on_disk.stores()) == {tmp_path / "cli.json", tmp_path / "server.json"}
    assert KeyStore.load(tmp_path / "cli.json", server, context="cli")[1]  # new kek known too
    ring.path.write_bytes(old_copy)  # someone restores an old keyring under the server
    with pytest.raises(KeyringError) as info:
        server.refresh()
    assert info.value.code == "KEYRING_ROLLBACK" and server.generation == on_disk.generation
    ring.path.write_bytes(old_copy.replace(b'\\"min\\"', b'\\"mix\\"'))  # MAC no longer fits
    with pytest.raises(TamperedError):
        server.refresh()


def test_concurrent_writers_are_serialised_and_lose_nothing(
    ring: Keyring, ark: bytes, tmp_path: Path
) -> None:
    """Two writers (threads here; processes hold the same flock) register stores at once, each
    re-reading and retrying when refused as stale: every registration survives."""
    errors: list[BaseException] = []

    def writer(tag: str) -> None:
        mine = Keyring.load(ring.path, ark)
        try:
            for i in range(20):
                while True:
                    mine.refresh()
                    try:
                        mine.register_store(tmp_path / f"{tag}-{i}.json")
                        break
                    except KeyringError as exc:
                        assert exc.code == "KEYRING_STALE"
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(Keyring.load(ring.path, ark).stores()) == 40


def test_min_version_never_goes_down_nor_past_current(ring: Keyring) -> None:
    ring.rotate()
    ring.set_min_version(2)
    for bad in (1, 3):
        with pytest.raises(KeyringError):
            ring.set_min_version(bad)
    ring.set_min_version(2)  # same value is a no-op


def test_destroy_forgets_the_store(ring: Keyring, tmp_path: Path, ark: bytes) -> None:
    store, _ = KeyStore.create(tmp_path / "s.json", ring, context=CTX)
    assert ring.stores() == [tmp_path / "s.json"]
    store.destroy()
    assert not store.path.exists()
    assert Keyring.load(ring.path, ark).stores() == []


def test_store_paths_are_kept_relative_to_the_keyring(tmp_path: Path, ark: bytes) -> None:
    home = tmp_path / "home"
    (home / "keys").mkdir(parents=True)
    ring = Keyring.create(home / "keys" / "keyring.json", ark)
    KeyStore.create(home / "keys" / "k.json", ring, context=CTX)
    moved = tmp_path / "restored"
    home.rename(moved)
    ring2 = Keyring.load(moved / "keys" / "keyring.json", ark)
    assert ring2.stores() == [moved / "keys" / "k.json"]


# -- wrapping errors -----------------------------------------------------------------------


def test_wrong_context_and_edited_ciphertext_are_tampering(ring: Keyring) -> None:
    wrapped = ring.wrap(os.urandom(32), context=CTX)
    with pytest.raises(TamperedError):
        ring.unwrap(wrapped, context="collection:other")
    flipped = bytearray(wrapped.ciphertext)
    flipped[0] ^= 1
    with pytest.raises(TamperedError):
        ring.unwrap(WrappedKey(1, wrapped.nonce, bytes(flipped)), context=CTX)
    ring.rotate()
    with pytest.raises(TamperedError):  # the version is bound too
        ring.unwrap(WrappedKey(2, wrapped.nonce, wrapped.ciphertext), context=CTX)


def test_unknown_version_is_a_clear_keyring_error(ring: Keyring) -> None:
    wrapped = ring.wrap(os.urandom(32), context=CTX)
    with pytest.raises(KeyringError) as info:
        ring.unwrap(WrappedKey(7, wrapped.nonce, wrapped.ciphertext), context=CTX)
    assert info.value.code == "KEK_UNKNOWN"
    assert "kek:7" in info.value.message


def test_misuse_is_loud(ring: Keyring, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ring.wrap(b"short", context=CTX)
    with pytest.raises(ValueError):
        ring.wrap(os.urandom(32), context="")
    with pytest.raises(ValueError):
        KeyStore.create(tmp_path / "s.json", ring, context="")


def test_nothing_is_overwritten(ring: Keyring, tmp_path: Path, ark: bytes) -> None:
    with pytest.raises(KeyringError, match="already exists"):
        Keyring.create(ring.path, ark)
    KeyStore.create(tmp_path / "s.json", ring, context=CTX)
    with pytest.raises(KeyringError, match="already exists"):
        KeyStore.create(tmp_path / "s.json", ring, context=CTX)


def test_store_context_swap_is_refused(ring: Keyring, tmp_path: Path) -> None:
    KeyStore.create(tmp_path / "a.json", ring, context="collection:a")
    with pytest.raises(TamperedError):
        KeyStore.load(tmp_path / "a.json", ring, context="collection:b")
    doc = json.loads((tmp_path / "a.json").read_text())
    doc["context"] = "collection:b"
    (tmp_path / "a.json").write_text(json.dumps(doc))
    with pytest.raises(TamperedError):
        KeyStore.load(tmp_path / "a.json", ring, context="collection:b")


def test_missing_files_are_typed(tmp_path: Path, ark: bytes, ring: Keyring) -> None:
    with pytest.raises(StateError, match="missing"):
        Keyring.load(tmp_path / "nope.json", ark)
    with pytest.raises(KeyringError) as info:
        KeyStore.load(tmp_path / "nope.json", ring, context=CTX)
    assert info.value.code == "KEYSTORE_MISSING"


# -- the keyring file ----------------------------------------------------------------------


def test_wrong_root_key_is_refused(ring: Keyring) -> None:
    with pytest.raises(TamperedError, match="keyring"):
        Keyring.load(ring.path, new_root_key())


def test_every_single_byte_edit_of_the_keyring_is_refused(ring: Keyring, ark: bytes) -> None:
    ring.rotate()
    data = ring.path.read_bytes()
    for i in range(len(data)):
        edited = bytearray(data)
        edited[i] ^= 0x04
        with pytest.raises(SecureError):
            Keyring.from_bytes(ring.path, bytes(edited), ark)


def test_newer_keyring_version_says_so(ring: Keyring, ark: bytes) -> None:
    doc = json.loads(ring.path.read_bytes())
    doc["v"] = 2
    with pytest.raises(FormatError, match="version 2"):
        Keyring.from_bytes(ring.path, json.dumps(doc).encode(), ark)


_FUZZ_ARK = new_root_key()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_keyring_bytes(data: bytes) -> None:
    with pytest.raises(SecureError):
        Keyring.from_bytes(Path("keyring.json"), data, _FUZZ_ARK)


@functools.cache
def _fuzz_ring() -> tuple[bytes, WrappedKey]:
    data = (VECTORS / "keyring_v1.json").read_bytes()
    ring = Keyring.from_bytes(Path("k.json"), data, VECTOR_ARK)
    return data, ring.wrap(bytes(32), context=CTX)


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=3)
)
def test_fuzz_keyring_mutations(edits: list[tuple[int, int]]) -> None:
    """Edits either fail with a SecureError or leave a keyring with exactly the same keys
    (e.g. JSON whitespace outside the MACed body)."""
    original, wrapped = _fuzz_ring()
    raw = bytearray(original)
    for pos, value in edits:
        raw[pos % len(raw)] = value
    try:
        ring = Keyring.from_bytes(Path("k.json"), bytes(raw), VECTOR_ARK)
    except SecureError:
        return
    assert ring.versions == [1, 2]
    assert ring.unwrap(wrapped, context=CTX) == bytes(32)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), _json_values.map(lambda v: json.dumps(v).encode())))
def test_fuzz_key_store_files(data: bytes) -> None:
    with pytest.raises(FormatError):
        read_store_file(data)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries({"ct": _json_values, "kek": _json_values, "nonce": _json_values})
    | _json_values
)
def test_fuzz_wrapped_key_dicts(obj: object) -> None:
    with pytest.raises(FormatError):
        WrappedKey.from_dict(obj)


def test_wrapped_key_dict_round_trip(ring: Keyring) -> None:
    wrapped = ring.wrap(os.urandom(32), context=CTX)
    assert WrappedKey.from_dict(json.loads(json.dumps(wrapped.to_dict()))) == wrapped


# -- golden vectors ------------------------------------------------------------------------

VECTOR_KEYS = {"collection:chunks": bytes([7] * 32), "vault:doc-1": bytes([9] * 32)}


def _write_golden_if_asked(tmp_path: Path) -> None:
    if os.environ.get("UPDATE_GOLDEN") != "1":
        return
    ring = Keyring.create(tmp_path / "keyring.json", VECTOR_ARK)
    old = ring.wrap(VECTOR_KEYS["collection:chunks"], context="collection:chunks")
    ring.rotate()
    new = ring.wrap(VECTOR_KEYS["vault:doc-1"], context="vault:doc-1")
    VECTORS.mkdir(parents=True, exist_ok=True)
    (VECTORS / "keyring_v1.json").write_bytes(ring.path.read_bytes())
    wrapped = {"collection:chunks": old.to_dict(), "vault:doc-1": new.to_dict()}
    (VECTORS / "wrapped_v1.json").write_text(json.dumps(wrapped, indent=1, sort_keys=True) + "\n")


def test_golden_keyring_still_unwraps(tmp_path: Path) -> None:
    _write_golden_if_asked(tmp_path)
    data = (VECTORS / "keyring_v1.json").read_bytes()
    ring = Keyring.from_bytes(tmp_path / "keyring.json", data, VECTOR_ARK)
    assert ring.versions == [1, 2] and ring.current_version == 2
    wrapped = json.loads((VECTORS / "wrapped_v1.json").read_text())
    for context, key in VECTOR_KEYS.items():
        assert ring.unwrap(WrappedKey.from_dict(wrapped[context]), context=context) == key
