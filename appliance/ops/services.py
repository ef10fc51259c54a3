"""The service level: Milvus, the document registry, the watcher, models, audit log, TLS."""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ingest.drop import scan
from ingest.errors import IngestError
from ingest.reconcile import quick_check
from secure.errors import SecureError

from ..errors import ApplianceError
from .runtime_state import Heartbeat

DAY = 86_400
TLS_WARN_DAYS = 14
MAX_QUEUE_SCAN = 100_000


def redact_uri(uri: str) -> str:
    """The URI without any user:password part."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def milvus_status(settings: Any, knowledge: Any, serve: Heartbeat) -> dict[str, Any]:
    """Reachable and row count; a Milvus Lite file held by a running server is reported from
    that server's heartbeat (only one process may open a Lite file)."""
    uri = settings.milvus_uri
    lite = "://" not in uri
    base = {
        "uri": redact_uri(uri),
        "kind": "lite" if lite else "server",
        "collection": settings.milvus.collection,
    }
    if lite and serve.alive and serve.pid != os.getpid():
        held = serve.info.get("milvus")
        if isinstance(held, dict):
            return {**base, **held, "source": f"server heartbeat (pid {serve.pid})"}
        return {**base, "reachable": None, "note": f"held by the server (pid {serve.pid})"}
    if knowledge is None:
        return {**base, "reachable": None, "note": "not checked"}
    return {**base, **milvus_reading(knowledge)}


def dense_memory_status(settings: Any, knowledge: Any, serve: Heartbeat) -> dict[str, Any]:
    """The in-memory dense index (`retrieval.dense_memory`): it lives in the server, so another
    process reads it from the server's heartbeat."""
    from ..wiring import dense_memory_wanted

    if not dense_memory_wanted(settings):
        mode = settings.retrieval.dense_memory
        return {"state": "off", "reason": f"retrieval.dense_memory = {mode}"}
    memory = getattr(knowledge, "__dict__", {}).get("dense_memory")
    status = memory.status() if memory is not None else {}
    if status.get("state", "not started") != "not started":
        return status
    if serve.alive and serve.pid != os.getpid():
        held = serve.info.get("dense_memory")
        if isinstance(held, dict):
            return {**held, "source": f"server heartbeat (pid {serve.pid})"}
    return {"state": "not loaded", "reason": "`appliance serve` loads it at start"}


def query_path_status(settings: Any, knowledge: Any, serve: Heartbeat) -> str:
    """How questions are embedded ("traced", or "eager: why"): the server's, from its
    heartbeat, else this process's embedder if it has loaded one."""
    if not settings.embedding.trace_queries:
        return "eager: embedding.trace_queries = false"
    if serve.alive and serve.pid != os.getpid() and isinstance(serve.info.get("query_path"), str):
        return str(serve.info["query_path"])
    embedder = getattr(knowledge, "__dict__", {}).get("embedder")
    return str(getattr(embedder, "query_path", "not checked: `appliance serve` checks it at start"))


def milvus_reading(knowledge: Any) -> dict[str, Any]:
    """Reachable, its row count and whether that agrees with the registry (a Milvus data
    directory restored from an older backup does not); the error when it does not answer."""
    try:
        check = quick_check(knowledge.registry, knowledge.store)
    except (IngestError, ApplianceError) as exc:
        return {"reachable": False, "error": exc.diagnostics()}
    out: dict[str, Any] = {"reachable": True, "rows": check.rows, "expected_rows": check.expected}
    if not check.agrees:
        out["disagrees"] = check.message()
    return out


def documents_status(knowledge: Any) -> dict[str, Any]:
    if knowledge is None:
        return {}
    counts = Counter(d.status for d in knowledge.registry.documents())
    return {status: counts.get(status, 0) for status in ("indexed", "failed", "indexing")}


def ingestion_status(settings: Any, watch: Heartbeat) -> dict[str, Any]:
    """The watcher's liveness and the files waiting in the drop folder."""
    since = watch.info.get("last_pass_started_at") if watch.alive else None
    return {
        "watcher": {
            "alive": watch.alive,
            "pid": watch.pid,
            "reason": watch.reason,
            "passes": watch.info.get("passes"),
            "last_pass_at": watch.info.get("last_pass_at"),
        },
        "mode": settings.ingest.mode,
        "queue": pending_files(settings.drop_dir, settings.ingest.mode, since=since),
    }


def pending_files(drop: Path, mode: str, *, since: float | None) -> int:
    """Inbox mode: every file still in the drop folder waits (done ones move to the vault).
    Mirror mode: files changed after the watcher's last pass began (all of them, unknown)."""
    waiting = 0
    for n, candidate in enumerate(scan(drop)):
        if n >= MAX_QUEUE_SCAN:
            break
        if mode == "inbox" or since is None or candidate.mtime >= since:
            waiting += 1
    return waiting


def model_entries(
    app: Any, *, now: int, loaded: Iterable[str] | None, verify: bool = False
) -> list[dict[str, Any]]:
    """Each installed model: unlockable or locked with the reason, policy days left, loaded."""
    host = app.secure.host()
    serving = set(loaded) if loaded is not None else None
    rows = []
    for name in app.models.installed():
        try:
            s = app.models.status(name, now=now, host=host, check_integrity=verify)
        except SecureError as exc:
            rows.append(
                {
                    "name": name,
                    "state": "locked",
                    "reason_code": exc.code,
                    "reason": exc.diagnostics(),
                    "loaded": False,
                }
            )
            continue
        rows.append(model_entry(s, now=now, serving=serving))
    return rows


def model_entry(s: Any, *, now: int, serving: set[str] | None) -> dict[str, Any]:
    left = (s.valid_until - now) / DAY if s.valid_until is not None else None
    return {
        "name": s.name,
        "state": "unlockable" if s.unlockable else "locked",
        "loaded": None if serving is None else s.name in serving,
        "reason_code": s.reason_code,
        "reason": s.reason,
        "policy": s.policy_id,
        "valid_until": s.valid_until,
        "days_left": None if left is None else round(left, 1),
        "binding": s.binding,
        "integrity": "ok" if s.integrity_ok else "FAILED",
    }


def audit_status(path: Path) -> dict[str, Any]:
    """Whether the audit log can be appended to (file and directory permissions, free space)."""
    target = path if path.exists() else path.parent
    writable = target.exists() and os.access(target, os.W_OK)
    entry: dict[str, Any] = {"path": str(path), "writable": writable}
    if target.exists():
        st = os.statvfs(target)
        entry["fs_free"] = st.f_bavail * st.f_frsize
        entry["writable"] = writable and entry["fs_free"] > 1 << 20
    if not entry["writable"]:
        entry["reason"] = "not writable" if not writable else "less than 1 MiB free"
    return entry


def tls_status(cert: Path | None, *, now: int) -> dict[str, Any]:
    if cert is None:
        return {"configured": False, "state": "none (plain HTTP)"}
    from cryptography import x509

    try:
        parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError) as exc:
        return {"configured": True, "path": str(cert), "state": "unreadable", "reason": str(exc)}
    until = parsed.not_valid_after_utc
    left = (until.timestamp() - now) / DAY
    state = "expired" if left <= 0 else "expiring" if left < TLS_WARN_DAYS else "ok"
    return {
        "configured": True,
        "path": str(cert),
        "subject": parsed.subject.rfc4514_string(),
        "not_after": until.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "days_left": round(left, 1),
        "state": state,
    }
