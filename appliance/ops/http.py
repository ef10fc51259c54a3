"""`/healthz`, `/readyz` and `/metrics` for the serving process.

``runtime_like`` offers ``.metrics``, ``.task_store``, ``.app``, ``.knowledge``, ``.settings`` and
``.started_at`` (and optionally ``.models`` with ``states()``). None of the three routes needs
authentication: they reveal no question, user or document (bind the server to loopback or
filter these paths at a proxy if even the counters must stay private).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response

from .services import audit_status, milvus_reading
from .status import finetune_jobs


def mount_ops(app: FastAPI, runtime_like: Any) -> None:
    router = APIRouter(tags=["ops"])

    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process answers HTTP (liveness)."""
        return {"status": "ok"}

    @router.get("/readyz")
    def readyz() -> JSONResponse:
        """Ready to answer: Milvus reachable and the audit log writable (503 with reasons)."""
        ready, body = readiness(runtime_like)
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.get("/metrics")
    def metrics() -> Response:
        """Prometheus text exposition."""
        refresh_gauges(runtime_like)
        body, content_type = runtime_like.metrics.render()
        return Response(content=body, media_type=content_type)

    app.include_router(router)


def model_states(runtime_like: Any) -> list[Any]:
    manager = getattr(runtime_like, "models", None)
    return list(manager.states()) if manager is not None and hasattr(manager, "states") else []


def refresh_gauges(runtime_like: Any) -> None:
    states = model_states(runtime_like)
    if states:
        runtime_like.metrics.set_models(states, now=time.time())
    memory = getattr(getattr(runtime_like, "knowledge", None), "dense_memory", None)
    if memory is not None and hasattr(runtime_like.metrics, "set_dense_memory"):
        runtime_like.metrics.set_dense_memory(memory.status())
    app = getattr(runtime_like, "app", None)
    if app is not None and hasattr(runtime_like.metrics, "set_finetune"):
        jobs = finetune_jobs(app, limit=1)
        runtime_like.metrics.set_finetune(jobs[0] if jobs else None)


def readiness(runtime_like: Any) -> tuple[bool, dict[str, Any]]:
    """(ready, body). A locked model does not make the appliance unready: extractive answers
    still work; it is reported under ``models`` and ``answer_mode``."""
    reasons: list[dict[str, str]] = []
    warnings: list[dict[str, str]] = []
    checks: dict[str, Any] = {}
    milvus = milvus_reading(runtime_like.knowledge)
    checks["milvus"] = {k: milvus[k] for k in ("reachable", "rows") if k in milvus}
    if not milvus["reachable"]:
        reasons.append({"code": "MILVUS_UNREACHABLE", "message": milvus["error"]})
    elif "disagrees" in milvus:  # answers still work, from what the index holds
        checks["milvus"]["agrees_with_registry"] = False
        warnings.append({"code": "INDEX_DISAGREES", "message": milvus["disagrees"]})
    audit = audit_status(runtime_like.app.secure.layout.audit)
    checks["audit"] = {"writable": audit["writable"]}
    if not audit["writable"]:
        reasons.append({"code": "AUDIT_NOT_WRITABLE", "message": audit.get("reason", "")})
    states = model_states(runtime_like)
    body: dict[str, Any] = {
        "status": "ready" if not reasons else "not ready",
        "checks": checks,
        "answer_mode": "generative" if any(s.loaded for s in states) else "extractive",
        "models": [
            {"name": s.name, "loaded": bool(s.loaded), "reason_code": getattr(s, "reason_code", "")}
            for s in states
        ],
        "uptime_s": round(time.time() - runtime_like.started_at, 1),
    }
    if reasons:
        body["reasons"] = reasons
    if warnings:
        body["warnings"] = warnings
    return not reasons, body
