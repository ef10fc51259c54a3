"""Where Gradio keeps uploads between the upload and the "Submit" click: memory, private, brief.

Gradio writes every uploaded file into its cache folder (``GRADIO_TEMP_DIR``, read when the
components and the app are built) before any event handler sees it. That folder is a private
0700 sub-folder of ``/dev/shm`` (a memory file system), or of ``serve.ui_cache_dir``; only when
neither can be used does it fall back to ``<home>/tmp/ui`` on disk, which is logged and shown as
a status warning (``UI_CACHE_ON_DISK``). The folder is emptied when the UI starts (and the
on-disk ``<home>/tmp/ui`` of earlier versions, deep links included, is removed), files older
than ``serve.ui_upload_max_age_s`` (uploads never submitted, abandoned partial uploads) are
deleted by a sweeper thread, and the folder is removed when the server shuts down.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from appliance.errors import ConfigError
from ingest.scratch import SHM

log = logging.getLogger(__name__)
MEMORY_FS = frozenset({"tmpfs", "ramfs"})


@dataclass
class UiCache:
    path: Path
    in_memory: bool
    max_age_s: float
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @classmethod
    def open(cls, settings: Any, *, shm: Path = SHM) -> UiCache:
        """Create (or empty) this home's cache folder; log a warning when it is on disk."""
        path = location(settings.home, settings.serve.ui_cache_dir, shm=shm)
        prepare(path)
        legacy = Path(settings.home) / "tmp" / "ui"
        if path != legacy and legacy.is_dir() and not legacy.is_symlink():
            shutil.rmtree(legacy, ignore_errors=True)  # earlier versions' cache, on disk
        cache = cls(path, on_memory_fs(path), float(settings.serve.ui_upload_max_age_s))
        if not cache.in_memory:
            log.warning(
                "The web UI keeps uploads in %s, which is not a memory file system: uploaded "
                "plaintext touches the disk until it is submitted or %ss old. Set "
                "serve.ui_cache_dir to a tmpfs folder.",
                path,
                int(cache.max_age_s),
            )
        return cache

    def info(self) -> dict[str, Any]:
        """For the server's heartbeat and `appliance status`."""
        return {"path": str(self.path), "in_memory": self.in_memory, "max_age_s": self.max_age_s}

    def sweep(self, *, now: float) -> int:
        """Delete files changed more than ``max_age_s`` before ``now``, then empty folders;
        returns how many files went."""
        removed = 0
        for dirpath, dirs, names in os.walk(self.path, topdown=False):
            for name in names:
                removed += _remove_if_old(Path(dirpath) / name, now - self.max_age_s)
            for name in dirs:
                _rmdir_if_old(Path(dirpath) / name, now - self.max_age_s)
        return removed

    def start(self) -> UiCache:
        """Sweep in a background thread until :meth:`close`."""
        interval = max(0.5, min(30.0, self.max_age_s / 4))

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.sweep(now=time.time())
                except OSError as exc:  # the sweeper must outlive a vanished file
                    log.warning("Sweeping the web UI cache %s failed: %s", self.path, exc)

        self._thread = threading.Thread(target=loop, name="ui-cache-sweeper", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the sweeper and remove the folder with everything in it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        shutil.rmtree(self.path, ignore_errors=True)


def location(home: Path, configured: Path | None, *, shm: Path = SHM) -> Path:
    """The cache folder: a sub-folder of ``configured``, else of /dev/shm, else <home>/tmp/ui.
    The sub-folder's name is fixed per home, so a restart empties what a crash left."""
    name = "kapp-ui-" + hashlib.sha256(str(Path(home).resolve()).encode()).hexdigest()[:16]
    if configured is not None:
        return Path(configured) / name
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm / name
    return Path(home) / "tmp" / "ui"


def prepare(path: Path) -> None:
    """``path`` as an empty 0700 folder of this user (refused if someone else made it)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.mkdir(path, 0o700)
        return
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise ConfigError(
            f"The web UI cache folder {path} exists but is not a folder owned by this user.",
            hint="Remove it, or set serve.ui_cache_dir to another folder.",
        )
    os.chmod(path, 0o700)
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def on_memory_fs(path: Path) -> bool:
    """Whether ``path`` lies on tmpfs/ramfs (the longest matching mount point decides)."""
    target = str(Path(path).resolve())
    best, fstype = "", ""
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint.rstrip("/") or "/"
        inside = target == mount or target.startswith(mount + "/") or mount == "/"
        if inside and len(mount) >= len(best):
            best, fstype = mount, part.fstype
    return fstype in MEMORY_FS


def _remove_if_old(path: Path, before: float) -> int:
    try:
        if os.lstat(path).st_ctime < before:
            path.unlink()
            return 1
    except FileNotFoundError:
        pass
    return 0


def _rmdir_if_old(path: Path, before: float) -> None:
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            path.unlink()
        elif st.st_mtime < before:
            path.rmdir()  # only when empty; a folder still in use stays
    except OSError:
        pass
