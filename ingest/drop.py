"""The drop folder: which files are ready to ingest, and for which access group.

`drop/<group>/<any/sub/path>` belongs to `<group>`; `drop/public/…` is visible to everyone.
Files directly in `drop/`, in `drop/_failed/`, hidden files, editor lock files and partial
downloads are never picked up. A file is *ready* once its size and modification time have not
changed for ``settle_s`` seconds (a copy in progress is left for the next pass).

Symbolic links are never followed (see `ingest.safefs`): the scan reports each link it meets
(a file or a folder, at any level) as a :class:`Link` and never descends into one, files are
read through descriptors opened without following links and checked to be the file the scan
saw, and a quarantine never moves into or writes through a link.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import Changed, LinkRefused
from .safefs import OpenedFile, move_at, open_below, open_dir, parts_of, write_new

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
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) the scan saw; None: not scanned

    @property
    def root(self) -> Path:
        """The folder ``rel_path`` is relative to (the drop folder, for a scanned file)."""
        return self.path.parents[self.rel_path.count("/")]


@dataclass(frozen=True)
class Link:
    """A symbolic link met by the scan: reported, never followed (nor moved)."""

    rel_path: str
    group: str  # "" for a link directly in drop/ (e.g. a group folder replaced by a link)


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
    for entry in survey(drop):
        if isinstance(entry, Candidate):
            yield entry


def survey(drop: Path) -> Iterator[Candidate | Link]:
    """Every candidate file and every symbolic link below ``drop``, sorted by path; folders
    are walked through descriptors and a link is never descended into."""
    if not drop.is_dir():
        return
    root = drop.resolve()  # the configured folder itself may be a link (the operator's choice)
    for dirpath, dirnames, filenames, dirfd in os.fwalk(root):
        here = Path(dirpath)
        keep = []
        for name in sorted(dirnames + filenames):
            if here == root and name == FAILED_DIR:
                continue
            try:
                info = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            rel = (here / name).relative_to(root).as_posix()
            if stat.S_ISDIR(info.st_mode):
                if not name.startswith("."):
                    keep.append(name)
            elif is_ignored(name):
                continue
            elif stat.S_ISLNK(info.st_mode):
                yield Link(rel, group_of(rel) or "")
            elif stat.S_ISREG(info.st_mode):
                identity = (info.st_dev, info.st_ino)
                group = group_of(rel) or ""
                yield Candidate(drop / rel, rel, group, info.st_size, info.st_mtime, identity)
        dirnames[:] = keep


def is_settled(candidate: Candidate, *, now: float, settle_s: float) -> bool:
    """True when the file has not changed for ``settle_s`` seconds (and still exists as seen)."""
    try:
        info = candidate.path.lstat()
    except FileNotFoundError:
        return False
    unchanged = info.st_size == candidate.size and info.st_mtime == candidate.mtime
    return unchanged and now - info.st_mtime >= settle_s


def open_candidate(candidate: Candidate) -> OpenedFile:
    """Open a candidate without following links; :class:`Changed` if it is no longer the
    file the scan saw (replaced or gone since), :class:`LinkRefused` if a link is in the way."""
    try:
        opened = open_below(candidate.root, candidate.rel_path)
    except FileNotFoundError:
        raise Changed(f"{candidate.rel_path} is gone.") from None
    if candidate.identity is not None and opened.identity != candidate.identity:
        opened.close()
        raise Changed(f"{candidate.rel_path} was replaced while it was being ingested.")
    return opened


def keyed_digest(key: bytes, opened: OpenedFile) -> str:
    """The keyed content hash (HMAC-SHA256, hex) of an opened file."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    with opened.reader() as fh:
        while block := fh.read(1 << 20):
            mac.update(block)
    return mac.hexdigest()


def quarantine(drop: Path, candidate: Candidate, *, code: str, reason: str) -> Path:
    """Move a failed file to `drop/_failed/<rel_path>` with `<name>.reason.txt` beside it.

    Nothing is followed: both folders are opened one component at a time (the target's
    created as needed), the file must still be the one the scan saw, and the move and the note
    are made relative to the folders' descriptors. Raises :class:`LinkRefused` when a link is
    in the way (then nothing was moved or written), :class:`Changed` or FileNotFoundError when
    the file was replaced or is gone.
    """
    parts = parts_of(candidate.rel_path)
    source = open_dir(drop, parts[:-1])
    try:
        _check_still(source, parts[-1], candidate)
        target = open_dir(drop, [FAILED_DIR, *parts[:-1]], create=True)
        try:
            move_at(source, parts[-1], target, parts[-1])
            write_new(target, parts[-1] + ".reason.txt", f"{code}: {reason}\n".encode())
        finally:
            os.close(target)
    finally:
        os.close(source)
    return drop / FAILED_DIR / candidate.rel_path


def _check_still(dirfd: int, name: str, candidate: Candidate) -> None:
    info = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    if stat.S_ISLNK(info.st_mode):
        raise LinkRefused(candidate.rel_path)
    same = candidate.identity in (None, (info.st_dev, info.st_ino))
    if not stat.S_ISREG(info.st_mode) or not same:
        raise Changed(f"{candidate.rel_path} was replaced while it was being ingested.")
