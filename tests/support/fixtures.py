"""Fixture factory and scan helpers around the tiny test model (imported by conftest files).

Building the tiny model costs a few seconds (tokenizer training, ``save_pretrained``), so a test
module or session builds it once::

    from tests.support.fixtures import make_tiny_model_fixture
    tiny_model = make_tiny_model_fixture(scope="session")
    canary_model = make_tiny_model_fixture(scope="session", with_canary=True, name="canary_model")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.tiny_model import (
    build_tiny_model,
    canary_patterns,
    new_canary,
    read_model_files,
)


@dataclass(frozen=True)
class TinyModel:
    """A built tiny model directory and, when planted, its canary and the patterns to scan."""

    path: Path
    canary: bytes | None = None
    patterns: frozenset[bytes] = field(default_factory=frozenset)

    def files(self) -> dict[str, bytearray]:
        """Fresh bytearrays of every file, as `secure/` would hand them to the loader."""
        return read_model_files(self.path)


def build_tiny(out_dir: Path, *, seed: int = 0, with_canary: bool = False) -> TinyModel:
    """Build a tiny model (optionally with a fresh random canary) as a :class:`TinyModel`."""
    canary = new_canary() if with_canary else None
    path = build_tiny_model(out_dir, seed=seed, canary=canary)
    patterns = canary_patterns(canary) if canary is not None else frozenset()
    return TinyModel(path=path, canary=canary, patterns=patterns)


def make_tiny_model_fixture(
    *, scope: Any = "session", seed: int = 0, with_canary: bool = False, name: str | None = None
) -> Callable[..., TinyModel]:
    """A pytest fixture that builds one tiny model per ``scope`` under a pytest temp dir."""

    @pytest.fixture(scope=scope, name=name)
    def _tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
        out_dir = tmp_path_factory.mktemp("tiny-model") / "model"
        return build_tiny(out_dir, seed=seed, with_canary=with_canary)

    return _tiny_model


@dataclass(frozen=True)
class Redirected:
    """Folders for a D1 child process whose every writable location is redirected."""

    work: Path
    home: Path
    tmp: Path
    env: dict[str, str]


def redirected_child(tmp_path: Path) -> Redirected:
    """``work``, a fake ``HOME`` and ``TMPDIR`` under ``tmp_path``, and the child's environment
    pointing every cache (XDG, Hugging Face, torch) into them; the repository on PYTHONPATH."""
    work, fake_home, tmpdir = tmp_path / "work", tmp_path / "user-home", tmp_path / "tmp"
    for d in (work, fake_home, tmpdir):
        d.mkdir()
    env = {
        **os.environ,
        "HOME": str(fake_home),
        "TMPDIR": str(tmpdir),
        "XDG_CACHE_HOME": str(fake_home / ".cache"),
        "HF_HOME": str(fake_home / "hf"),
        "TORCH_HOME": str(fake_home / "torch"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    return Redirected(work, fake_home, tmpdir, env)


def iter_files(roots: Iterable[Path]) -> Iterator[Path]:
    """Every regular file under ``roots`` (missing roots are skipped, links not followed)."""
    for root in roots:
        if not root.exists():
            continue
        for dirpath, _dirs, names in os.walk(root):
            for file_name in names:
                path = Path(dirpath) / file_name
                if path.is_file() and not path.is_symlink():
                    yield path


def file_contains(path: Path, patterns: Iterable[bytes], *, block: int = 16 * 2**20) -> bool:
    """Whether ``path`` holds any pattern; streams in blocks so huge files are scanned too."""
    wanted = [p for p in patterns if p]
    if not wanted or path.stat().st_size == 0:
        # An empty file holds nothing, and must not be opened: Milvus Lite's `.<file>.db.lock`
        # is empty and POSIX-locked by the appliance's process; closing any descriptor of it in
        # that process drops the lock, and the Lite server stops (milvus_lite/server.py).
        return False
    overlap = max(map(len, wanted)) - 1
    tail = b""
    with path.open("rb") as handle:
        while chunk := handle.read(block):
            window = tail + chunk
            if any(p in window for p in wanted):
                return True
            tail = window[-overlap:] if overlap else b""
    return False


def find_patterns(roots: Iterable[Path], patterns: Iterable[bytes]) -> list[Path]:
    """Files under ``roots`` that contain any of ``patterns`` (the D1 canary scan)."""
    wanted = list(patterns)
    hits = []
    for path in iter_files(roots):
        try:
            if file_contains(path, wanted):
                hits.append(path)
        except OSError:
            continue  # vanished or unreadable (another process's socket, a permission)
    return hits
