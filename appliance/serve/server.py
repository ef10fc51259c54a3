"""Compose the web application of `appliance serve`: API, operations endpoints and web UI.

The web UI lives in the `ui` package, a layer *above* `appliance`; it registers itself through the
``appliance.web`` entry point (see pyproject.toml), so `appliance` never imports it.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from fastapi import FastAPI

from ..api.app import create_app
from ..errors import ConfigError

WEB_ENTRY_POINTS = "appliance.web"


def build_app(runtime: Any, *, ui: bool = True) -> FastAPI:
    app = create_app(runtime)
    if ui:
        mount_web_extensions(app, runtime)
    return app


def mount_web_extensions(app: FastAPI, runtime: Any) -> list[str]:
    mounted = []
    for ep in entry_points(group=WEB_ENTRY_POINTS):
        try:
            mount = ep.load()
        except ImportError as exc:
            raise ConfigError(
                f"The web extension {ep.name} cannot be loaded: {exc}.",
                hint="Reinstall the appliance (`make setup`) or set serve.ui = false.",
            ) from exc
        mount(app, runtime)
        mounted.append(ep.name)
    return mounted
