"""One attacker's browser: a cookie jar, a page, and any page's ``session_hash`` on demand.

Built on :mod:`tests.support.webui` (the login form with its CSRF token, events through the
queue); this adds what the attack tests need: events by their published ``api_name``, the
page's load events, several files per upload, and an event sent under another page's hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.webui import Outcome, Page, browser, login


class GradioClient:
    """One HTTP client (cookie jar) and one open page against a running appliance server."""

    def __init__(self, base: str, *, config: dict[str, Any] | None = None) -> None:
        """``config``: the page's ``/config`` as someone else read it (for a stranger, who may
        not read it)."""
        self.base = base.rstrip("/")
        self.http = browser(self.base)
        self._page = Page(self.http, config=config) if config is not None else None

    def close(self) -> None:
        self.http.close()

    def login(self, name: str, password: str) -> Any:
        return login(self.http, name, password)

    @property
    def page(self) -> Page:
        if self._page is None:
            self._page = Page(self.http)
        return self._page

    @property
    def session_hash(self) -> str:
        return self.page.session_hash

    @property
    def config(self) -> dict[str, Any]:
        return self.page.config

    def fn_index(self, api_name: str) -> int:
        """The index of the event ``/gradio_api/info`` publishes as ``api_name``."""
        for i, dep in enumerate(self.config["dependencies"]):
            if dep.get("api_name") == api_name:
                return i
        raise KeyError(api_name)

    def load(self) -> list[Outcome]:
        """Run the page's ``load`` events, as opening the page does (they fill per-session
        choices such as the upload group list)."""
        return [self.page.call(i, []) for i in self.page.load_fns()]

    def upload(self, *paths: Path) -> list[str]:
        """Upload files into the server's upload cache; returns the server-side paths."""
        return [self.page.upload(p)["path"] for p in paths]

    def run(self, fn_index: int, data: list[Any], *, session_hash: str | None = None) -> Outcome:
        """Queue one event (under this page's hash, or the one given) until it completes."""
        page = self.page
        if session_hash is not None and session_hash != page.session_hash:
            page = Page(self.http, session_hash, config=page.config)
        return page.call(fn_index, data)


def file_data(path: str) -> dict[str, Any]:
    """A ``FileData`` payload naming ``path``, as Gradio's front end sends it."""
    return {"path": path, "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}
