"""A home to fine-tune in: the tiny model packaged, installed and granted with fine-tuning
allowed, users, and a small QA training set (real crypto, real files; nothing faked).

Training rows are built around invented facts (``the <thing> code is <code>``) so that the
tiny model's tokenizer, which knows only a few words, still makes short prompts.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config import load_settings
from appliance.wiring import Appliance, init_appliance, open_appliance
from secure.issuer import IssuerKey
from secure.package import package_model, unseal_package_key
from secure.policy import issue_policy

PASSPHRASE = "correct horse battery staple"
PASSWORD = "a long enough password"
NOW = 1_900_000_000
BASE = "tiny-qwen"
ENV = {
    "APPLIANCE__SECURITY__KDF_COST_LOG2": "10",
    "APPLIANCE__USERS__PASSWORD_COST_LOG2": "10",
    "APPLIANCE__INGEST__SETTLE_S": "0",
    # the tiny tokenizer spends many tokens per word: room for the rules and three passages
    "APPLIANCE__FINETUNE__MAX_SEQ_TOKENS": "2048",
    "APPLIANCE__FINETUNE__THREADS": "1",
}
THINGS = ("budget", "invoice", "contract", "policy", "report", "canteen", "laptop", "travel")


def training_rows(n: int = 24, *, seed: int = 0, canary: str = "") -> list[dict[str, Any]]:
    """QA rows (some impossible) whose contexts share words, so retrieval has distractors."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        thing = THINGS[i % len(THINGS)]
        code = f"{canary}{rng.randint(100, 999)}"
        context = f"the {thing} code is {code} and every answer cites its sources {i}."
        if i % 6 == 5:
            rows.append(
                {
                    "question": f"what is the {thing} colour {i}?",
                    "answers": [],
                    "impossible": True,
                    "context": context,
                    "title": "Codes",
                }
            )
            continue
        rows.append(
            {
                "question": f"what is the {thing} code {i}?",
                "answers": [code],
                "context": context,
                "title": "Codes",
            }
        )
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@dataclass
class FinetuneWorld:
    root: Path
    home: Path
    issuer: IssuerKey
    package: Path
    now: int = NOW  # when the world was made (the subprocess tests use the real clock)

    def settings(self, **overrides: Any) -> Any:
        return load_settings(self.home, **overrides)

    def appliance(self, now: int | None = None) -> Appliance:
        return open_appliance(self.settings(), PASSPHRASE, now=now or self.now, actor="test")

    def policy(
        self,
        app: Appliance,
        *,
        serial: int,
        allow_finetune: bool = True,
        not_before: int | None = None,
        not_after: int | None = None,
        roles: tuple[str, ...] = ("staff", "admin"),
    ) -> bytes:
        manifest, key = unseal_package_key(self.package, self.issuer)
        host = app.secure.host()
        return issue_policy(
            self.issuer,
            identity=app.secure.public_identity(host, now=self.now),
            grants=[(BASE, manifest.package_id, manifest.sha256, key, list(roles), [])],
            serial=serial,
            issued_at=self.now - 120,
            not_before=self.now - 60 if not_before is None else not_before,
            not_after=self.now + 86_400 * 30 if not_after is None else not_after,
            allow_finetune=allow_finetune,
        )

    def install_policy(self, app: Appliance, data: bytes, *, now: int | None = None) -> None:
        app.models.install_policy(data, actor="test", now=now or self.now, host=app.secure.host())


def build_finetune_world(
    root: Path, model_dir: Path, *, allow_finetune: bool = True, now: int = NOW
) -> FinetuneWorld:
    os.environ.update(ENV)
    home = root / "home"
    app = init_appliance(load_settings(home), PASSPHRASE, now=now, actor="test")
    for name, role, groups in (("admin", "admin", []), ("bob", "staff", ["finance"])):
        app.users.add_user(name, role=role, groups=groups, password=PASSWORD, now=now)
    issuer = IssuerKey.generate("vendor")
    package = root / "pkg"
    package_model(model_dir, package, name=BASE, issuer=issuer.public(), now=now)
    app.models.install_package(package, actor="test", now=now)
    world = FinetuneWorld(root, home, issuer, package, now)
    world.install_policy(app, world.policy(app, serial=1, allow_finetune=allow_finetune))
    return world
