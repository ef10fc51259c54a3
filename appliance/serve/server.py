"""Compose the web application of `appliance serve`: API, operations endpoints and web UI.

The web UI lives in the `ui` package, a layer *above* `appliance`; it registers itself through the
``appliance.web`` entry point (see pyproject.toml), so `appliance` never imports it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from fastapi import FastAPI

from ..api.app import create_app
from ..errors import ConfigError
from ..ops.http import mount_ops
from ..ops.runtime_state import Publisher
from ..ops.status import server_info

WEB_ENTRY_POINTS = "appliance.web"


def build_app(runtime: Any, *, ui: bool = True) -> FastAPI:
    """API routes, then /healthz /readyz /metrics, then the web UI (mounted at "/", so last)."""
    app = create_app(runtime)
    mount_ops(app, runtime)
    if ui:
        mount_web_extensions(app, runtime)
    return app


def proxy_options(serve: Any) -> dict[str, Any]:
    """uvicorn's proxy options: ``X-Forwarded-Proto`` / ``-For`` are believed only from
    ``serve.trusted_proxies`` (none when the list is empty). A believed https scheme makes the
    web UI's cookies Secure and its origin https."""
    proxies = [p.strip() for p in serve.trusted_proxies if p.strip()]
    return {"proxy_headers": bool(proxies), "forwarded_allow_ips": ",".join(proxies) or None}


def start_heartbeat(runtime: Any, *, interval_s: float = 10.0) -> Callable[[], None]:
    """Publish `<home>/run/serve.json` (models, Milvus) for `appliance status` in another
    process; returns the function that stops it."""
    publisher = Publisher(runtime.settings.home, "serve", interval_s=interval_s).start()
    stop = threading.Event()

    def loop() -> None:
        while True:
            with contextlib.suppress(Exception):  # status reporting must never stop serving
                publisher.update(**server_info(runtime))
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=loop, name="serve-heartbeat", daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join(timeout=5)
        publisher.stop()

    return halt


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
