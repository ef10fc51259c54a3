"""Where transient plaintext may live: a private directory on a memory file system.

Parsing needs real files (LibreOffice conversions, decrypted PDF copies, page images for OCR);
they go to a 0700 directory under /dev/shm so document plaintext never reaches a disk. Where no
memory file system exists, the system temp directory is used and :func:`memory_backed` says so
(`appliance status` reports it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SHM = Path("/dev/shm")  # noqa: S108 - deliberately memory-backed; subdirectories are 0700


def memory_backed() -> bool:
    return SHM.is_dir() and os.access(SHM, os.W_OK | os.X_OK)


def private_scratch(prefix: str, *, require_memory: bool = False) -> Path:
    """A new 0700 directory, on /dev/shm when available."""
    if memory_backed():
        return Path(tempfile.mkdtemp(prefix=prefix, dir=SHM))
    if require_memory:
        from .errors import IngestError

        raise IngestError(
            "This needs a memory file system at /dev/shm so that document "
            "plaintext never touches disk.",
            code="no-tmpfs",
        )
    return Path(tempfile.mkdtemp(prefix=prefix))


@contextmanager
def scratch_copy(rel_path: str, data: bytes) -> Iterator[Path]:
    """A private memory-backed folder holding ``data`` at ``rel_path`` (new 0600 files, no
    link followed), removed with everything in it on exit; yields the folder."""
    from .safefs import open_dir, parts_of, write_new

    root = private_scratch("kapp-copy-", require_memory=True)
    try:
        parts = parts_of(rel_path)
        folder = open_dir(root, parts[:-1], create=True, mode=0o700)
        try:
            write_new(folder, parts[-1], data, mode=0o600)
        finally:
            os.close(folder)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
