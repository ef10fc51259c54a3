"""`appliance report`: figures checked against the questions and files the test recorded."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import cli
from appliance.errors import UsageError
from appliance.ops.report import build_report, render_csv, render_table
from appliance.ops.tasks import TaskStore
from appliance.users import User
from tests.secure.helpers import make_home

from .conftest import make_answer

DAY = 86_400
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def _ask(store: TaskStore, groups: tuple[str, ...], outcome: str, at: float, **kw: object) -> None:
    user = User("someone", "staff", groups, False, 0, 0, 0, 0)
    answer = make_answer(**kw)  # type: ignore[arg-type]
    store.clock = lambda: at
    store.observe_answer(answer, user, "api", outcome)


def _fill(store: TaskStore) -> None:
    _ask(store, ("finance",), "answered", T0, tokens=10)
    _ask(store, ("finance", "hr"), "not_found", T0 + 60, mode="extractive", tokens=0)
    _ask(store, ("hr",), "answered", T0 + DAY, tokens=25)
    _ask(store, ("hr",), "refused", T0 + DAY + 5, tokens=0)
    _ask(store, (), "error", T0 + DAY + 9, tokens=0)
    _ask(store, ("hr",), "answered", T0 - 30 * DAY, tokens=99)  # outside the window
    store.record_ingest(outcome="indexed", group="finance", chunks=4, at=T0 + 1)
    store.record_ingest(outcome="indexed", group="hr", chunks=4, at=T0 + DAY)
    store.record_ingest(outcome="failed", group="hr", code="encrypted", at=T0 + DAY + 1)


def test_by_group(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.db")
    _fill(store)
    rep = build_report(store, since=T0 - DAY, now=T0 + 2 * DAY, by="group")
    rows = {r["group"]: r for r in rep["rows"]}
    assert set(rows) == {"finance", "hr", "(no group)"}
    f, h = rows["finance"], rows["hr"]
    assert (f["questions"], f["answered"], f["not_found"], f["tokens"]) == (2, 1, 1, 10)
    assert (f["documents_ingested"], f["documents_failed"]) == (1, 0)
    assert (h["questions"], h["answered"], h["not_found"], h["refused"]) == (3, 1, 1, 1)
    assert (h["tokens"], h["documents_ingested"], h["documents_failed"]) == (25, 1, 1)
    assert rows["(no group)"]["failed"] == 1
    t = rep["totals"]
    assert (t["questions"], t["answered"], t["not_found"], t["refused"], t["failed"]) == (
        5,
        2,
        1,
        1,
        1,
    )
    assert (t["tokens"], t["generative"], t["documents_ingested"]) == (35, 4, 2)
    assert rep["complete"] is True and rep["since"] == "2027-01-14T08:00:00Z"


def test_by_day_and_formats(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.db")
    _fill(store)
    rep = build_report(store, since=T0 - DAY, now=T0 + 2 * DAY, by="day")
    days = {r["day"]: r for r in rep["rows"]}
    assert days["2027-01-15"]["questions"] == 2 and days["2027-01-16"]["questions"] == 3
    assert days["2027-01-16"]["documents_failed"] == 1
    parsed = list(csv.DictReader(io.StringIO(render_csv(rep))))
    assert [r["day"] for r in parsed] == ["2027-01-15", "2027-01-16", "TOTAL"]
    assert parsed[-1]["questions"] == "5" and parsed[-1]["tokens"] == "35"
    table = render_table(rep)
    assert "2027-01-16" in table and "TOTAL" in table and "note:" not in table


def test_by_user_needs_names(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not keep") as err:
        build_report(TaskStore(tmp_path / "a.db"), since=0, now=T0, by="user")
    assert "monitoring.show_names" in err.value.hint
    named = TaskStore(tmp_path / "b.db", show_names=True)
    _ask(named, ("hr",), "answered", T0)
    rows = build_report(named, since=0, now=T0 + 1, by="user")["rows"]
    assert rows == [{**rows[0], "user": "someone", "questions": 1}]


def test_incomplete_when_the_store_dropped_rows(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.db", kept=100)
    for i in range(150):
        store.record_question(
            groups=["hr"], channel="api", mode="extractive", outcome="answered", at=T0 + i
        )
    store.prune()
    rep = build_report(store, since=T0, now=T0 + 200, by="group")
    assert rep["complete"] is False and rep["totals"]["questions"] == 100
    assert "note: the task store keeps only" in render_table(rep)


def test_cli_report_json_and_csv(tmp_path: Path) -> None:
    home = tmp_path / "home"
    make_home(home)
    store = TaskStore(home / "tasks.db")
    now = time.time()
    for groups, outcome in ((("finance",), "answered"), (("hr",), "not_found")):
        store.record_question(
            groups=groups, channel="web", mode="extractive", outcome=outcome, at=now - 3600
        )
    store.record_question(
        groups=["hr"], channel="web", mode="extractive", outcome="answered", at=now - 10 * DAY
    )
    env = {"APPLIANCE_HOME": str(home)}
    run = CliRunner().invoke(cli, ["report", "--since", "7d", "--format", "json"], env=env)
    assert run.exit_code == 0, run.output
    rep = json.loads(run.output)
    assert {r["group"]: r["questions"] for r in rep["rows"]} == {"finance": 1, "hr": 1}
    run = CliRunner().invoke(
        cli, ["report", "--since", "30d", "--by", "day", "--format", "csv"], env=env
    )
    assert run.exit_code == 0 and run.output.splitlines()[-1].startswith("TOTAL,3,2,1,")
    bad = CliRunner().invoke(cli, ["report", "--since", "soon"], env=env)
    assert isinstance(bad.exception, UsageError)
