"""A real appliance home for the ops tests: two installed model packages, one under a valid
policy (30 days left) and one whose policy expired two days ago; Milvus as a Lite file in the
home or a real server process (fixture ``milvus_module``); the bundled embedder loaded once per
session."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.config import Settings, load_settings
from appliance.knowledge import Knowledge
from appliance.rag.answer import Answer
from appliance.wiring import Appliance, init_appliance
from secure.issuer import IssuerKey
from secure.package import package_model, unseal_package_key
from secure.policy import issue_policy
from tests.secure.helpers import write_model_dir
from tests.support.milvus_server import MilvusBackend

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PASSPHRASE = "ops test passphrase"
DAY = 86_400


@dataclass
class OpsHome:
    settings: Settings
    app: Appliance
    knowledge: Knowledge
    now: int
    expired_policy: str
    valid_policy: str


def fast_settings(home: Path, **overrides: Any) -> Settings:
    return load_settings(
        home,
        security={"kdf_cost_log2": 10},
        users={"password_cost_log2": 10},
        **overrides,
    )


@pytest.fixture(scope="session")
def embedder() -> Any:
    from ingest.embed import Embedder

    return Embedder.load("bundled", threads=1)


def _grant(issuer: IssuerKey, app: Appliance, tmp: Path, name: str, *, start: int, end: int) -> str:
    src = write_model_dir(tmp / f"src-{name}", seed=3, big=4096)
    pkg = tmp / f"pkg-{name}"
    package_model(src, pkg, name=name, issuer=issuer.public(), now=start)
    app.models.install_package(pkg, actor="test", now=start)
    manifest, key = unseal_package_key(pkg, issuer)
    data = issue_policy(
        issuer,
        identity=app.secure.public_identity(app.secure.host(), now=start),
        grants=[(name, manifest.package_id, manifest.sha256, key, ("staff",), ())],
        serial=start,
        issued_at=start,
        not_before=start,
        not_after=end,
    )
    policy = app.models.install_policy(data, actor="test", now=start, host=app.secure.host())
    return policy.policy_id


@pytest.fixture(scope="module")
def ops_home(
    tmp_path_factory: pytest.TempPathFactory, embedder: Any, milvus_module: MilvusBackend
) -> Iterator[OpsHome]:
    tmp = tmp_path_factory.mktemp("ops")
    server = {"uri": milvus_module.uri(tmp / "milvus" / "chunks.db")}
    settings = fast_settings(
        tmp / "home", **({"milvus": server} if milvus_module.is_server else {})
    )
    now = int(time.time())
    app = init_appliance(settings, PASSPHRASE, now=now - 40 * DAY, actor="test")
    issuer = IssuerKey.generate("vendor")
    expired = _grant(issuer, app, tmp, "old-model", start=now - 40 * DAY, end=now - 2 * DAY)
    valid = _grant(issuer, app, tmp, "new-model", start=now - DAY, end=now + 30 * DAY)
    knowledge = Knowledge(settings, app.secure)
    knowledge.embedder = embedder  # the session's loaded model (a cached_property)
    yield OpsHome(settings, app, knowledge, now, expired, valid)
    if "store" in vars(knowledge):
        knowledge.store.close()


def make_answer(
    *,
    mode: str = "generative",
    model: str | None = "new-model",
    tokens: int = 40,
    fallback_reason: str = "",
    not_found: bool = False,
    retrieval_ms: float = 15.0,
    generation_ms: float = 2000.0,
    first_token_ms: float | None = 300.0,
) -> Answer:
    """A real Answer whose text holds words that must never reach a metric or report."""
    return Answer(
        text="The secret salary answer [1]",
        mode=mode,  # type: ignore[arg-type]
        model=model,
        sources=[],
        cited=[1],
        not_found=not_found,
        fallback_reason=fallback_reason,
        language="en",
        tokens=tokens,
        retrieval_ms=retrieval_ms,
        generation_ms=generation_ms,
        first_token_ms=first_token_ms,
        question_id="q1",
    )
