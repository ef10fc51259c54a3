"""The web UI's upload cache (issue 12): where it lives, that it starts empty and private, that
old files go, and that a cache on disk is said plainly (log and status warning)."""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import pytest

from appliance.errors import ConfigError
from appliance.ops.status import verdict
from tests.ui.kit import fast_settings
from ui.cache import UiCache, location, on_memory_fs


def test_cache_lives_in_a_private_memory_folder_emptied_at_start(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "home")
    legacy = tmp_path / "home" / "tmp" / "ui"  # where earlier versions kept it, on disk
    (legacy / "deep_links" / "x").mkdir(parents=True)
    (legacy / "deep_links" / "x" / "state.json").write_text("rendered answers")
    first = UiCache.open(settings)
    assert not legacy.exists()
    try:
        assert first.path.parent == Path("/dev/shm") and first.in_memory
        assert on_memory_fs(first.path) and not on_memory_fs(tmp_path)
        assert stat.S_IMODE(first.path.stat().st_mode) == 0o700
        (first.path / "left-by-a-crash").mkdir()
        (first.path / "left-by-a-crash" / "upload.txt").write_text("plaintext")
        (first.path / "partial").write_text("plaintext")
        again = UiCache.open(settings)  # a restart after a crash
        assert again.path == first.path and list(again.path.iterdir()) == []
    finally:
        first.close()
    assert not first.path.exists()


def test_configured_folder_gets_a_private_subfolder(tmp_path: Path) -> None:
    shared = tmp_path / "tmpfs"
    shared.mkdir()
    (shared / "other.txt").write_text("not ours")
    settings = fast_settings(tmp_path / "home", serve={"ui_cache_dir": str(shared)})
    cache = UiCache.open(settings)
    assert cache.path.parent == shared and cache.path.name.startswith("kapp-ui-")
    cache.close()
    assert (shared / "other.txt").read_text() == "not ours"


def test_without_dev_shm_the_cache_is_on_disk_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home = tmp_path / "home"
    settings = fast_settings(home)
    with caplog.at_level(logging.WARNING, logger="ui.cache"):
        cache = UiCache.open(settings, shm=tmp_path / "no-shm")
    assert cache.path == home / "tmp" / "ui" and not cache.in_memory
    assert "not a memory file system" in caplog.text and "serve.ui_cache_dir" in caplog.text
    levels = {
        "service": {"models": [], "tls": {}, "milvus": {}, "audit": {"writable": True}},
        "component": {"disks": []},
        "node": {"server": {"ui_cache": cache.info()}},
    }
    problems = verdict(levels)["problems"]
    assert [p["code"] for p in problems] == ["UI_CACHE_ON_DISK"]
    cache.close()


def test_a_folder_planted_by_someone_else_is_refused(tmp_path: Path) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    home = tmp_path / "home"
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.symlink(target, location(home, None, shm=shm))
    with pytest.raises(ConfigError, match="not a folder owned by this user"):
        UiCache.open(fast_settings(home), shm=shm)


def test_sweep_deletes_old_files_and_empty_folders_only(tmp_path: Path) -> None:
    cache = UiCache(tmp_path / "cache", in_memory=True, max_age_s=60)
    (cache.path / "abc").mkdir(parents=True)
    old, partial = cache.path / "abc" / "report.pdf", cache.path / "tmpupload"
    old.write_text("x")
    partial.write_text("y")
    now = time.time()
    assert cache.sweep(now=now) == 0 and old.exists()
    assert cache.sweep(now=now + 61) == 2
    assert not old.exists() and not partial.exists()
    cache.sweep(now=now + 200)  # the emptied folder goes once it is old too
    assert list(cache.path.iterdir()) == []
