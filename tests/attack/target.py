"""The system under attack: a real appliance served on loopback, as an outsider meets it.

Two staff users in two groups (``fred`` in finance, ``hana`` in hr) and one admin (``root``), each
with a browser session (logged in through ``/login``, the page's load events run) and an API key.
Every group's documents carry a canary word that no other group's user may ever receive; ``hana``
has asked a question in the chat, so her session holds an answer with hr passages and her history
holds a conversation. The attacks use only what the server publishes plus, where an attacker would
have learnt it elsewhere (a URL in an access log, an id in a screenshot), the victim's ids.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.gradio_http import GradioClient
from tests.ui.kit import PASSWORD, UiWorld, build

HR_CANARY = "quokka7731"
FINANCE_CANARY = "marmot2290"
DOCS = {
    "finance/forecast.md": (
        "# Forecast\n\nThe finance forecast code word is "
        f"{FINANCE_CANARY}. Revenue grows by four percent next year.\n"
    ),
    "hr/appraisals.md": (
        "# Appraisals\n\nThe appraisal code word is "
        f"{HR_CANARY}. Appraisal talks happen every October with the line manager.\n"
    ),
    "public/welcome.md": "# Welcome\n\nThe canteen opens at 11:30 and closes at 14:00.\n",
}
HANA_QUESTION = "When do appraisal talks happen?"


@dataclass
class Principal:
    name: str
    group: str
    browser: GradioClient
    api_key: str


@dataclass
class Target:
    url: str
    world: UiWorld
    app: Any
    principals: dict[str, Principal]
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def audit(self) -> Any:
        return self.world.app.secure.audit

    def refusals(self) -> int:
        """Audit entries recording a refused action, so far."""
        return sum(e.outcome == "refused" for e in self.audit.tail(1_000_000))

    def alive(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.url}/healthz", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False


@contextmanager
def running_target(root: Path) -> Iterator[Target]:
    from appliance.serve.server import build_app
    from ingest.embed import Embedder
    from tests.support.server import running_server

    world = build(root, Embedder.load("bundled", threads=1), docs=DOCS)
    app = build_app(world.runtime, ui=True)  # what `appliance serve` serves
    try:
        with running_server(app) as url:
            target = Target(url, world, app, {})
            for name, group in (("fred", "finance"), ("hana", "hr"), ("root", "")):
                target.principals[name] = _principal(target, name, group)
            _victim_history(target)
            yield target
            for p in target.principals.values():
                p.browser.close()
    finally:
        world.close()


def _principal(target: Target, name: str, group: str) -> Principal:
    browser = GradioClient(target.url)
    response = browser.login(name, PASSWORD)
    assert response.status_code in (200, 303), response.text[:300]
    assert all(o.ok for o in browser.load()), "the page's load events failed"
    key = target.world.app.users.issue_token(name, now=int(time.time()))
    return Principal(name, group, browser, key)


def _victim_history(target: Target) -> None:
    """hana asks in the chat: her session state and history now hold hr passages."""
    hana = target.principals["hana"].browser
    outcome = hana.run(hana.fn_index("on_ask"), [HANA_QUESTION, [], None])
    assert outcome.ok and HR_CANARY in outcome.text(), outcome.error
    registry = target.world.runtime.knowledge.registry
    docs = {d.group: d for d in registry.documents()}
    hr = docs["hr"]
    target.ids.update(
        hr_doc=hr.doc_id,
        hr_chunk=f"{hr.doc_id}:{hr.version}:0",
        finance_doc=docs["finance"].doc_id,
        hana_session_hash=hana.session_hash,
        hana_conversation=_conversation_of(target, "hana"),
        random=secrets.token_hex(8),
    )


def _conversation_of(target: Target, name: str) -> str:
    store = target.world.runtime.extras["ui"].conversations
    user = target.world.app.users.get(name)
    for key in (getattr(user, "id", None), name):
        if key is None:
            continue
        try:
            found = store.history(key)
        except Exception:
            continue
        if found:
            return str(found[0].id)
    raise AssertionError(f"{name} has no conversation")
