"""Reading, moving and writing below a folder that others can write to, never following links.

The drop folder is a share: whoever can write to it can replace any file or folder in it by a
symbolic link, at any moment (between a scan and a read, too). So a path below such a root is
never handed to the operating system whole: each folder is opened one component at a time with
``O_NOFOLLOW | O_DIRECTORY`` relative to the one before it, the file is opened with
``O_NOFOLLOW`` relative to its folder and checked to be a regular file on its descriptor, and
from then on only the descriptors are used (reads, renames, unlinks and new files are made
relative to the folder's descriptor). A link anywhere on the way raises :class:`LinkRefused`;
nothing is followed, moved or written through it. The root itself is the operator's
configuration and is opened normally.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import LinkRefused, Rejected

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO must not block
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def parts_of(rel_path: str) -> list[str]:
    """The components of a relative POSIX path; ValueError for empty, ``.`` or ``..`` parts."""
    parts = rel_path.split("/")
    if any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise ValueError(f"Not a plain relative path: {rel_path!r}.")
    return parts


def open_dir(root: Path, parts: Sequence[str], *, create: bool = False, mode: int = 0o777) -> int:
    """A descriptor of ``root/parts…``, each part opened without following a link (created
    with ``mode`` when ``create`` and missing). The caller closes it."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            below = _child_dir(fd, part, "/".join(parts[: i + 1]), create, mode)
            os.close(fd)
            fd = below
    except BaseException:
        os.close(fd)
        raise
    return fd


def _child_dir(fd: int, name: str, shown: str, create: bool, mode: int) -> int:
    if name in ("", ".", ".."):
        raise ValueError(f"Not a plain folder name: {name!r}.")
    try:
        return os.open(name, _DIR, dir_fd=fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError:
        _raise_if_link(fd, name, shown)
        raise
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, mode, dir_fd=fd)
    try:
        return os.open(name, _DIR, dir_fd=fd)
    except OSError:
        _raise_if_link(fd, name, shown)  # a link put there between the mkdir and the open
        raise


def _raise_if_link(dirfd: int, name: str, shown: str) -> None:
    with contextlib.suppress(OSError):
        if stat.S_ISLNK(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode):
            raise LinkRefused(shown)


@dataclass
class OpenedFile:
    """A regular file opened without following links, with its folder's descriptor (for a
    rename or unlink of this very name) and the ``fstat`` of what was opened."""

    fd: int
    dirfd: int
    name: str
    rel_path: str
    info: os.stat_result

    @property
    def identity(self) -> tuple[int, int]:
        return (self.info.st_dev, self.info.st_ino)

    def reader(self) -> BinaryIO:
        """A buffered reader of the opened file from its start (its own descriptor)."""
        fd = os.dup(self.fd)
        os.lseek(fd, 0, os.SEEK_SET)
        return os.fdopen(fd, "rb")

    def read_all(self) -> bytes:
        with self.reader() as fh:
            return fh.read()

    def unlink_if_same(self) -> bool:
        """Remove the file's name if it still names the opened file; False if it does not."""
        try:
            now = os.stat(self.name, dir_fd=self.dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if (now.st_dev, now.st_ino) != self.identity:
            return False
        os.unlink(self.name, dir_fd=self.dirfd)
        return True

    def close(self) -> None:
        for fd in (self.fd, self.dirfd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> OpenedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_below(root: Path, rel_path: str) -> OpenedFile:
    """Open the regular file ``root/rel_path`` without following a link at any level.

    Raises :class:`LinkRefused` for a link, :class:`Rejected` (``unsupported``) for something
    that is not a regular file, FileNotFoundError when it is gone.
    """
    parts = parts_of(rel_path)
    dirfd = open_dir(root, parts[:-1])
    try:
        fd = os.open(parts[-1], _FILE, dir_fd=dirfd)
    except OSError:
        try:
            _raise_if_link(dirfd, parts[-1], rel_path)
        finally:
            os.close(dirfd)
        raise
    opened = OpenedFile(fd, dirfd, parts[-1], rel_path, os.fstat(fd))
    if not stat.S_ISREG(opened.info.st_mode):
        opened.close()
        raise Rejected(f"{rel_path} is not a regular file.", code="unsupported")
    return opened


def move_at(src_dirfd: int, src_name: str, dst_dirfd: int, dst_name: str) -> None:
    """Rename between two opened folders (an existing target name is replaced, not followed)."""
    os.replace(src_name, dst_name, src_dir_fd=src_dirfd, dst_dir_fd=dst_dirfd)


def write_new(dirfd: int, name: str, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``name`` in an opened folder: a new temp file (``O_EXCL | O_NOFOLLOW``) renamed
    over it, so an existing link of that name is replaced, never written through."""
    tmp = f".{name[:64]}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, _NEW, mode, dir_fd=dirfd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.replace(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dirfd)
        raise
    finally:
        os.close(fd)


__all__ = ["OpenedFile", "move_at", "open_below", "open_dir", "parts_of", "write_new"]
