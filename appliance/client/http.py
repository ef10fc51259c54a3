"""A small HTTP client for the appliance's API (`/v1/models`, `/v1/search`, chat completions).

It talks HTTP only (httpx) and imports nothing of the server, so a customer's code can use it
next to its own. Every request carries the caller's API key; the server enforces what that
key's user may see (their groups plus ``public``) and which models they may use. The key is
never logged, shown in ``repr`` or put in an exception.

Answers are always requested as a stream: its first chunk carries the sources with the whole
passage text (the non-streamed response only has 300-character snippets), and a client that
goes away stops the generation on the server.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import httpx

from .errors import (
    ApplianceTimeout,
    ApplianceUnreachable,
    AuthenticationFailed,
    ProtocolError,
    error_from_body,
)
from .events import ChatEvent, ChatResult, chat_events, sse_data

KEY_ENV = "APPLIANCE_API_KEY"
SearchMode = Literal["hybrid", "dense", "sparse"]
Message = dict[str, str]


class ApplianceClient:
    """The appliance at ``base_url`` (``http://host:8080``; a trailing ``/v1`` is accepted),
    as the user whose API key this is (``api_key``, or the environment's
    ``APPLIANCE_API_KEY``). ``timeout``: seconds to wait for each answer chunk or response;
    ``connect_timeout``: for the connection; ``verify``: TLS verification (a CA bundle path
    for an appliance with its own certificate)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        verify: bool | str | ssl.SSLContext = True,
    ) -> None:
        key = (api_key if api_key is not None else os.environ.get(KEY_ENV, "")).strip()
        if not key:
            raise AuthenticationFailed(
                "No API key was given.",
                code="TOKEN_MISSING",
                hint=f"Pass api_key=… or set {KEY_ENV}; an administrator issues keys with "
                "`appliance users token NAME`.",
            )
        self.base_url = normalise_base_url(base_url)
        self._headers = {"Authorization": f"Bearer {key}"}
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._verify = (
            ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        )
        self._http: httpx.Client | None = None

    def __repr__(self) -> str:
        return f"ApplianceClient({self.base_url!r})"

    # -- sync ---------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """`GET /v1/models`: installed models (``status``, ``reason_code``…) and ``extractive``."""
        with self._translated():
            response = self._client().get("/v1/models")
        return _data(self._json(response))

    def search(
        self, query: str, *, limit: int = 8, mode: SearchMode = "hybrid"
    ) -> list[dict[str, Any]]:
        """`POST /v1/search`: the passages this key's user may see, best first."""
        body = {"query": query, "limit": limit, "mode": mode}
        with self._translated():
            response = self._client().post("/v1/search", json=body)
        return _data(self._json(response))

    def chat_stream(
        self, messages: Sequence[Message], *, model: str = "auto", max_tokens: int | None = None
    ) -> Iterator[ChatEvent]:
        """The answer to the last user message as events: ``sources``, ``delta``s, ``done``.
        Closing the iterator early closes the connection, which stops the generation."""
        body = chat_body(messages, model=model, max_tokens=max_tokens)
        with (
            self._translated(),
            self._client().stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            if response.status_code != 200:
                response.read()
                raise _error(response)
            yield from _events(response.iter_lines())

    def chat(
        self, messages: Sequence[Message], *, model: str = "auto", max_tokens: int | None = None
    ) -> ChatResult:
        """The whole answer: text, sources (with their text), mode, label, cited numbers."""
        result = ChatResult()
        for event in self.chat_stream(messages, model=model, max_tokens=max_tokens):
            result.add(event)
        return result

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> ApplianceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- async (one connection pool per call: safe across event loops) -----------------

    async def asearch(
        self, query: str, *, limit: int = 8, mode: SearchMode = "hybrid"
    ) -> list[dict[str, Any]]:
        body = {"query": query, "limit": limit, "mode": mode}
        with self._translated():
            async with self._async_client() as http:
                response = await http.post("/v1/search", json=body)
        return _data(self._json(response))

    async def achat_stream(
        self, messages: Sequence[Message], *, model: str = "auto", max_tokens: int | None = None
    ) -> AsyncIterator[ChatEvent]:
        body = chat_body(messages, model=model, max_tokens=max_tokens)
        with self._translated():
            async with (
                self._async_client() as http,
                http.stream("POST", "/v1/chat/completions", json=body) as response,
            ):
                if response.status_code != 200:
                    await response.aread()
                    raise _error(response)
                done = False
                async for line in response.aiter_lines():
                    for event in _line_events(line):
                        done = done or event.kind == "done"
                        yield event
                if not done:
                    raise _truncated()

    async def achat(
        self, messages: Sequence[Message], *, model: str = "auto", max_tokens: int | None = None
    ) -> ChatResult:
        result = ChatResult()
        async for event in self.achat_stream(messages, model=model, max_tokens=max_tokens):
            result.add(event)
        return result

    # -- plumbing -------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(**self._options())
        return self._http

    def _async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(**self._options())

    def _options(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "headers": self._headers,
            "timeout": self._timeout,
            "verify": self._verify,
            "follow_redirects": False,  # a redirect must not carry the key elsewhere
        }

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """httpx's transport failures as the client's typed errors (no key in any message)."""
        try:
            yield
        except httpx.TimeoutException as exc:
            raise ApplianceTimeout(
                f"The appliance at {self.base_url} did not answer in time ({type(exc).__name__})."
            ) from None
        except httpx.TransportError as exc:
            raise ApplianceUnreachable(
                f"Cannot reach the appliance at {self.base_url} ({type(exc).__name__}: {exc})."
            ) from None

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code != 200:
            raise _error(response)
        try:
            return response.json()
        except ValueError:
            raise ProtocolError(
                f"The server at {self.base_url} answered with something that is not JSON."
            ) from None


def normalise_base_url(url: str) -> str:
    """``http://host:8080`` from ``http://host:8080/``, ``…/v1`` or ``…/v1/``."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"The appliance URL must start with http:// or https://, not {url!r}.")
    return url


def chat_body(messages: Sequence[Message], *, model: str, max_tokens: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": list(messages), "stream": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def _events(lines: Iterator[str]) -> Iterator[ChatEvent]:
    done = False
    for line in lines:
        for event in _line_events(line):
            done = done or event.kind == "done"
            yield event
    if not done:
        raise _truncated()


def _line_events(line: str) -> list[ChatEvent]:
    chunk = sse_data(line)
    return chat_events(chunk) if chunk is not None else []


def _truncated() -> ProtocolError:
    return ProtocolError(
        "The answer stream ended before the answer was complete.",
        hint="The server may have restarted; ask again.",
    )


def _error(response: httpx.Response) -> Exception:
    return error_from_body(
        response.status_code, response.content, retry_after=response.headers.get("retry-after")
    )


def _data(body: Any) -> list[dict[str, Any]]:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise ProtocolError("The answer has no list of results ('data').")
    return data
