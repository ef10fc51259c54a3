"""Imported training files, encrypted in the home like documents; removal crypto-shreds them.

Each data set is the original file's bytes in one container of its own
:class:`~secure.vault.DocumentVault` (``<home>/finetune/data/<id>/``), under a data key of its
own wrapped by the keyring in ``keys/stores/finetune/data-<id>.json``. The file is read once,
validated row by row in memory (:func:`.rows.parse_training_file`) and the very same bytes are
encrypted, so what is kept is exactly what was checked; its SHA-256 is recorded (the jobs and
adapters made from it name it). ``remove`` deletes the key store first: the ciphertext, and any
backup of it, can no longer be opened (the kek that wrapped the key is retired by ``keys
rotate`` + ``keys trim``), then the files and the record.
"""

from __future__ import annotations

import hashlib
import io
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secure.home import UnlockedHome
from secure.vault import DocumentVault

from ..conversation_keys import destroy_store, keyring_write
from ..errors import AlreadyExists, ApplianceError, InvalidInput, NotFound
from .rows import TrainingFile, parse_training_file
from .store import FinetuneDb

STORAGE_ID = "training-data"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str, what: str = "data set") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(
            f"Invalid {what} name {name!r}.",
            hint="Use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
        )
    return name


@dataclass(frozen=True)
class Dataset:
    id: str
    name: str
    sha256: str
    size: int
    counts: dict[str, int]
    created_at: int
    created_by: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Dataset:
        return cls(**row)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "sha256": self.sha256,
            "size": self.size,
            "counts": dict(self.counts),
            "created_at": self.created_at,
            "created_by": self.created_by,
        }


class TrainingData:
    """Add, list, open and crypto-shred the training files of one home."""

    def __init__(self, home: UnlockedHome, db: FinetuneDb, *, max_bytes: int) -> None:
        self.home, self.db, self.max_bytes = home, db, max_bytes
        self.root = db.root / "data"

    def add(self, source: Path, *, name: str, actor: str, now: int) -> Dataset:
        check_name(name)
        if self.db.dataset(name) is not None:
            raise AlreadyExists(
                f"A training data set named {name} exists.",
                hint="Choose another --name, or remove the old one first.",
            )
        data = self._read(source)
        parsed = parse_training_file(data)  # InvalidInput with the bad lines: nothing kept
        dataset = Dataset(
            id="ds-" + secrets.token_hex(8),
            name=name,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            counts=parsed.counts,
            created_at=now,
            created_by=actor,
        )
        self.home.record(
            "finetune.data.add",
            actor=actor,
            now=now,
            object=dataset.id,
            details={"name": name, "sha256": dataset.sha256, "rows": len(parsed.rows)},
        )
        try:
            self._vault(dataset.id, create=True).put(io.BytesIO(data), storage_id=STORAGE_ID)
            self.db.add_dataset(dataset.to_dict())
        except BaseException:
            self._shred(dataset.id)
            raise
        return dataset

    def _read(self, source: Path) -> bytes:
        try:
            with open(source, "rb") as fh:
                data = fh.read(self.max_bytes + 1)
        except OSError as exc:
            raise InvalidInput(f"Cannot read {source}: {exc.strerror}.") from None
        if len(data) > self.max_bytes:
            raise InvalidInput(
                f"{source} is larger than {self.max_bytes // 2**20} MiB.",
                hint="Split it, or raise finetune.max_data_mb.",
            )
        return data

    def list(self) -> list[Dataset]:
        return [Dataset.from_row(r) for r in self.db.datasets()]

    def get(self, name: str) -> Dataset:
        row = self.db.dataset(name)
        if row is None:
            raise NotFound(
                f"No training data set named {name}.",
                hint="See `appliance finetune data list`.",
            )
        return Dataset.from_row(row)

    def open(self, dataset: Dataset) -> TrainingFile:
        """Decrypt and parse the data set (in memory); its hash is checked against the record."""
        data = self._vault(dataset.id, create=False).open_bytes(STORAGE_ID)
        if hashlib.sha256(data).hexdigest() != dataset.sha256:
            raise ApplianceError(
                f"Training data set {dataset.name} does not match its recorded hash.",
                code="TAMPERED",
                hint="Remove it and import the file again.",
            )
        return parse_training_file(data)

    def remove(self, name: str, *, actor: str, now: int) -> Dataset:
        dataset = self.get(name)
        busy = [
            j["id"]
            for j in self.db.jobs_using(dataset.id)
            if j["state"] not in ("finished", "cancelled", "failed")
        ]
        if busy:
            raise ApplianceError(
                f"Training data set {name} is used by unfinished job(s) {', '.join(busy)}, "
                "which keep encrypted examples made from it.",
                code="IN_USE",
                hint="Let them finish or run `appliance finetune cancel JOB` first.",
            )
        self.home.record(
            "finetune.data.remove",
            actor=actor,
            now=now,
            object=dataset.id,
            details={"name": name, "sha256": dataset.sha256},
        )
        self._shred(dataset.id)
        self.db.delete_dataset(dataset.id)
        return dataset

    # ----- storage ---------------------------------------------------------------------------
    def _key_path(self, dataset_id: str) -> Path:
        return self.home.layout.key_stores / "finetune" / f"data-{dataset_id}.json"

    def _vault(self, dataset_id: str, *, create: bool) -> DocumentVault:
        key_path = self._key_path(dataset_id)
        if not create and not key_path.exists():
            raise ApplianceError(
                f"The key of training data set {dataset_id} is missing.",
                code="KEYSTORE_MISSING",
                hint="Restore keys/stores/finetune from backup, or import the file again.",
            )
        keyring = self.home.keyring
        return keyring_write(
            keyring, lambda: DocumentVault(self.root / dataset_id, keyring, key_path=key_path)
        )

    def _shred(self, dataset_id: str) -> None:
        key_path = self._key_path(dataset_id)
        if key_path.exists():
            destroy_store(key_path, self.home.keyring)
        shutil.rmtree(self.root / dataset_id, ignore_errors=True)
