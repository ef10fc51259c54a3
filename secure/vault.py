"""The encrypted document vault: originals that arrive through the drop inbox, at rest.

Each document is one container file (`secure.container`, one data key per vault) named by an
opaque random *storage id*, never by its original name: the name is document metadata and lives
in the (lead-owned) registry, so a copied vault directory reveals sizes and count only (T1).
The container header binds ``object_id`` = the vault id and ``name`` = the storage id, so a
container renamed to another id, or copied from another vault, is refused (C4).

The vault's data key is wrapped by the keyring in a key-store file registered with it, so
``keyring.rotate()`` followed by :func:`secure.keyring.retire_old_keys` rewraps it and shreds the
old kek. Deleting a container only unlinks it: true erasure of a deleted document (including
from backups of the vault) needs crypto-shredding of the whole vault key, i.e. re-encrypting the
surviving documents into a new vault, then rotating and trimming.

Writes are streamed (one 1 MiB chunk of plaintext in memory, never a plaintext temp file) into a
temp name in the vault directory, fsynced, then renamed, so a crash leaves either no document or
a complete one; :meth:`DocumentVault.sweep_partial` removes ciphertext left by a crash.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ._encoding import fsync_dir
from .container import Container, encrypt_stream
from .errors import KeyringError, SecureError
from .keyring import Keyring, KeyStore

__all__ = ["DocumentVault", "StoredDocument", "open_collection_key"]

CONTEXT_PREFIX = "kapp/v1 document-vault:"
KEY_ID = "vault-key"
KEY_FILE = "vault-key.json"
SUFFIX = ".kdoc"
_TMP_PREFIX = ".tmp-"
_ID = re.compile(r"[A-Za-z0-9_-]{8,128}")


@dataclass(frozen=True)
class StoredDocument:
    """What :meth:`DocumentVault.put` stored: the id to keep in the registry, the plaintext
    size and its SHA-256 (hex), computed while streaming, for the idempotency check."""

    storage_id: str
    size: int
    sha256_plain: str


class DocumentVault:
    """A directory of encrypted originals under one data key; created on first use.

    ``key_path`` is where the vault's key store lives (default ``root/vault-key.json``); put it
    beside the other key stores (e.g. ``home.layout.key_stores / "vault.json"``) when the
    home has such a folder.
    """

    def __init__(self, root: Path, keyring: Keyring, *, key_path: Path | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.key_path = Path(key_path) if key_path is not None else self.root / KEY_FILE
        self.vault_id, self._key = self._load_or_create_key(keyring)

    # -- key ----------------------------------------------------------------------------------

    def _load_or_create_key(self, keyring: Keyring) -> tuple[str, bytes]:
        if self.key_path.exists():
            context = KeyStore.read(self.key_path, keyring).context
            if not context.startswith(CONTEXT_PREFIX):
                raise KeyringError(
                    f"{self.key_path} is a key store for {context!r}, not a document vault.",
                    hint="Point the vault at its own key store file.",
                )
            return context[len(CONTEXT_PREFIX) :], KeyStore.load(
                self.key_path, keyring, context=context
            )[1]
        if self.list_ids():
            raise KeyringError(
                f"The vault {self.root} holds documents but its key store {self.key_path} is "
                "missing; refusing to create a new key that could not read them.",
                code="KEYSTORE_MISSING",
                hint="Restore the key store from backup (or move the vault away to start over).",
            )
        vault_id = secrets.token_hex(16)
        self.key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _, key = KeyStore.create(self.key_path, keyring, context=CONTEXT_PREFIX + vault_id)
        return vault_id, key

    # -- documents ----------------------------------------------------------------------------

    def put(self, src: Path | BinaryIO, *, storage_id: str | None = None) -> StoredDocument:
        """Encrypt a file or a readable binary stream into the vault; returns what was stored.

        An explicit ``storage_id`` (8-128 of ``[A-Za-z0-9_-]``) lets the caller record the id
        before the write (crash safety); an existing document with that id is replaced.
        """
        sid = secrets.token_hex(16) if storage_id is None else _check_id(storage_id)
        if isinstance(src, str | os.PathLike):
            with open(src, "rb") as fh:
                return self._put_stream(fh, sid)
        return self._put_stream(src, sid)

    def _put_stream(self, src: BinaryIO, sid: str) -> StoredDocument:
        size, reader = _sized_reader(src)
        tmp = self.root / f"{_TMP_PREFIX}{secrets.token_hex(8)}{SUFFIX}"
        try:
            with open(tmp, "xb") as dst:
                os.fchmod(dst.fileno(), 0o600)
                encrypt_stream(
                    reader,  # type: ignore[arg-type]  # a read-only hashing file object
                    dst,
                    data_key=self._key,
                    object_id=self.vault_id,
                    name=sid,
                    key_id=KEY_ID,
                    size=size,
                )
                reader.check_exhausted()
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, self._path(sid))
            fsync_dir(self.root)
        except ValueError as exc:  # the source was shorter or longer than its size
            raise SecureError(
                f"The document changed while it was being stored ({exc}).",
                code="SOURCE_CHANGED",
                hint="Wait until the file has stopped changing, then ingest it again.",
            ) from None
        finally:
            tmp.unlink(missing_ok=True)
        return StoredDocument(sid, size, reader.hash.hexdigest())

    def open_bytes(self, storage_id: str) -> bytes:
        """Verify and decrypt a document (TamperedError if edited, renamed or swapped)."""
        path = self._path(_check_id(storage_id))
        try:
            container = Container.open(path)
        except FileNotFoundError:
            raise SecureError(
                f"The vault has no document {storage_id}.",
                code="VAULT_NOT_FOUND",
                hint="It may have been deleted; check the registry entry.",
            ) from None
        out = container.decrypt(self._key, expect_object_id=self.vault_id, expect_name=storage_id)
        data = bytes(out)
        out[:] = bytes(len(out))
        return data

    def delete(self, storage_id: str) -> bool:
        """Unlink a document; False if it was not there. Not an erasure (see the module doc)."""
        try:
            self._path(_check_id(storage_id)).unlink()
        except FileNotFoundError:
            return False
        fsync_dir(self.root)
        return True

    def exists(self, storage_id: str) -> bool:
        return self._path(_check_id(storage_id)).is_file()

    def list_ids(self) -> list[str]:
        """Storage ids of every complete document, sorted."""
        ids = []
        for entry in os.scandir(self.root):
            name = entry.name
            if name.endswith(SUFFIX) and _ID.fullmatch(name[: -len(SUFFIX)]) and entry.is_file():
                ids.append(name[: -len(SUFFIX)])
        return sorted(ids)

    def sweep_partial(self) -> int:
        """Remove temp containers a crash left behind (ciphertext only); call at start-up while
        no other process writes to this vault. Returns how many were removed."""
        removed = 0
        for entry in os.scandir(self.root):
            if entry.name.startswith(_TMP_PREFIX) and stat.S_ISREG(entry.stat().st_mode):
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
        return removed

    def _path(self, sid: str) -> Path:
        return self.root / f"{sid}{SUFFIX}"


def open_collection_key(path: Path, keyring: Keyring, *, context: str) -> bytes:
    """Load, or create on first use, the data key of a chunk collection (e.g. for
    :class:`secure.records.RecordCipher`), kept in a key store registered with the keyring.

    Create only when the collection is new: a missing store for an existing collection means
    its records can no longer be opened, and a new key will not bring them back.
    """
    path = Path(path)
    if path.exists():
        return KeyStore.load(path, keyring, context=context)[1]
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return KeyStore.create(path, keyring, context=context)[1]


def _check_id(storage_id: object) -> str:
    if not isinstance(storage_id, str) or not _ID.fullmatch(storage_id):
        raise ValueError("A storage id must be 8 to 128 characters of [A-Za-z0-9_-].")
    return storage_id


class _HashingReader:
    """A read-only view of the source that hashes every byte handed to the encryptor."""

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self.hash = hashlib.sha256()

    def readinto(self, view: memoryview) -> int:
        readinto = getattr(self._src, "readinto", None)
        if readinto is not None:
            got = readinto(view) or 0
        else:
            data = self._src.read(len(view))
            got = len(data)
            view[:got] = data
        self.hash.update(view[:got])
        return got

    def check_exhausted(self) -> None:
        if self._src.read(1):
            raise ValueError("the source grew while it was read")


def _sized_reader(src: BinaryIO) -> tuple[int, _HashingReader]:
    """(bytes left in ``src``, hashing reader). A stream that cannot tell its size is read
    into memory first (never into a temp file)."""
    try:
        fd = src.fileno()
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            return os.fstat(fd).st_size - src.tell(), _HashingReader(src)
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    seekable = getattr(src, "seekable", None)
    if seekable is not None and seekable():
        start = src.tell()
        end = src.seek(0, io.SEEK_END)
        src.seek(start)
        return end - start, _HashingReader(src)
    buffer = io.BytesIO(src.read())
    return len(buffer.getbuffer()), _HashingReader(buffer)
