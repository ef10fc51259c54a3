"""`collect_status`: the four levels (component, service, node, task) as plain dicts.

Used by `appliance status`, the admin UI page and `/readyz`. Every reading is taken at the
``now`` passed in; nothing here writes (the heartbeats are written by the processes they
describe, see :mod:`appliance.ops.runtime_state`).
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from typing import Any

import psutil

from .. import __version__
from ..errors import ApplianceError
from .components import component_level
from .runtime_state import DEFAULT_MAX_AGE_S, ROLES, Heartbeat, read
from .services import (
    audit_status,
    dense_memory_status,
    documents_status,
    ingestion_status,
    milvus_reading,
    milvus_status,
    model_entries,
    query_path_status,
    redact_uri,
    tls_status,
)
from .tasks import TaskStore

RECENT_ROWS = 10
DISK_FULL_PERCENT = 90.0
POLICY_WARN_DAYS = 14.0


def collect_status(
    app: Any,
    knowledge: Any,
    *,
    now: int,
    task_store: TaskStore,
    loaded: Iterable[str] | None = None,
    verify_models: bool = False,
    cpu_interval_s: float = 0.1,
) -> dict[str, Any]:
    """The four levels plus an ``overall`` verdict with its problems.

    ``loaded``: names of models loaded now when the caller is the server; otherwise they are
    read from the server's heartbeat (``info["models"]``). ``verify_models`` re-hashes every
    model file (slow for large models; `appliance model verify` does the same for one).
    """
    settings = app.settings
    beats = heartbeats(settings, now=now)
    if loaded is None and beats["serve"].alive:
        loaded = loaded_from(beats["serve"])
    service = {
        "milvus": milvus_status(settings, knowledge, beats["serve"]),
        "dense_memory": dense_memory_status(settings, knowledge, beats["serve"]),
        "query_path": query_path_status(settings, knowledge, beats["serve"]),
        "documents": documents_status(knowledge),
        "ingestion": ingestion_status(settings, _watcher(beats)),
        "models": model_entries(app, now=now, loaded=loaded, verify=verify_models),
        "audit": audit_status(app.secure.layout.audit),
        "tls": tls_status(settings.serve.tls_cert, now=now),
    }
    levels: dict[str, Any] = {
        "at": now,
        "component": component_level(settings, beats, cpu_interval_s=cpu_interval_s),
        "service": service,
        "node": node_level(settings, now=now, serve=beats["serve"], task_store=task_store),
        "task": task_level(task_store, finetune=finetune_jobs(app)),
    }
    levels["overall"] = verdict(levels)
    return levels


def heartbeats(settings: Any, *, now: float) -> dict[str, Heartbeat]:
    watch_age = max(DEFAULT_MAX_AGE_S, 3 * settings.ingest.watch_interval_s)
    ages = {"serve": DEFAULT_MAX_AGE_S, "watch": watch_age}
    return {role: read(settings.home, role, now=now, max_age_s=ages[role]) for role in ROLES}


def loaded_from(serve: Heartbeat) -> list[str]:
    models = serve.info.get("models") or []
    return [m["name"] for m in models if isinstance(m, dict) and m.get("loaded")]


def node_level(
    settings: Any, *, now: int, serve: Heartbeat, task_store: TaskStore
) -> dict[str, Any]:
    return {
        "version": __version__,
        "python": platform.python_version(),
        "host_uptime_s": round(now - psutil.boot_time()),
        "server": {
            "running": serve.alive,
            "pid": serve.pid,
            "uptime_s": round(now - serve.started_at) if serve.alive and serve.started_at else None,
            "reason": serve.reason,
            "ui_cache": serve.info.get("ui_cache") if serve.alive else None,
        },
        "settings": settings_summary(settings),
        "last_errors": task_store.last_errors(5),
    }


def settings_summary(settings: Any) -> dict[str, Any]:
    """What an operator checks first; never a token, passphrase or key."""
    return {
        "home": str(settings.home),
        "drop_dir": str(settings.drop_dir),
        "ingest_mode": settings.ingest.mode,
        "milvus_uri": redact_uri(settings.milvus_uri),
        "milvus_collection": settings.milvus.collection,
        "embedding_model": settings.embedding.model,
        "llm_device": settings.llm.device,
        "llm_models": list(settings.llm.models),
        "listen": f"{settings.serve.host}:{settings.serve.port}",
        "tls": settings.serve.tls_cert is not None,
        "question_logging": settings.security.question_logging,
        "show_names": settings.monitoring.show_names,
        "tasks_kept": settings.monitoring.tasks_kept,
    }


def task_level(
    task_store: TaskStore, *, finetune: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    questions = task_store.recent("questions", 200)
    return {
        "questions": questions[:RECENT_ROWS],
        "ingests": task_store.recent("ingests", RECENT_ROWS),
        "summary": question_summary(questions),
        "finetune": finetune or [],
    }


FINETUNE_FIELDS = (
    *("id", "name", "base", "dataset", "state", "reason_code", "step", "total_steps"),
    *("percent", "loss", "tokens_per_s", "eta_s", "checkpoint_step", "checkpoint_at"),
    *("running", "updated_at"),
)


def finetune_jobs(app: Any, limit: int = 5) -> list[dict[str, Any]]:
    """The newest fine-tuning jobs with their progress (no data set content, no settings)."""
    from ..finetune.jobs import Finetuning
    from ..finetune.store import DB_FILE
    from ..wiring import FINETUNE_DIR

    if not (app.settings.home / FINETUNE_DIR / DB_FILE).exists():
        return []  # never fine-tuned here (and status reads, it never creates)
    try:
        jobs = Finetuning(app).jobs(limit)
    except (ApplianceError, OSError):
        return []
    return [{k: job.get(k) for k in FINETUNE_FIELDS} for job in jobs]


def question_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Percentiles over recent questions (for the status page's charts and headline)."""
    retrieval = sorted(r["retrieval_ms"] for r in rows if r["retrieval_ms"] is not None)
    rates = [r["tokens_per_s"] for r in rows if r["tokens_per_s"]]
    return {
        "questions": len(rows),
        "retrieval_p50_ms": _pct(retrieval, 0.5),
        "retrieval_p95_ms": _pct(retrieval, 0.95),
        "tokens_per_s_mean": round(sum(rates) / len(rates), 1) if rates else None,
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def verdict(levels: dict[str, Any]) -> dict[str, Any]:
    """``ok`` / ``degraded`` (answers still work) / ``down`` (cannot answer), with problems."""
    problems = _down_problems(levels["service"])
    state = "down" if problems else "ok"
    warnings = _warnings(levels)
    if warnings and state == "ok":
        state = "degraded"
    return {"state": state, "problems": problems + warnings}


def _down_problems(service: dict[str, Any]) -> list[dict[str, str]]:
    found = []
    if service["milvus"].get("reachable") is False:
        found.append(
            _p("service", "down", "MILVUS_UNREACHABLE", service["milvus"].get("error", ""))
        )
    if not service["audit"]["writable"]:
        found.append(
            _p("service", "down", "AUDIT_NOT_WRITABLE", service["audit"].get("reason", ""))
        )
    return found


def _warnings(levels: dict[str, Any]) -> list[dict[str, str]]:
    found = []
    disagrees = levels["service"]["milvus"].get("disagrees")
    if disagrees:
        found.append(_p("service", "warning", "INDEX_DISAGREES", disagrees))
    memory = levels["service"].get("dense_memory", {})
    if memory.get("state") in ("over budget", "waiting"):
        found.append(_p("service", "warning", "DENSE_MEMORY_OFF", memory.get("reason", "")))
    for m in levels["service"]["models"]:
        if m["state"] == "locked":
            found.append(
                _p(
                    "service",
                    "warning",
                    "MODEL_LOCKED",
                    f"{m['name']}: [{m['reason_code']}] {m['reason']}",
                )
            )
        elif m.get("days_left") is not None and m["days_left"] < POLICY_WARN_DAYS:
            found.append(
                _p(
                    "service",
                    "warning",
                    "POLICY_ENDING",
                    f"{m['name']}: {m['days_left']} days left",
                )
            )
    cache = levels["node"]["server"].get("ui_cache")
    if isinstance(cache, dict) and not cache.get("in_memory", True):
        found.append(
            _p("node", "warning", "UI_CACHE_ON_DISK", f"web uploads wait in {cache.get('path')}")
        )
    tls = levels["service"]["tls"]
    if tls.get("state") in ("expired", "expiring", "unreadable"):
        found.append(_p("service", "warning", "TLS_" + tls["state"].upper(), tls.get("path", "")))
    for d in levels["component"]["disks"]:
        if d.get("fs_percent", 0) >= DISK_FULL_PERCENT:
            found.append(_p("component", "warning", "DISK_FULL", f"{d['name']} {d['fs_percent']}%"))
    return found


def _p(level: str, severity: str, code: str, message: str) -> dict[str, str]:
    return {"level": level, "severity": severity, "code": code, "message": message}


def server_info(runtime: Any) -> dict[str, Any]:
    """What `serve` publishes in its heartbeat so that `appliance status` (another process)
    sees its models and the Milvus Lite file it holds::

        Publisher(home, "serve").start(); ...; publisher.update(**server_info(runtime))
    """
    info: dict[str, Any] = {}
    uploads = getattr(runtime, "uploads", None)
    info["watching_drop"] = bool(getattr(uploads, "watching", False))
    manager = getattr(runtime, "models", None)
    if manager is not None and hasattr(manager, "states"):
        info["models"] = [_state_dict(s) for s in manager.states()]
    cache = getattr(getattr(runtime, "extras", {}).get("ui"), "cache", None)
    if cache is not None:
        info["ui_cache"] = cache.info()  # where the web UI keeps uploads (memory or disk)
    memory = getattr(runtime.knowledge, "dense_memory", None)
    if memory is not None:
        info["dense_memory"] = memory.status()
    embedder = getattr(runtime.knowledge, "__dict__", {}).get("embedder")
    if embedder is not None:
        info["query_path"] = embedder.query_path
    info["milvus"] = milvus_reading(runtime.knowledge)
    if "error" in info["milvus"]:
        info["milvus"]["error"] = info["milvus"]["error"][:300]
    return info


def _state_dict(s: Any) -> dict[str, Any]:
    return {
        "name": s.name,
        "loaded": bool(s.loaded),
        "reason_code": getattr(s, "reason_code", ""),
        "valid_until": getattr(s, "valid_until", None),
    }


def _watcher(beats: dict[str, Any]) -> Any:
    """`ingest --watch`, or a server that watches the drop folder itself (serve.watch_drop)."""
    watch, serve = beats["watch"], beats["serve"]
    if not watch.alive and serve.alive and serve.info.get("watching_drop"):
        return serve
    return watch
