"""`GET /v1/models` and `POST /v1/search`."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from ..knowledge import effective_groups
from .auth import CurrentUser
from .chat import EXTRACTIVE

router = APIRouter()


@router.get("/v1/models")
def list_models(request: Request, user: CurrentUser) -> dict[str, Any]:
    runtime = request.app.state.runtime
    created = int(runtime.started_at)
    data: list[dict[str, Any]] = [
        {
            "id": state.name,
            "object": "model",
            "created": int(state.loaded_at or created),
            "owned_by": "appliance",
            "status": "loaded" if state.loaded else "locked",
            "reason_code": state.reason_code,
            "reason": state.reason,
            "valid_until": state.valid_until,
            "your_role_allowed": user.role in state.roles if state.loaded else False,
        }
        for state in runtime.models.states()
    ]
    data.append(
        {
            "id": EXTRACTIVE,
            "object": "model",
            "created": created,
            "owned_by": "appliance",
            "status": "loaded",
            "reason_code": "OK",
            "reason": "best sentences of the best passages, no language model",
        }
    )
    return {"object": "list", "data": data}


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=4000)
    limit: int = Field(8, ge=1, le=100)
    mode: Literal["hybrid", "dense", "sparse"] = "hybrid"


@router.post("/v1/search")
def search(body: SearchRequest, request: Request, user: CurrentUser) -> Any:
    runtime = request.app.state.runtime
    groups = effective_groups(user.groups)
    result = runtime.knowledge.retriever.search(
        body.query, groups=groups, limit=body.limit, mode=body.mode
    )
    secure = runtime.app.secure
    secure.record(
        "search",
        actor=f"user:{user.name}",
        now=int(runtime.clock()),
        object=secure.audit.protect(body.query),
        details={"results": len(result.passages), "mode": body.mode, "channel": "api"},
    )
    return {
        "object": "list",
        "data": [p.to_dict() for p in result.passages],
        "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()},
    }
