"""The web UI over plain HTTP, as its browser page talks to it: the login form (with its CSRF
token), and Gradio events through the queue (``/gradio_api/queue/join`` then the SSE stream
``/gradio_api/queue/data``), uploads through ``/gradio_api/upload``. Raw ``httpx`` so that a test
can send exactly what an attacker would (another page's ``session_hash``, no ``Origin``)."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

_CSRF = re.compile(r'name="csrf" value="([^"]*)"')


def csrf_token(page: str) -> str:
    found = _CSRF.search(page)
    assert found, "the login page has no CSRF field"
    return found.group(1)


def login(client: httpx.Client, name: str, password: str) -> httpx.Response:
    """The login form as a browser fills it in: GET (token cookie + field), then POST."""
    form = client.get("/login")
    data = {"username": name, "password": password, "csrf": csrf_token(form.text)}
    return client.post("/login", data=data)


def browser(base: str, **kwargs: Any) -> httpx.Client:
    """A client that sends ``Origin`` like a browser's page does (``fetch`` POSTs)."""
    return httpx.Client(base_url=base, headers={"Origin": base}, timeout=120, **kwargs)


@dataclass
class Outcome:
    """What one event returned: every SSE message, the raw text and the final output."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    raw: str = ""
    status: int = 0

    @property
    def completed(self) -> dict[str, Any] | None:
        return next((m for m in self.messages if m.get("msg") == "process_completed"), None)

    @property
    def ok(self) -> bool:
        done = self.completed
        return self.status == 200 and done is not None and bool(done.get("success"))

    @property
    def output(self) -> list[Any] | None:
        """The event's output data, or None when it did not complete successfully."""
        return self.data if self.ok else None

    @property
    def error(self) -> str | None:
        """Why the event failed (the server's error message, or the refusing response)."""
        if self.ok:
            return None
        done = self.completed or {}
        message = (done.get("output") or {}).get("error") if done else None
        return str(message or self.raw[-2000:] or f"HTTP {self.status}")

    def text(self) -> str:
        """Everything the server sent for this event (for leak checks)."""
        return self.raw

    @property
    def data(self) -> list[Any]:
        done = self.completed
        assert done is not None and done.get("success"), self.raw[-2000:]
        return list(done["output"]["data"])


class Page:
    """One open page of the UI: its ``/config`` and a ``session_hash`` (the browser's choice)."""

    def __init__(
        self,
        client: httpx.Client,
        session_hash: str | None = None,
        *,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.session_hash = session_hash or secrets.token_hex(6)
        if config is None:
            r = client.get("/config")
            r.raise_for_status()
            config = r.json()
        self.config = config

    def fn(self, elem_id: str, event: str = "click") -> int:
        """The id of the event handler wired to ``event`` of the component ``elem_id``."""
        ids = [c["id"] for c in self.config["components"] if c["props"].get("elem_id") == elem_id]
        assert ids, f"no component {elem_id}"
        for dep in self.config["dependencies"]:
            if any(t[0] in ids and t[1] == event for t in dep["targets"]):
                return int(dep["id"])
        raise AssertionError(f"no {event} handler on {elem_id}")

    def load_fns(self) -> list[int]:
        return [
            int(d["id"])
            for d in self.config["dependencies"]
            if any(t[1] == "load" for t in d["targets"])
        ]

    def call(self, fn_index: int, data: list[Any]) -> Outcome:
        """Join the queue with this page's hash and read the stream until the event ends."""
        body = {"data": data, "fn_index": fn_index, "session_hash": self.session_hash}
        body |= {"event_data": None, "trigger_id": None}
        joined = self.client.post("/gradio_api/queue/join", json=body)
        out = Outcome(raw=joined.text, status=joined.status_code)
        if joined.status_code != 200:
            return out
        return self.listen(out)

    def listen(self, out: Outcome | None = None) -> Outcome:
        out = out or Outcome()
        url = "/gradio_api/queue/data"
        with self.client.stream("GET", url, params={"session_hash": self.session_hash}) as r:
            out.status = r.status_code
            for line in r.iter_lines():
                out.raw += line + "\n"
                if not line.startswith("data: "):
                    continue
                message = json.loads(line[6:])
                out.messages.append(message)
                if message.get("msg") in ("process_completed", "close_stream"):
                    break
        return out

    def upload(self, path: Path) -> dict[str, Any]:
        """Upload a file as the File component does; the FileData to pass to an event."""
        with path.open("rb") as handle:
            r = self.client.post("/gradio_api/upload", files={"files": (path.name, handle)})
        r.raise_for_status()
        (server_path,) = r.json()
        return {
            "path": server_path,
            "orig_name": path.name,
            "size": path.stat().st_size,
            "meta": {"_type": "gradio.FileData"},
        }
