"""Where transient plaintext may live: a private directory on a memory file system.

Parsing needs real files (LibreOffice conversions, decrypted PDF copies, page images for OCR);
they go to a 0700 directory under /dev/shm so document plaintext never reaches a disk. Where no
memory file system exists, the system temp directory is used and :func:`memory_backed` says so
(`appliance status` reports it).
"""

from __future__ import annotations

import os
import tempfile
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
