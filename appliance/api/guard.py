"""Who is asking, then how much: checked before a single byte of an API request body is read.

FastAPI reads and parses a route's body before it runs the route's dependencies, so an
authentication dependency alone lets anyone make the server read a body of any size. This pure
ASGI middleware runs first on every ``/v1`` path (but the OpenAPI document):

1. the caller is authenticated from the headers (401 at once, body unread);
2. a declared ``Content-Length`` above ``serve.max_body_kb`` is 413 at once, body unread;
3. the body is read here in the server's chunks with a running count, 413 as soon as it passes
   the limit (a chunked body declares nothing); under the limit it is handed on as is.

Refusals close the connection (``Connection: close``), so the rest of a refused body is never
read. A 413 is audited (``access.denied``, reason ``BODY_TOO_LARGE``); failed authentication is
audited by :func:`.auth.authenticate`.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ingest.errors import IngestError
from secure.errors import SecureError

from ..asgi import read_body, replay, too_large
from ..errors import ApplianceError, TooLarge
from ..users import User
from .auth import USER_KEY, authenticate
from .errors import to_response

PREFIX = "/v1"
OPEN_PATHS = frozenset({"/v1/openapi.json"})


class ApiGuard:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        user: User | None = None
        try:
            user = await run_in_threadpool(authenticate, request)
            self._check_declared(Headers(scope=scope))
            body = await read_body(receive, self.max_body_bytes)
        except (ApplianceError, SecureError, IngestError) as exc:
            if isinstance(exc, TooLarge) and user is not None:
                await run_in_threadpool(_audit_too_large, request, user)
            response = to_response(exc)
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        if body is None:
            return  # the client went away while sending
        scope[USER_KEY] = user
        await self.app(scope, replay(body, receive), send)

    def _check_declared(self, headers: Headers) -> None:
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise too_large(self.max_body_bytes)


def guarded(path: str) -> bool:
    return (path == PREFIX or path.startswith(PREFIX + "/")) and path not in OPEN_PATHS


def _audit_too_large(request: Request, user: User) -> None:
    runtime: Any = request.app.state.runtime
    runtime.app.secure.record(
        "access.denied",
        actor=f"user:{user.name}",
        now=int(runtime.clock()),
        object=request.url.path,
        outcome="refused",
        reason=TooLarge.code,
        details={"request": f"api {request.method}"},
    )
