"""The FastAPI application of `appliance serve`: API routes now, the web UI mounted beside."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from .. import __version__
from .chat import router as chat_router
from .errors import install_handlers
from .guard import ApiGuard
from .limits import Limiter
from .routes import router as routes_router


def create_app(runtime: Any) -> FastAPI:
    """The API over one :class:`appliance.serve.runtime.Runtime` (no docs pages: no CDN)."""
    app = FastAPI(
        title="Knowledge appliance",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/v1/openapi.json",
    )
    s = runtime.settings.serve
    app.state.runtime = runtime
    app.state.limiter = Limiter(
        concurrent=s.max_concurrent, queue=s.queue_size, queue_timeout_s=s.queue_timeout_s
    )
    install_handlers(app)
    app.add_middleware(ApiGuard, max_body_bytes=s.max_body_kb * 1024)
    app.include_router(chat_router)
    app.include_router(routes_router)
    return app
