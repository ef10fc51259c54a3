"""Gradio's HTTP API driven the way an outside client (or an attacker) drives it.

:class:`GradioClient` logs in through the appliance's ``/login`` form (hidden form fields such as
a CSRF token are sent back as a browser would), reads ``/config`` to find each event's
``fn_index``, uploads files through ``/gradio_api/upload`` and runs events through the queue
(``/gradio_api/queue/join`` + the ``/gradio_api/queue/data`` event stream). Nothing here imports
the product: it sees only what the server publishes.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

_HIDDEN = re.compile(r"<input[^>]*type=\"hidden\"[^>]*>", re.IGNORECASE)
_ATTR = re.compile(r"(name|value)=\"([^\"]*)\"")


@dataclass
class Outcome:
    """How one queued event ended: its output data, or the error the server sent."""

    status: int
    output: list[Any] | None = None
    error: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None and self.output is not None

    def text(self) -> str:
        """Everything the server sent for this event, as one string (for leak checks)."""
        return json.dumps(self.messages, ensure_ascii=False) + (self.error or "")


def hidden_fields(page: str) -> dict[str, str]:
    fields = {}
    for tag in _HIDDEN.findall(page):
        attrs = dict(_ATTR.findall(tag))
        if "name" in attrs:
            fields[attrs["name"]] = attrs.get("value", "")
    return fields


class GradioClient:
    """One HTTP client (cookie jar) against a running appliance server."""

    def __init__(self, base: str, *, timeout: float = 60.0) -> None:
        self.base = base.rstrip("/")
        self.http = httpx.Client(base_url=self.base, timeout=timeout, headers={"Origin": self.base})
        self.session_hash = secrets.token_hex(6)
        self._config: dict[str, Any] | None = None

    def close(self) -> None:
        self.http.close()

    def login(self, name: str, password: str) -> httpx.Response:
        form = hidden_fields(self.http.get("/login").text)
        form.update(username=name, password=password)
        return self.http.post("/login", data=form)

    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            response = self.http.get("/config")
            response.raise_for_status()
            self._config = response.json()
        return self._config

    def fn_index(self, api_name: str) -> int:
        """The index of the event published under ``api_name`` (as ``/gradio_api/info`` names
        it, without the slash)."""
        for i, dep in enumerate(self.config["dependencies"]):
            if dep.get("api_name") == api_name:
                return i
        raise KeyError(api_name)

    def load(self) -> list[Outcome]:
        """Run the page's ``load`` events in this session, as opening the page does (they fill
        per-session choices such as the upload group list)."""
        return [
            self.run(i, [])
            for i, dep in enumerate(self.config["dependencies"])
            if any(trigger[1] == "load" for trigger in dep.get("targets", []))
        ]

    def upload(self, *paths: Path) -> list[str]:
        """Upload files into the server's upload cache; returns the server-side paths."""
        files = [("files", (p.name, p.read_bytes())) for p in paths]
        response = self.http.post("/gradio_api/upload", files=files)
        response.raise_for_status()
        return list(response.json())

    def run(self, fn_index: int, data: list[Any], *, session_hash: str | None = None) -> Outcome:
        """Queue one event and read its messages until it completes."""
        session = session_hash or self.session_hash
        body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None}
        joined = self.http.post("/gradio_api/queue/join", json=body)
        if joined.status_code != 200:
            return Outcome(joined.status_code, error=joined.text)
        event_id = joined.json().get("event_id")
        return self._read(session, event_id)

    def _read(self, session: str, event_id: str) -> Outcome:
        messages: list[dict[str, Any]] = []
        params = {"session_hash": session}
        with self.http.stream("GET", "/gradio_api/queue/data", params=params) as stream:
            if stream.status_code != 200:
                stream.read()
                return Outcome(stream.status_code, error=stream.text)
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") not in (None, event_id):
                    continue
                messages.append(message)
                if message.get("msg") == "process_completed":
                    return _completed(message, messages)
                if message.get("msg") == "close_stream":
                    break
        return Outcome(200, error="stream ended without completion", messages=messages)


def _completed(message: dict[str, Any], messages: list[dict[str, Any]]) -> Outcome:
    out = message.get("output") or {}
    if not message.get("success", False) or "error" in out:
        return Outcome(200, error=str(out.get("error") or "failed"), messages=messages)
    return Outcome(200, output=list(out.get("data") or []), messages=messages)


def file_data(path: str) -> dict[str, Any]:
    """A ``FileData`` payload naming ``path``, as Gradio's front end sends it."""
    return {"path": path, "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}
