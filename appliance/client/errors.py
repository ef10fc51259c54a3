"""What the HTTP client raises: the server's OpenAI-shaped error JSON as typed exceptions.

The server answers ``{"error": {"message", "type", "code", "param", "reason"?, "hint"?}}``;
:func:`error_from_body` picks the class from the HTTP status (or, for an error that arrives in the
middle of a stream, from ``type``) and keeps the server's message, code, reason and hint. No
exception carries the API key.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import ApplianceError


class ApplianceClientError(ApplianceError):
    """Root of what :class:`~appliance.client.ApplianceClient` raises (an ``ApplianceError``)."""

    code = "CLIENT_ERROR"
    default_hint = ""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        hint: str = "",
        status: int | None = None,
        reason: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, code=code, hint=hint or self.default_hint)
        self.status = status
        self.reason = reason
        self.param = param


class InvalidRequest(ApplianceClientError):
    """HTTP 400 or 413: the request is malformed or over a limit (``param`` names the field)."""

    code = "INVALID_INPUT"


class AuthenticationFailed(ApplianceClientError):
    """HTTP 401: the API key is missing, unknown, revoked or its account disabled."""

    code = "AUTH_FAILED"
    default_hint = (
        "Check the API key (APPLIANCE_API_KEY); an administrator issues a new one with "
        "`appliance users token NAME`."
    )


class PermissionDenied(ApplianceClientError):
    """HTTP 403: the key's user may not do this (e.g. ``ROLE_DENIED`` for a model)."""

    code = "FORBIDDEN"


class NotFoundError(ApplianceClientError):
    """HTTP 404: no such endpoint or object (is the base URL the appliance's?)."""

    code = "NOT_FOUND"


class RequestCancelled(ApplianceClientError):
    """HTTP 408: the server stopped the answer (its time limit passed)."""

    code = "CANCELLED"


class RateLimited(ApplianceClientError):
    """HTTP 429: too many answers are running or waiting; retry after ``retry_after`` s."""

    code = "OVERLOADED"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ModelUnavailable(ApplianceClientError):
    """HTTP 503: the demanded model is locked; ``reason`` says why (``EXPIRED``, ``REVOKED``…)."""

    code = "MODEL_UNAVAILABLE"
    default_hint = "Ask with model 'auto' to get a labelled extractive answer meanwhile."


class ServerError(ApplianceClientError):
    """HTTP 500 or another unexpected status: the server log has the details."""

    code = "SERVER_ERROR"


class ApplianceUnreachable(ApplianceClientError):
    """No connection: wrong address, the server is not running, or TLS failed."""

    code = "UNREACHABLE"
    default_hint = "Check the base URL and that `appliance serve` is running there."


class ApplianceTimeout(ApplianceClientError):
    """The server did not answer within the client's ``timeout``."""

    code = "TIMEOUT"
    default_hint = "Raise the client's timeout, or ask for fewer tokens (max_tokens)."


class ProtocolError(ApplianceClientError):
    """The answer is not what the appliance API sends (another server at that address?)."""

    code = "PROTOCOL"
    default_hint = "Check that the base URL points at an appliance (`appliance serve`)."


BY_STATUS: dict[int, type[ApplianceClientError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFoundError,
    408: RequestCancelled,
    413: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
    503: ModelUnavailable,
}
BY_TYPE: dict[str, type[ApplianceClientError]] = {
    "invalid_request_error": InvalidRequest,
    "authentication_error": AuthenticationFailed,
    "permission_error": PermissionDenied,
    "not_found_error": NotFoundError,
    "timeout_error": RequestCancelled,
    "rate_limit_error": RateLimited,
    "model_unavailable": ModelUnavailable,
}


def error_from_body(
    status: int | None, body: bytes | dict[str, Any], *, retry_after: str | None = None
) -> ApplianceClientError:
    """The typed error for an error answer: ``body`` raw bytes or the parsed ``{"error": …}``."""
    error = _error_object(body)
    if error is None:
        return ProtocolError(
            f"The server answered HTTP {status} without an appliance error body.", status=status
        )
    kind = str(error.get("type") or "")
    cls = BY_STATUS.get(status or 0) or BY_TYPE.get(kind) or ServerError
    kw: dict[str, Any] = {
        "code": str(error.get("code") or cls.code),
        "hint": str(error.get("hint") or ""),
        "status": status,
        "reason": error.get("reason"),
        "param": error.get("param"),
    }
    message = str(error.get("message") or f"The appliance refused the request (HTTP {status}).")
    if cls is RateLimited:
        return RateLimited(message, retry_after=_seconds(retry_after), **kw)
    return cls(message, **kw)


def _error_object(body: bytes | dict[str, Any]) -> dict[str, Any] | None:
    if isinstance(body, bytes):
        try:
            body = json.loads(body)
        except ValueError:
            return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
