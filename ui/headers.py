"""Response headers for every web UI response: no framing, no sniffing, no referrer to other
sites, no cross-origin reads.

Gradio answers any ``http://localhost:*`` / ``http://127.0.0.1:*`` origin with
``Access-Control-Allow-Origin: <that origin>`` and ``Allow-Credentials: true``. Another port of
the same host is the same *site*, so the ``SameSite=Strict`` session cookie goes along: a page
of any other local service could read the UI as the logged-in user (its ``/config``, the page's
event stream). And the Gradio page itself came without ``X-Frame-Options`` or ``no-store``
(found by an outside-style review). :class:`SecurityHeaders` therefore:

* removes every ``Access-Control-*`` header from a response unless it grants the request's own
  origin (the UI never needs another origin: the API under ``/v1/`` uses bearer tokens);
* adds ``X-Frame-Options: DENY`` and ``Content-Security-Policy: frame-ancestors 'none'``
  (clickjacking), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: same-origin`` (page
  URLs carry the page's ``session_hash``; not ``no-referrer``, under which browsers send
  ``Origin: null`` on the page's own POSTs and the CSRF guard would refuse them) where the
  response has none of its own;
* marks HTML pages ``Cache-Control: no-store`` (they carry the user's name and answers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .guard import origin_of

__all__ = ["ADDED", "SecurityHeaders"]

ADDED: tuple[tuple[bytes, bytes], ...] = (
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)
_CORS = b"access-control-"

OwnOrigins = Callable[[dict[str, Any]], set[str]]  # ASGI scope -> this server's origins


class SecurityHeaders:
    def __init__(self, app: Any, *, own_origins: OwnOrigins) -> None:
        self.app, self.own_origins = app, own_origins

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": self._headers(scope, message["headers"])}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _headers(self, scope: Any, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        out = list(headers)
        granted = [v for k, v in out if k.lower() == b"access-control-allow-origin"]
        if granted and not all(_origin(v) in self.own_origins(scope) for v in granted):
            out = [(k, v) for k, v in out if not k.lower().startswith(_CORS)]
        present = {k.lower() for k, _ in out}
        out += [(k, v) for k, v in ADDED if k not in present]
        html = any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in out)
        if html:
            out = [(k, v) for k, v in out if k.lower() != b"cache-control"]
            out.append((b"cache-control", b"no-store"))
        return out


def _origin(value: bytes) -> str:
    return origin_of(value.decode("latin-1"))
