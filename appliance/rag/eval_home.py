"""A scratch appliance for `appliance eval answers`: the real product, throw-away keys.

Everything a served answer goes through, built in a temporary folder and deleted afterwards:

* a new home (root key under a random passphrase, keyring, audit log, user database), never
  the operator's own;
* one staff account, ``eval-staff``, in the group ``eval``: questions are asked as that user,
  so retrieval filters by its groups and the model's policy checks its role;
* the set's passages ingested through the real write path (`Pipeline.index_parsed`: chunk →
  embed → keyed BM25 → encrypt → Milvus Lite → registry), each passage one document named by
  its id;
* for generative answers, the model packaged *encrypted* (`secure.package.package_model` for a
  Hugging Face directory; a GGUF file, such as the bundled model's, is dequantised in memory
  first by :func:`~appliance.llm.gguf_import.import_gguf`, as `appliance model package` does,
  so the plaintext weights never touch the disk), a scratch issuer's policy that grants role
  ``staff``, installed and unlocked by the same :class:`~appliance.serve.models.ModelManager`
  that `appliance serve` uses (decrypted into memory, never to disk);
* the :class:`~appliance.rag.answer.AnswerEngine` with the options `serve` derives from the
  settings (:func:`~appliance.serve.runtime.engine_options`).

The operator's settings (when their home exists) supply the embedding, retrieval, model and
answer sections, so the numbers describe their configuration.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.elements import Element, ParsedDocument
from secure.issuer import IssuerKey
from secure.package import package_model, unseal_package_key
from secure.policy import issue_policy

from ..config import Settings, load_settings
from ..errors import ModelLoadError
from ..knowledge import AuditEvents, Knowledge, effective_groups
from ..serve.models import ModelManager
from ..serve.runtime import engine_options, generation_threads, load_options
from ..users import User
from ..wiring import Appliance, init_appliance
from .answer import AnswerEngine
from .beir import Passage

GROUP = "eval"
USER = "eval-staff"
ROLE = "staff"
MODEL_NAME = "eval-model"
POLICY_S = 7 * 24 * 3600
BATCH = 256
_ACTOR = "cli:eval"
_COPIED_SECTIONS = ("embedding", "retrieval", "llm", "answer")

Progress = Callable[[int, int], None]


@dataclass
class EvalWorld:
    """The scratch appliance; :meth:`close` releases the model and Milvus (the folder is
    removed by :func:`eval_world`)."""

    root: Path
    app: Appliance
    knowledge: Knowledge
    engine: AnswerEngine
    user: User
    models: ModelManager | None
    model_name: str | None
    index_failures: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def close(self) -> None:
        if self.models is not None:
            self.models.close()
        self.knowledge.store.close()


@contextlib.contextmanager
def eval_world(
    passages: tuple[Passage, ...],
    *,
    base: Settings | None,
    model_source: Path | None,
    embedder: Any = None,
    workdir: Path | None = None,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.time,
) -> Iterator[EvalWorld]:
    """Build the scratch appliance (see the module doc), yield it, then delete every file."""
    root = Path(tempfile.mkdtemp(prefix="kapp-eval-answers-", dir=workdir))
    world: EvalWorld | None = None
    try:
        world = _build(root, passages, base, model_source, embedder, progress, clock)
        yield world
    finally:
        if world is not None:
            world.close()
        shutil.rmtree(root, ignore_errors=True)


def _build(
    root: Path,
    passages: tuple[Passage, ...],
    base: Settings | None,
    model_source: Path | None,
    embedder: Any,
    progress: Progress | None,
    clock: Callable[[], float],
) -> EvalWorld:
    settings = scratch_settings(root / "home", base)
    now = int(clock())
    app = init_appliance(settings, secrets.token_urlsafe(32), now=now, actor=_ACTOR)
    user = app.users.add_user(
        USER, role=ROLE, groups=[GROUP], password=secrets.token_urlsafe(24), now=now
    )
    knowledge = Knowledge(settings, app.secure)
    if embedder is not None:
        knowledge.__dict__["embedder"] = embedder  # one loaded embedder shared by the caller
    t0 = time.perf_counter()
    failures = index_passages(knowledge, app, passages, progress)
    index_s = time.perf_counter() - t0
    models = None
    if model_source is not None:
        t0 = time.perf_counter()
        models = _serve_model(root, app, model_source, clock)
        load_s = time.perf_counter() - t0
    engine = AnswerEngine(
        retriever=knowledge.retriever,
        models=models,
        home=app.secure,
        options=engine_options(settings),
        groups_of=lambda u: effective_groups(u.groups),
        clock=clock,
    )
    world = EvalWorld(root, app, knowledge, engine, user, models, None, failures)
    world.timings["index_s"] = index_s
    if models is not None:
        world.model_name = MODEL_NAME
        world.timings["model_load_s"] = load_s
    return world


def scratch_settings(home: Path, base: Settings | None) -> Settings:
    """Settings of the scratch home: the operator's embedding, retrieval, model and answer
    sections; Milvus Lite inside the scratch folder; a cheap KDF (the passphrase is random)."""
    copied: dict[str, object] = {}
    if base is not None:
        copied = {name: getattr(base, name).model_dump() for name in _COPIED_SECTIONS}
    return load_settings(
        home,
        security={"kdf_cost_log2": 10},
        users={"password_cost_log2": 10},
        milvus={"uri": "", "collection": "eval"},
        **copied,
    )


def index_passages(
    knowledge: Knowledge, app: Appliance, passages: tuple[Passage, ...], progress: Progress | None
) -> int:
    """Index every passage as one document of group ``eval``; returns how many failed (an
    empty passage, say), which the report states."""
    pipeline = knowledge.pipeline(events=AuditEvents(app.secure, actor=_ACTOR))
    failures = 0
    for start in range(0, len(passages), BATCH):
        batch = passages[start : start + BATCH]
        results = pipeline.index_parsed([(p.id, GROUP, _document(p)) for p in batch])
        failures += sum(1 for r in results if r.outcome != "indexed")
        if progress is not None:
            progress(min(start + BATCH, len(passages)), len(passages))
    knowledge.store.flush()
    return failures


def _document(passage: Passage) -> ParsedDocument:
    elements = []
    if passage.title:
        elements.append(Element(kind="title", text=passage.title, level=1))
    elements.append(Element(kind="text", text=passage.text))
    return ParsedDocument(elements=tuple(elements), title=passage.title or passage.id, pages=1)


def _serve_model(
    root: Path, app: Appliance, source: Path, clock: Callable[[], float]
) -> ModelManager:
    """Package ``source`` encrypted, grant role staff by a scratch policy, unlock it."""
    now = int(clock())
    issuer = IssuerKey.generate("eval-issuer")
    package = root / "package"
    _package(source, package, issuer, now)
    app.models.install_package(package, actor=_ACTOR, now=now)
    manifest, key = unseal_package_key(package, issuer)
    host = app.secure.host()
    policy = issue_policy(
        issuer,
        identity=app.secure.public_identity(host, now=now),
        grants=[(MODEL_NAME, manifest.package_id, manifest.sha256, key, [ROLE], [])],
        serial=1,
        issued_at=now - 60,
        not_before=now - 60,
        not_after=now + POLICY_S,
    )
    app.models.install_policy(policy, actor=_ACTOR, now=now, host=host)
    shutil.rmtree(package)  # installed: the home holds its own copy
    settings = app.settings
    manager = ModelManager(
        app.models,
        app.secure,
        options=load_options(settings),
        clock=clock,
        names=[MODEL_NAME],
        decrypt_threads=settings.security.decrypt_threads,
        load_threads=generation_threads(settings),
    )
    state = manager.load(MODEL_NAME)
    if not state.loaded:
        manager.close()
        raise ModelLoadError(
            f"The model from {source} could not be unlocked [{state.reason_code}]: {state.reason}",
            hint="Check that it is a Hugging Face causal LM directory or a GGUF file.",
        )
    return manager


def _package(source: Path, package: Path, issuer: IssuerKey, now: int) -> None:
    """Encrypt ``source`` into ``package``: a model directory file by file, a GGUF file
    dequantised in memory (zeroed afterwards; no core dump may hold it meanwhile)."""
    if source.is_dir():
        package_model(source, package, name=MODEL_NAME, issuer=issuer.public(), now=now)
        return
    from ..llm.gguf_import import package_gguf

    package_gguf(source, package, name=MODEL_NAME, issuer=issuer.public(), now=now)
