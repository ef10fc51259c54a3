"""The encrypted document vault (secure/vault.py) with a real keyring and real containers."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import threading
from pathlib import Path

import pytest

from secure.container import CHUNK_SIZE
from secure.errors import KeyringError, SecureError, TamperedError
from secure.keyring import Keyring, KeyStore, retire_old_keys
from secure.vault import DocumentVault, StoredDocument, open_collection_key

CANARY = b"The canary sentence: Project Nightjar closes on the 14th of March."


@pytest.fixture
def ark() -> bytes:
    return os.urandom(32)


@pytest.fixture
def ring(tmp_path: Path, ark: bytes) -> Keyring:
    (tmp_path / "keys").mkdir()
    return Keyring.create(tmp_path / "keys" / "keyring.json", ark)


@pytest.fixture
def vault(tmp_path: Path, ring: Keyring) -> DocumentVault:
    return DocumentVault(tmp_path / "vault", ring)


def scan(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE + 5])
def test_round_trip_from_a_path(tmp_path: Path, vault: DocumentVault, size: int) -> None:
    data = os.urandom(size)
    src = tmp_path / "Q3 budget (final).xlsx"
    src.write_bytes(data)
    stored = vault.put(src)
    assert stored == StoredDocument(stored.storage_id, size, hashlib.sha256(data).hexdigest())
    assert vault.open_bytes(stored.storage_id) == data
    assert vault.list_ids() == [stored.storage_id]
    assert not any("budget" in p.name for p in vault.root.rglob("*"))  # names are opaque


def test_round_trip_from_streams(vault: DocumentVault) -> None:
    data = CANARY * 1000
    seekable = io.BytesIO(b"skip" + data)
    seekable.read(4)  # a stream is stored from its current position
    assert vault.open_bytes(vault.put(seekable).storage_id) == data

    read_fd, write_fd = os.pipe()  # not seekable, no size: read into memory, never to disk

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as sink:
            sink.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    with os.fdopen(read_fd, "rb") as pipe:
        stored = vault.put(pipe)
    writer.join()
    assert stored.size == len(data)
    assert vault.open_bytes(stored.storage_id) == data


def test_no_plaintext_reaches_the_disk(tmp_path: Path, vault: DocumentVault) -> None:
    src = tmp_path / "drop" / "memo.txt"
    src.parent.mkdir()
    src.write_bytes(CANARY * 3)
    stored = vault.put(src)
    src.unlink()  # the inbox removes the original
    assert scan(tmp_path, CANARY) == []
    assert scan(tmp_path, CANARY[:24]) == []
    assert vault.open_bytes(stored.storage_id) == CANARY * 3


def test_explicit_ids_replace_and_delete(vault: DocumentVault) -> None:
    sid = "a" * 32
    vault.put(io.BytesIO(b"first"), storage_id=sid)
    vault.put(io.BytesIO(b"second"), storage_id=sid)
    assert vault.open_bytes(sid) == b"second"
    assert vault.exists(sid)
    assert vault.delete(sid) is True
    assert vault.delete(sid) is False
    assert not vault.exists(sid) and vault.list_ids() == []
    with pytest.raises(SecureError) as info:
        vault.open_bytes(sid)
    assert info.value.code == "VAULT_NOT_FOUND"


@pytest.mark.parametrize("bad", ["../../etc/passwd", "short", "a/b" * 4, "x" * 129, "é" * 10])
def test_storage_ids_are_checked(vault: DocumentVault, bad: str) -> None:
    with pytest.raises(ValueError, match="storage id"):
        vault.put(io.BytesIO(b"x"), storage_id=bad)
    with pytest.raises(ValueError, match="storage id"):
        vault.open_bytes(bad)


def test_flipped_bytes_are_refused(vault: DocumentVault) -> None:
    sid = vault.put(io.BytesIO(os.urandom(3000))).storage_id
    path = vault.root / f"{sid}.kdoc"
    blob = path.read_bytes()
    for pos in (0, 20, len(blob) // 2, len(blob) - 1):
        edited = bytearray(blob)
        edited[pos] ^= 0x01
        path.write_bytes(bytes(edited))
        with pytest.raises(TamperedError):
            vault.open_bytes(sid)
    path.write_bytes(blob)
    assert len(vault.open_bytes(sid)) == 3000


def test_a_container_renamed_or_moved_to_another_vault_is_refused(
    tmp_path: Path, ring: Keyring, vault: DocumentVault
) -> None:
    sid = vault.put(io.BytesIO(CANARY)).storage_id
    other_id = "b" * 32
    shutil.copy(vault.root / f"{sid}.kdoc", vault.root / f"{other_id}.kdoc")
    with pytest.raises(TamperedError):
        vault.open_bytes(other_id)
    other = DocumentVault(tmp_path / "vault2", ring)
    shutil.copy(vault.root / f"{sid}.kdoc", other.root / f"{sid}.kdoc")
    with pytest.raises(TamperedError):
        other.open_bytes(sid)


def test_a_source_that_changes_while_stored_leaves_nothing(vault: DocumentVault) -> None:
    class Shrinks(io.BytesIO):
        def readinto(self, view: bytearray) -> int:  # type: ignore[override]
            return 0

    class Grows(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            return b"more"

    for src in (Shrinks(b"0123456789"), Grows(b"0123456789")):
        with pytest.raises(SecureError) as info:
            vault.put(src)
        assert info.value.code == "SOURCE_CHANGED"
    assert vault.list_ids() == []
    assert [p.name for p in vault.root.iterdir()] == ["vault-key.json"]


def test_sweep_removes_partial_writes(vault: DocumentVault) -> None:
    (vault.root / ".tmp-deadbeef.kdoc").write_bytes(b"half a container")
    keep = vault.put(io.BytesIO(b"kept")).storage_id
    assert vault.sweep_partial() == 1
    assert vault.list_ids() == [keep]


def test_the_vault_key_is_registered_and_survives_rotation_and_trim(
    tmp_path: Path, ring: Keyring, ark: bytes, vault: DocumentVault
) -> None:
    sid = vault.put(io.BytesIO(CANARY)).storage_id
    assert vault.key_path in ring.stores()
    old_store = vault.key_path.read_bytes()
    ring.rotate()
    assert retire_old_keys(ring) == [1]
    reopened = DocumentVault(vault.root, Keyring.load(ring.path, ark))
    assert reopened.vault_id == vault.vault_id
    assert reopened.open_bytes(sid) == CANARY
    assert KeyStore.read(vault.key_path, ring).wrapped.kek_version == 2
    vault.key_path.write_bytes(old_store)  # an old backup of the key store is now useless
    with pytest.raises(KeyringError) as info:
        DocumentVault(vault.root, Keyring.load(ring.path, ark))
    assert info.value.code == "KEK_TRIMMED"


def test_a_missing_key_store_is_never_silently_replaced(
    ring: Keyring, vault: DocumentVault
) -> None:
    vault.put(io.BytesIO(b"doc"))
    vault.key_path.unlink()
    with pytest.raises(KeyringError) as info:
        DocumentVault(vault.root, ring)
    assert info.value.code == "KEYSTORE_MISSING"


def test_a_key_store_of_another_purpose_is_refused(tmp_path: Path, ring: Keyring) -> None:
    path = tmp_path / "keys" / "stores" / "chunks.json"
    open_collection_key(path, ring, context="kapp/v1 chunks:chunks")
    with pytest.raises(KeyringError, match="not a document vault"):
        DocumentVault(tmp_path / "vault", ring, key_path=path)


def test_collection_key_is_created_once_registered_and_bound_to_its_context(
    tmp_path: Path, ring: Keyring
) -> None:
    path = tmp_path / "keys" / "stores" / "chunks.json"
    key = open_collection_key(path, ring, context="kapp/v1 chunks:chunks")
    assert len(key) == 32
    assert open_collection_key(path, ring, context="kapp/v1 chunks:chunks") == key
    assert path in ring.stores()
    with pytest.raises(TamperedError):
        open_collection_key(path, ring, context="kapp/v1 chunks:other")
    ring.rotate()
    retire_old_keys(ring)
    assert open_collection_key(path, ring, context="kapp/v1 chunks:chunks") == key
