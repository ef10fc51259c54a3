"""Errors as JSON in the OpenAI shape: ``{"error": {"message", "type", "code", "param"}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ingest.errors import IngestError, StoreUnavailable
from secure.errors import SecureError

from ..errors import (
    INTERNAL_MESSAGE,
    ApplianceError,
    AuthError,
    Cancelled,
    Forbidden,
    InvalidInput,
    KnowledgeUnavailable,
    ModelUnavailable,
    NotFound,
    Overloaded,
    TooLarge,
    UsageError,
    is_user_facing,
)

log = logging.getLogger(__name__)

STATUS: list[tuple[type[Exception], int, str]] = [
    (AuthError, 401, "authentication_error"),
    (Forbidden, 403, "permission_error"),
    (NotFound, 404, "not_found_error"),
    (Overloaded, 429, "rate_limit_error"),
    (ModelUnavailable, 503, "model_unavailable"),
    (KnowledgeUnavailable, 503, "service_unavailable"),
    (Cancelled, 408, "timeout_error"),
    (TooLarge, 413, "invalid_request_error"),
    (InvalidInput, 400, "invalid_request_error"),
    (UsageError, 400, "invalid_request_error"),
]


def error_body(message: str, *, type_: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": None, **extra}}


def status_of(exc: Exception) -> tuple[int, str]:
    for cls, status, type_ in STATUS:
        if isinstance(exc, cls):
            return status, type_
    return 500, "server_error"


def to_response(exc: ApplianceError | SecureError | IngestError) -> JSONResponse:
    if isinstance(exc, StoreUnavailable):  # e.g. /v1/search: the cause goes to the log
        log.error("request failed [%s]: %s", exc.code, exc.diagnostics())
        exc = KnowledgeUnavailable.from_store(exc)
    status, type_ = status_of(exc)
    extra: dict[str, Any] = {}
    reason = getattr(exc, "reason_code", None)
    if reason:
        extra["reason"] = reason
    hint = getattr(exc, "hint", "")
    message = getattr(exc, "message", str(exc))
    if not is_user_facing(exc):  # may name server paths or quote stored data: logged only
        log.error("request failed [%s]: %s %s", exc.code, message, hint)
        message, hint = INTERNAL_MESSAGE.format(code=exc.code), ""
    if hint:
        extra["hint"] = hint
    param = getattr(exc, "param", None)
    if param:
        extra["param"] = param
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    headers = {"Retry-After": "5"} if status == 429 else headers
    headers = {"Retry-After": "10"} if isinstance(exc, KnowledgeUnavailable) else headers
    body = error_body(message, type_=type_, code=exc.code, **extra)
    return JSONResponse(body, status_code=status, headers=headers)


def install_handlers(app: Any) -> None:
    async def appliance_error(request: Request, exc: Exception) -> JSONResponse:
        return to_response(exc)  # type: ignore[arg-type]

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        errors = exc.errors()  # type: ignore[attr-defined]
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in errors
        )
        body = error_body(
            f"Invalid request: {problems}", type_="invalid_request_error", code="INVALID_INPUT"
        )
        body["error"]["param"] = _param(errors[0]) if errors else None
        return JSONResponse(body, status_code=400)

    for cls in (ApplianceError, SecureError, IngestError):
        app.add_exception_handler(cls, appliance_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def _param(error: dict[str, Any]) -> str | None:
    """The field a validation error is about, as OpenAI writes it (``messages[0].content``)."""
    if error.get("type") == "json_invalid":
        return None  # its "location" is a character offset
    out = ""
    for part in error["loc"][1:]:
        out += f"[{part}]" if isinstance(part, int) else f"{'.' if out else ''}{part}"
    return out or None
