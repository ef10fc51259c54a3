"""Per-user API keys: ``Authorization: Bearer kapp_…`` (issued by `appliance users token`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..errors import AuthError
from ..users import User


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(
            "Missing API key.",
            hint="Send 'Authorization: Bearer <key>'; "
            "create a key with `appliance users token NAME`.",
            reason="TOKEN_MISSING",
        )
    return token.strip()


USER_KEY = "appliance.api.user"  # where :class:`~.guard.ApiGuard` leaves the caller


def current_user(request: Request) -> User:
    """The caller :class:`~.guard.ApiGuard` authenticated before the body was read."""
    known = request.scope.get(USER_KEY)
    return known if isinstance(known, User) else authenticate(request)


def authenticate(request: Request) -> User:
    """The caller, from the API key only (headers, never the body); failures are audited
    without the key itself."""
    runtime = request.app.state.runtime
    now = int(runtime.clock())
    try:
        return runtime.app.users.authenticate_token(bearer(request), now=now)
    except AuthError as exc:
        runtime.app.secure.record(
            "api.auth",
            actor="api",
            now=now,
            object=request.url.path,
            outcome="refused",
            reason=exc.reason,  # the caller sees one message; the audit log the real cause
            details={"client": request.client.host if request.client else ""},
        )
        raise


CurrentUser = Annotated[User, Depends(current_user)]
