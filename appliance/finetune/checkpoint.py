"""The encrypted files of one job: its examples and its latest checkpoint.

Both are serialised to bytes in memory and encrypted straight into a container of the job's own
:class:`~secure.vault.DocumentVault` (``<home>/finetune/jobs/<job>/``) under a data key of its
own (``keys/stores/finetune/job-<job>.json``, wrapped by the keyring); no plaintext file is ever
written, and the in-memory plaintext is zeroed once encrypted. A checkpoint replaces the previous
one atomically (temp container, fsync, rename), so a ``kill -9`` at any moment leaves the old or
the new checkpoint, never neither; temp ciphertext a kill left behind is swept on resume. When a
job ends, :meth:`JobFiles.shred` destroys the key: examples and checkpoints (and any backup of
them) are unreadable from then on.

Checkpoints are ``torch.save`` archives read back with ``weights_only=True`` (tensors, numbers,
strings, lists and dicts only; no pickled code), after the container's authentication.
"""

from __future__ import annotations

import ctypes
import io
import json
import shutil
import time
from pathlib import Path
from typing import Any

from secure.home import UnlockedHome
from secure.vault import DocumentVault

from ..conversation_keys import destroy_store, keyring_write
from ..errors import ApplianceError
from .examples import Example

EXAMPLES_ID = "examples"
CHECKPOINT_ID = "checkpoint"
FORMAT = 1


class JobFiles:
    def __init__(self, home: UnlockedHome, jobs_root: Path, job_id: str) -> None:
        self.home, self.job_id = home, job_id
        self.root = Path(jobs_root) / job_id
        self.key_path = home.layout.key_stores / "finetune" / f"job-{job_id}.json"
        self._vault: DocumentVault | None = None

    @property
    def vault(self) -> DocumentVault:
        if self._vault is None:
            keyring = self.home.keyring
            self._vault = keyring_write(
                keyring, lambda: DocumentVault(self.root, keyring, key_path=self.key_path)
            )
            self._vault.sweep_partial()
        return self._vault

    def exists(self) -> bool:
        return self.key_path.exists()

    # ----- examples --------------------------------------------------------------------------
    def save_examples(self, examples: list[Example], meta: dict[str, Any]) -> int:
        doc = {"format": FORMAT, "meta": meta, "examples": [e.to_json() for e in examples]}
        return self._put(EXAMPLES_ID, json.dumps(doc, separators=(",", ":")).encode())

    def load_examples(self) -> tuple[list[Example], dict[str, Any]]:
        doc = json.loads(self.vault.open_bytes(EXAMPLES_ID))
        if doc.get("format") != FORMAT:
            raise ApplianceError(
                f"Job {self.job_id} keeps its examples in another format.",
                code="JOB_FORMAT",
                hint="Start a new job with this release.",
            )
        return [Example.from_json(e) for e in doc["examples"]], doc["meta"]

    def has_examples(self) -> bool:
        return self.exists() and self.vault.exists(EXAMPLES_ID)

    # ----- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> tuple[int, float]:
        """Encrypt ``state``; returns (plaintext bytes, seconds taken)."""
        import torch

        started = time.perf_counter()
        buf = io.BytesIO()
        torch.save({"format": FORMAT, **state}, buf)
        size = self._put_stream(CHECKPOINT_ID, buf)
        return size, time.perf_counter() - started

    def load_checkpoint(self) -> dict[str, Any] | None:
        import torch

        if not self.exists() or not self.vault.exists(CHECKPOINT_ID):
            return None
        data = self.vault.open_bytes(CHECKPOINT_ID)
        state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ApplianceError(
                f"Job {self.job_id}'s checkpoint has another format.",
                code="JOB_FORMAT",
                hint="Start a new job with this release.",
            )
        return state

    # ----- helpers ---------------------------------------------------------------------------
    def _put(self, storage_id: str, data: bytes) -> int:
        return self._put_stream(storage_id, io.BytesIO(data))

    def _put_stream(self, storage_id: str, buf: io.BytesIO) -> int:
        buf.seek(0)
        try:
            return self.vault.put(buf, storage_id=storage_id).size
        finally:
            _zero(buf)

    def shred(self) -> None:
        """Destroy the job's key, then its files: examples and checkpoints are gone for good."""
        if self.key_path.exists():
            destroy_store(self.key_path, self.home.keyring)
        shutil.rmtree(self.root, ignore_errors=True)
        self._vault = None


def _zero(buf: io.BytesIO) -> None:
    view = buf.getbuffer()
    try:
        n = len(view)
        if n:
            ctypes.memset((ctypes.c_char * n).from_buffer(view), 0, n)
    finally:
        view.release()
