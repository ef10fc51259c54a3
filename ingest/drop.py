"""The drop folder: which files are ready to ingest, and for which access group.

`drop/<group>/<any/sub/path>` belongs to `<group>`; `drop/public/…` is visible to everyone.
Files directly in `drop/`, in `drop/_failed/`, hidden files, editor lock files and partial
downloads are never picked up. A file is *ready* once its size and modification time have not
changed for ``settle_s`` seconds (a copy in progress is left for the next pass).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FAILED_DIR = "_failed"
GROUP_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_PARTIAL_SUFFIXES = (".part", ".partial", ".crdownload", ".tmp", ".download", ".swp")


@dataclass(frozen=True)
class Candidate:
    path: Path  # absolute
    rel_path: str  # POSIX path below the drop folder: "finance/q3/budget.xlsx"
    group: str  # first path component, validated
    size: int
    mtime: float


def is_ignored(name: str) -> bool:
    lower = name.lower()
    return name.startswith((".", "~$", "~")) or lower.endswith(_PARTIAL_SUFFIXES)


def group_of(rel_path: str) -> str | None:
    """The access group of a drop-relative path, or None when it lies directly in drop/."""
    parts = rel_path.split("/")
    return parts[0] if len(parts) > 1 else None


def valid_group(name: str) -> bool:
    return bool(GROUP_RE.match(name)) and name != FAILED_DIR


def scan(drop: Path) -> Iterator[Candidate]:
    """Every candidate file below ``drop`` (not checked for stability), sorted by path."""
    if not drop.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(drop):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and not (here == drop and d == FAILED_DIR)
        )
        for name in sorted(filenames):
            if is_ignored(name):
                continue
            path = here / name
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            if not path.is_file() or path.is_symlink():
                continue
            rel = path.relative_to(drop).as_posix()
            yield Candidate(path, rel, group_of(rel) or "", info.st_size, info.st_mtime)


def is_settled(candidate: Candidate, *, now: float, settle_s: float) -> bool:
    """True when the file has not changed for ``settle_s`` seconds (and still exists as seen)."""
    try:
        info = candidate.path.stat()
    except FileNotFoundError:
        return False
    unchanged = info.st_size == candidate.size and info.st_mtime == candidate.mtime
    return unchanged and now - info.st_mtime >= settle_s


def quarantine(drop: Path, candidate: Candidate, *, code: str, reason: str) -> Path:
    """Move a failed file to `drop/_failed/<rel_path>` with `<name>.reason.txt` beside it."""
    target = drop / FAILED_DIR / candidate.rel_path
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    os.replace(candidate.path, target)
    note = target.with_name(target.name + ".reason.txt")
    note.write_text(f"{code}: {reason}\n", encoding="utf-8")
    return target
