"""Reading a request body in front of an ASGI app, with a limit, and handing it on.

The guards in front of the API (:mod:`appliance.api.guard`) and of the web UI
(:mod:`ui.file_guard`, :mod:`ui.guard`) read a body themselves to decide on it before the
framework does; these two helpers are what they share.
"""

from __future__ import annotations

from starlette.types import Message, Receive

from .errors import TooLarge


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None when the client disconnects; :class:`TooLarge` as soon as more
    than ``limit`` bytes arrived."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body read already, then the server's own messages (so
    disconnects are still seen while an answer streams)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def again() -> Message:
        return pending.pop() if pending else await receive()

    return again


def too_large(limit: int) -> TooLarge:
    return TooLarge(
        f"The request body is larger than {limit // 1024} KiB.",
        hint="Send fewer or shorter messages; the limit is the setting serve.max_body_kb.",
    )
