"""A whole appliance home for serving tests, built through the real library calls.

`build_world` creates a home (real scrypt at a low cost, real keys), an issuer, the tiny Qwen2
model packaged and installed with a policy valid for ``policy_s`` seconds from ``now`` (it grants
role staff only, so the admin is refused the model), users in two disjoint groups, and sample
documents ingested through the real pipeline (Milvus Lite file, bundled embedder).
`open_runtime` builds a :class:`Runtime` with an injected clock.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config import load_settings
from appliance.knowledge import Knowledge
from appliance.serve.runtime import Runtime
from appliance.wiring import Appliance, init_appliance, open_appliance
from secure.issuer import IssuerKey
from secure.package import package_model, unseal_package_key
from secure.policy import issue_policy

PASSPHRASE = "correct horse battery staple"
PASSWORD = "a long enough password"
NOW = 1_900_000_000
MODEL = "tiny-qwen"

USERS = (
    ("admin", "admin", []),
    ("bob", "staff", ["finance"]),
    ("carol", "staff", ["hr"]),
)
DOCS = {
    "finance/budget.md": (
        "# Budget 2027\n\n## Travel\n\nThe travel budget for 2027 is 48,000 euros. "
        "Flights above 900 euros need approval by the finance director.\n\n"
        "## Hardware\n\nLaptops are replaced every four years.\n"
    ),
    "hr/leave.md": (
        "# Leave policy\n\n## Annual leave\n\nEvery employee has 28 days of annual leave. "
        "Unused days expire on 31 March of the following year.\n"
    ),
    "public/welcome.md": (
        "# Welcome\n\nThe canteen opens at 11:30 and closes at 14:00. "
        "Visitors register at the front desk.\n"
    ),
}


class Clock:
    """An injected clock a test moves by hand (policy expiry without waiting)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    root: Path
    home: Path
    issuer: IssuerKey
    package: Path | None
    env: dict[str, str] = field(default_factory=dict)

    def settings(self, **overrides: Any) -> Any:
        return load_settings(self.home, **overrides)

    def appliance(self, now: int = NOW) -> Appliance:
        return open_appliance(self.settings(), PASSPHRASE, now=now, actor="test")

    def issue(self, app: Appliance, *, now: int, valid_s: int, serial: int, roles: Any) -> bytes:
        assert self.package is not None
        manifest, key = unseal_package_key(self.package, self.issuer)
        host = app.secure.host()
        return issue_policy(
            self.issuer,
            identity=app.secure.public_identity(host, now=now),
            grants=[(MODEL, manifest.package_id, manifest.sha256, key, list(roles), [])],
            serial=serial,
            issued_at=now - 60,
            not_before=now - 60,
            not_after=now + valid_s,
        )


def build_world(
    root: Path,
    *,
    model_dir: Path | None,
    policy_s: int = 3600,
    roles: tuple[str, ...] = ("staff",),
    embedder: Any = None,
    docs: dict[str, str] | None = None,
    now: int = NOW,
) -> World:
    home = root / "home"
    env = {
        "APPLIANCE__SECURITY__KDF_COST_LOG2": "10",
        "APPLIANCE__USERS__PASSWORD_COST_LOG2": "10",
        "APPLIANCE__INGEST__SETTLE_S": "0",
        # The tiny model has random weights: nothing it writes is in a source, and "flag" would
        # mark every answer as unsupported (the tests of that rule set it themselves).
        "APPLIANCE__ANSWER__UNSUPPORTED": "keep",
    }
    import os

    os.environ.update(env)
    settings = load_settings(home)
    app = init_appliance(settings, PASSPHRASE, now=now, actor="test")
    issuer = IssuerKey.generate("vendor")
    world = World(root, home, issuer, None, env)
    users = app.users
    for name, role, groups in USERS:
        users.add_user(name, role=role, groups=groups, password=PASSWORD, now=now)
    if model_dir is not None:
        world.package = root / "pkg"
        package_model(model_dir, world.package, name=MODEL, issuer=issuer.public(), now=now)
        app.models.install_package(world.package, actor="test", now=now)
        policy = world.issue(app, now=now, valid_s=policy_s, serial=1, roles=roles)
        app.models.install_policy(policy, actor="test", now=now, host=app.secure.host())
    ingest_docs(app, docs if docs is not None else DOCS, embedder=embedder)
    return world


def knowledge_for(app: Appliance, embedder: Any = None) -> Knowledge:
    kb = Knowledge(app.settings, app.secure)
    if embedder is not None:
        kb.__dict__["embedder"] = embedder  # share one loaded embedder across a test session
    return kb


def ingest_docs(app: Appliance, docs: dict[str, str], *, embedder: Any = None) -> None:
    drop = app.settings.drop_dir
    for rel, text in docs.items():
        path = drop / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    kb = knowledge_for(app, embedder)
    kb.pipeline().run_once()
    kb.store.close()  # Milvus Lite: one process at a time may hold the file


def open_runtime(
    world: World, *, clock: Any, embedder: Any = None, watchdog: bool = False, **overrides: Any
) -> Runtime:
    app = open_appliance(world.settings(**overrides), PASSPHRASE, now=int(clock()), actor="test")
    kb = knowledge_for(app, embedder)
    return Runtime.build(app, clock=clock, watchdog=watchdog, knowledge=kb)


def copy_model(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest
