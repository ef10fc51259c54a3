"""Usage reports from the task store: questions and documents per group, day or user.

A question counts once in the totals and once for each group of the user who asked it (a user
in two groups adds to both rows). Documents count in the group they were dropped in.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Literal

from ..errors import UsageError
from .tasks import KINDS, TaskStore

By = Literal["group", "day", "user"]
COLUMNS = (
    "questions",
    "answered",
    "not_found",
    "refused",
    "failed",
    "generative",
    "tokens",
    "documents_ingested",
    "documents_failed",
)
NO_GROUP = "(no group)"
HIDDEN = "(hidden)"


def _day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _question_keys(by: By) -> Callable[[dict[str, Any]], list[str]]:
    if by == "group":
        return lambda r: r["groups"].split(",") if r["groups"] else [NO_GROUP]
    if by == "day":
        return lambda r: [_day(r["at"])]
    return lambda r: [r["user"] or HIDDEN]


def _add_question(row: dict[str, int], q: dict[str, Any]) -> None:
    outcome = q["outcome"]
    row["questions"] += 1
    if outcome in ("answered", "not_found", "refused"):
        row[outcome] += 1
    else:
        row["failed"] += 1
    row["generative"] += q["mode"] == "generative"
    row["tokens"] += q["tokens"] or 0


def _add_ingest(row: dict[str, int], i: dict[str, Any]) -> None:
    if i["outcome"] == "indexed":
        row["documents_ingested"] += 1
    elif i["outcome"] == "failed":
        row["documents_failed"] += 1


def build_report(store: TaskStore, *, since: float, now: float, by: By) -> dict[str, Any]:
    """Figures per ``by`` key for rows at or after ``since``, with totals and completeness."""
    if by == "user" and not store.show_names:
        raise UsageError(
            "Reports by user need user names, which this appliance does not keep.",
            hint="Set monitoring.show_names = true (names are kept from then on), or use "
            "--by group or --by day.",
        )
    questions = store.rows_since(since, "questions")
    ingests = store.rows_since(since, "ingests")
    rows: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COLUMNS, 0))
    totals = dict.fromkeys(COLUMNS, 0)
    keys = _question_keys(by)
    for q in questions:
        _add_question(totals, q)
        for key in keys(q):
            _add_question(rows[key], q)
    for i in ingests:
        _add_ingest(totals, i)
        if by != "user":
            key = (i["group_name"] or NO_GROUP) if by == "group" else _day(i["at"])
            _add_ingest(rows[key], i)
    return {
        "since": _iso(since),
        "until": _iso(now),
        "by": by,
        "rows": [{by: key, **rows[key]} for key in sorted(rows)],
        "totals": totals,
        "complete": _complete(store, since),
    }


def _complete(store: TaskStore, since: float) -> bool:
    """False when the bounded store has dropped rows from inside the window."""
    for kind in KINDS:
        oldest = store.oldest(kind)
        if oldest is not None and oldest > since and store.count(kind) >= store.kept:
            return False
    return True


def render_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([report["by"], *COLUMNS])
    for row in report["rows"]:
        writer.writerow([row[report["by"]], *(row[c] for c in COLUMNS)])
    writer.writerow(["TOTAL", *(report["totals"][c] for c in COLUMNS)])
    return out.getvalue()


_HEADS = (
    "questions",
    "answered",
    "not found",
    "refused",
    "failed",
    "generative",
    "tokens",
    "docs in",
    "docs failed",
)


def render_table(report: dict[str, Any]) -> str:
    by = report["by"]
    body = [[str(r[by]), *(str(r[c]) for c in COLUMNS)] for r in report["rows"]]
    body.append(["TOTAL", *(str(report["totals"][c]) for c in COLUMNS)])
    head = [by, *_HEADS]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
    lines = [f"Usage {report['since']} – {report['until']} by {by}"]
    for cells in (head, *body):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
    if not report["complete"]:
        lines.append(
            "note: the task store keeps only its newest rows; older activity in this window "
            "was dropped (raise monitoring.tasks_kept)."
        )
    return "\n".join(lines)
