"""A real appliance for UI tests: a home (real keys, low KDF cost), users in disjoint groups,
documents ingested through the real pipeline, and a :class:`Runtime` without a model
(extractive answers). Built with library calls only; shared by the access, upload and browser
tests."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config import load_settings
from appliance.knowledge import Knowledge
from appliance.serve.runtime import Runtime
from appliance.wiring import Appliance, init_appliance

PASSPHRASE = "ui test passphrase"
PASSWORD = "a long enough password"
DOCS_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "docs"
USERS = (("root", "admin", ()), ("fred", "staff", ("finance",)), ("hana", "staff", ("hr",)))
DOCS = {
    "finance/budget.md": (
        "# Budget 2027\n\n## Travel\n\nThe travel budget for 2027 is 48,000 euros. Flights above "
        "900 euros need approval by the finance director.\n\n## Hardware\n\nLaptops are "
        "replaced every four years; the hardware budget is 120,000 euros.\n"
    ),
    "finance/salaries.md": (
        "# Salary bands\n\nThe senior engineer salary band is 85,000 to 110,000 euros. Bonuses "
        "are paid in March after the annual review.\n"
    ),
    "hr/leave.md": (
        "# Leave policy\n\n## Annual leave\n\nEvery employee has 28 days of annual leave. Unused "
        "days expire on 31 March of the following year. Parental leave lasts 16 weeks.\n"
    ),
    "hr/conduct.md": (
        "# Code of conduct\n\nComplaints about harassment go to the HR director within 30 days. "
        "Travel expenses for interviews are refunded within two weeks.\n"
    ),
    "public/welcome.md": (
        "# Welcome\n\nThe canteen opens at 11:30 and closes at 14:00. Visitors register at the "
        "front desk.\n"
    ),
}


@dataclass
class UiWorld:
    settings: Any
    app: Appliance
    runtime: Runtime

    def close(self) -> None:
        ui = self.runtime.extras.get("ui")
        if ui is not None:
            ui.close()
        self.runtime.close()
        if "store" in vars(self.runtime.knowledge):
            self.runtime.knowledge.store.close()


def fast_settings(home: Path, **overrides: Any) -> Any:
    base: dict[str, Any] = {
        "security": {"kdf_cost_log2": 10},
        "users": {"password_cost_log2": 10},
        "ingest": {"settle_s": 0, "ocr": False},
        "answer": {"unsupported": "keep"},  # random-weights models: see tests/support/serving.py
    }
    for section, values in overrides.items():
        base[section] = {**base.get(section, {}), **values}
    return load_settings(home, **base)


def build(
    root: Path, embedder: Any, *, docs: dict[str, str] | None = None, **overrides: Any
) -> UiWorld:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = fast_settings(root / "home", **overrides)
    now = int(__import__("time").time())
    app = init_appliance(settings, PASSPHRASE, now=now, actor="test")
    for name, role, groups in USERS:
        app.users.add_user(name, role=role, groups=list(groups), password=PASSWORD, now=now)
    knowledge = Knowledge(settings, app.secure)
    knowledge.__dict__["embedder"] = embedder
    drop = settings.drop_dir
    for rel, text in (DOCS if docs is None else docs).items():
        (drop / rel).parent.mkdir(parents=True, exist_ok=True)
        (drop / rel).write_text(text, encoding="utf-8")
    knowledge.pipeline().run_once(settle=False)
    runtime = Runtime.build(app, load_models=False, watchdog=False, knowledge=knowledge)
    return UiWorld(settings, app, runtime)
