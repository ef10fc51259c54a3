"""Heartbeat files: how `appliance status` (another process) sees the server and the watcher.

A running `serve` or `ingest --watch` writes ``<home>/run/<role>.json`` atomically (pid, its
start time, the time of this write and a small ``info`` dict) every few seconds. A reader calls
it alive only when that pid is still the same process and the file was refreshed recently.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

Role = Literal["serve", "watch"]
ROLES: tuple[Role, ...] = ("serve", "watch")
RUN_DIR = "run"
DEFAULT_MAX_AGE_S = 90.0


@dataclass(frozen=True)
class Heartbeat:
    role: str
    alive: bool
    reason: str  # why not alive ("" when alive)
    pid: int | None = None
    started_at: float | None = None
    updated_at: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "alive": self.alive,
            "reason": self.reason,
            "pid": self.pid,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "info": self.info,
        }


def path_for(home: Path, role: str) -> Path:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    return home / RUN_DIR / f"{role}.json"


def publish(home: Path, role: Role, info: dict[str, Any], *, now: float | None = None) -> Path:
    """Write this process's heartbeat (atomically: a reader never sees half a file)."""
    target = path_for(home, role)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    me = psutil.Process()
    body = {
        "pid": me.pid,
        "started_at": me.create_time(),
        "updated_at": time.time() if now is None else now,
        "info": info,
    }
    tmp = target.with_name(f".{role}.{me.pid}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(body, out, default=str)
    os.replace(tmp, target)
    return target


def clear(home: Path, role: Role) -> None:
    """Remove this process's heartbeat (on a clean stop)."""
    target = path_for(home, role)
    try:
        if json.loads(target.read_text(encoding="utf-8")).get("pid") == os.getpid():
            target.unlink()
    except (OSError, ValueError):
        pass


def read(
    home: Path, role: Role, *, now: float | None = None, max_age_s: float = DEFAULT_MAX_AGE_S
) -> Heartbeat:
    """The last heartbeat of ``role``; ``alive`` only if its process runs and it is fresh."""
    now = time.time() if now is None else now
    try:
        body = json.loads(path_for(home, role).read_text(encoding="utf-8"))
        pid, started = int(body["pid"]), float(body["started_at"])
        updated = float(body["updated_at"])
        info = dict(body.get("info") or {})
    except FileNotFoundError:
        return Heartbeat(role, False, "not running (no heartbeat file)")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Heartbeat(role, False, f"unreadable heartbeat file ({type(exc).__name__})")
    if not _same_process(pid, started):
        reason = "not running (its process has exited)"
    elif now - updated > max_age_s:
        reason = f"stalled (no heartbeat for {now - updated:.0f} s)"
    else:
        reason = ""
    return Heartbeat(role, not reason, reason, pid, started, updated, info)


def _same_process(pid: int, started_at: float) -> bool:
    """True when ``pid`` runs and started when the heartbeat says (not a reused pid)."""
    try:
        return abs(psutil.Process(pid).create_time() - started_at) < 2.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


class Publisher:
    """Publishes a heartbeat every ``interval_s`` from a daemon thread, with the latest info.

    ``update(**info)`` merges new values; ``stop()`` ends the thread and removes the file.
    """

    def __init__(self, home: Path, role: Role, *, interval_s: float = 10.0) -> None:
        self.home, self.role, self.interval_s = home, role, interval_s
        self.info: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{role}", daemon=True)

    def start(self) -> Publisher:
        self.beat()
        self._thread.start()
        return self

    def update(self, **info: Any) -> None:
        with self._lock:
            self.info.update(info)
        self.beat()

    def beat(self) -> None:
        with self._lock:
            info = dict(self.info)
        with contextlib.suppress(OSError):  # a full disk must not stop the work it reports on
            publish(self.home, self.role, info)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        clear(self.home, self.role)


@contextmanager
def watch_heartbeat(
    home: Path, *, mode: str, interval_s: float = 10.0
) -> Iterator[Callable[[Callable[[], Any]], Callable[[], Any]]]:
    """For `ingest --watch`: publishes the ``watch`` heartbeat while the block runs and yields
    a wrapper that counts passes around the watcher's ``run_pass``."""
    publisher = Publisher(home, "watch", interval_s=interval_s)
    publisher.info.update(mode=mode, passes=0, busy=False)
    publisher.start()
    passes = 0

    def wrap(run_pass: Callable[[], Any]) -> Callable[[], Any]:
        def counted() -> Any:
            nonlocal passes
            started = time.time()
            publisher.update(busy=True, last_pass_started_at=started)
            result = run_pass()
            passes += 1
            publisher.update(
                busy=False,
                passes=passes,
                last_pass_at=time.time(),
                last_pass_seconds=round(time.time() - started, 3),
            )
            return result

        return counted

    try:
        yield wrap
    finally:
        publisher.stop()
