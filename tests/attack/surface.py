"""The attack surface, listed at run time from what the server publishes.

HTTP routes come from the served application's route table (FastAPI routes, the routes of the
Gradio app mounted at ``/``), so a handler added tomorrow is attacked without anyone adding it
here; Gradio events come from ``/config`` (each dependency's inputs and outputs) and are checked
against the names ``/gradio_api/info`` publishes. Path parameters are filled from the victim's
ids where a parameter names one, otherwise with hostile values.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?}")


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # e.g. /ui/download/{doc_id}

    @property
    def params(self) -> list[str]:
        return _PARAM.findall(self.template)

    def fill(self, values: dict[str, str]) -> str:
        return _PARAM.sub(lambda m: values.get(m.group(1), "x"), self.template)


@dataclass(frozen=True)
class Event:
    fn_index: int
    api_name: str
    inputs: tuple[str, ...]  # component types, "state" for server-side state
    trigger: str


def http_routes(app: Any) -> list[Route]:
    """Every (method, path) the application serves, mounted sub-applications included."""
    found = {Route(m, path) for m, path in _walk(app.routes, "")}
    return sorted(found, key=lambda r: (r.template, r.method))


def _walk(routes: Any, prefix: str) -> Iterator[tuple[str, str]]:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's include_router
        if included is not None:
            yield from _walk(included.routes, prefix + route.include_context.prefix)
            continue
        path = prefix + getattr(route, "path", "")
        sub = getattr(route, "routes", None)
        if sub is not None and not getattr(route, "methods", None):  # a Mount or a Router
            yield from _walk(sub, path.rstrip("/"))
            continue
        for method in getattr(route, "methods", None) or {"GET"}:
            if method != "HEAD":
                yield method, path or "/"


def gradio_events(config: dict[str, Any]) -> list[Event]:
    """Every event of the mounted Gradio app, with the types of its input components."""
    types = {c["id"]: c["type"] for c in config["components"]}
    events = []
    for i, dep in enumerate(config["dependencies"]):
        trigger = dep["targets"][0][1] if dep.get("targets") else ""
        inputs = tuple(types.get(x, "?") for x in dep.get("inputs", []))
        events.append(Event(i, str(dep.get("api_name") or ""), inputs, trigger))
    return events


def hostile_value(kind: str, ids: dict[str, str], forged_path: str) -> Any:
    """One attacker-chosen value for an input of component type ``kind``."""
    if kind == "state":
        return None  # server-side: whatever the client sends is ignored
    if kind == "file":
        return [{"path": forged_path, "meta": {"_type": "gradio.FileData"}}]
    if kind == "dropdown":
        return ids["other_group"]
    return ids["hr_doc"]


def oversized_value(kind: str, size: int) -> Any:
    if kind in ("textbox", "dropdown", "markdown", "html"):
        return "A" * size
    return None
