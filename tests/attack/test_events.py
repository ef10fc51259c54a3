"""Every event of the web UI, called by a staff user of another group with hostile inputs.

The events are read from the served page's ``/config`` (see ``surface.py``): a new handler is
attacked without anyone listing it. For each event, ``fred`` (finance) sends the victim's ids and
group, forged file paths in every input, oversized text, and the victim's ``session_hash``. No
answer may hold hr text or another user's name; a refusal by the appliance is audited; the
server keeps answering.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.attack.surface import Event, gradio_events, hostile_value, oversized_value
from tests.attack.target import HANA_QUESTION, HR_CANARY, Principal, Target
from tests.support.gradio_http import GradioClient
from tests.support.webui import Outcome

LEAKS = (HR_CANARY, "hana", "appraisal code word", HANA_QUESTION, "line manager")
# Gradio itself refuses a value that does not fit the component (e.g. a dropdown choice the
# session was never offered) before any handler runs: nothing reached the appliance to audit.
FRAMEWORK_REFUSAL = re.compile(r"not in the list of choices|Too many arguments|Cannot ")
BIG = 1_000_000
ANOTHER_PAGE = "belongs to another sign-in"


def _events(target: Target) -> list[Event]:
    return gradio_events(target.principals["fred"].browser.config)


def _ids(target: Target) -> dict[str, str]:
    return {**target.ids, "other_group": "hr"}


def _forged(target: Target) -> str:
    return str(target.world.settings.home / "audit" / "audit.log")


def _hostile(target: Target, event: Event) -> list[Any]:
    """The victim's ids and group in every input (files are attacked on their own below)."""
    ids, forged = _ids(target), _forged(target)
    return [None if k == "file" else hostile_value(k, ids, forged) for k in event.inputs]


def _check(target: Target, event: Event, outcome: Outcome, before: int) -> None:
    text = outcome.text() + str(outcome.output)
    assert not [s for s in LEAKS if s in text], (event, [s for s in LEAKS if s in text])
    refused = outcome.status != 200 or outcome.error is not None
    if not refused or FRAMEWORK_REFUSAL.search(outcome.error or ""):
        return
    if ANOTHER_PAGE in (outcome.error or ""):  # audited once per page and login, not per try
        assert _audited(target, "user:fred", "SESSION_HASH_MISMATCH"), outcome
        return
    assert target.refusals() > before, f"{event.api_name} refused without audit: {outcome}"


def _audited(target: Target, actor: str, reason: str) -> bool:
    return any(e.actor == actor and e.reason == reason for e in target.audit.tail(1_000_000))


def _attack(target: Target, who: Principal, event: Event, data: list[Any], **kw: Any) -> None:
    before = target.refusals()
    outcome = who.browser.run(event.fn_index, data, **kw)
    _check(target, event, outcome, before)


def test_the_events_are_found(target: Target) -> None:
    names = {e.api_name for e in _events(target)}
    info = target.principals["fred"].browser.http.get("/gradio_api/info").json()
    assert {n.lstrip("/") for n in info["named_endpoints"]} <= names | {""}
    assert {"on_ask", "on_upload", "on_load", "on_add"} <= names


def test_other_groups_ids_in_every_input(target: Target) -> None:
    fred = target.principals["fred"]
    for event in _events(target):
        data = _hostile(target, event)
        _attack(target, fred, event, data)
    assert target.alive()


def test_forged_file_paths_in_every_input_are_refused(target: Target) -> None:
    fred = target.principals["fred"]
    forged = [{"path": _forged(target), "meta": {"_type": "gradio.FileData"}}]
    for event in _events(target):
        if not event.inputs:
            continue
        before = target.refusals()
        outcome = fred.browser.run(event.fn_index, [forged for _ in event.inputs])
        assert outcome.status == 403, (event, outcome)
        assert target.refusals() > before
        for route in ("run", "call"):
            response = fred.browser.http.post(
                f"/gradio_api/{route}/{event.api_name}", json={"data": [forged]}
            )
            assert response.status_code in (403, 404), (event, route, response.status_code)
    assert target.alive()


def test_oversized_inputs(target: Target) -> None:
    fred = target.principals["fred"]
    for event in _events(target):
        if not any(oversized_value(kind, 1) for kind in event.inputs):
            continue
        data = [oversized_value(kind, BIG) for kind in event.inputs]
        _attack(target, fred, event, data)
    assert target.alive()


def test_another_users_session_hash(target: Target) -> None:
    """hana's session_hash (it appears in URLs and access logs) under fred's login."""
    fred = target.principals["fred"]
    for event in _events(target):
        data = _hostile(target, event)
        _attack(target, fred, event, data, session_hash=target.ids["hana_session_hash"])
    assert target.alive()


@pytest.mark.parametrize("who", ["fred", "hana"])
def test_staff_cannot_run_admin_events(target: Target, who: str) -> None:
    """Admin events answer an admin and refuse staff, audited."""
    staff = target.principals[who]
    admin = target.principals["root"]
    for event in _events(target):
        if event.inputs or event.trigger != "click" or not event.api_name.startswith("show"):
            continue
        assert admin.browser.run(event.fn_index, []).ok, event
        before = target.refusals()
        outcome = staff.browser.run(event.fn_index, [])
        assert not outcome.ok, (event, outcome.output)
        assert target.refusals() > before


def test_strangers_cannot_run_events(target: Target) -> None:
    stranger = GradioClient(target.url, config=target.principals["fred"].browser.config)
    stranger.http.cookies.set("kapp_session", "x" * 43)
    try:
        for event in _events(target):
            outcome = stranger.run(event.fn_index, [None for _ in event.inputs])
            assert outcome.status == 401, (event, outcome)
        assert stranger.http.get("/gradio_api/info").status_code == 401
    finally:
        stranger.close()
    assert httpx.get(f"{target.url}/healthz").status_code == 200
