"""Everything one serving process holds, built once by `appliance serve` (or `appliance ask`).

Order matters: process hardening first (no core dumps while keys or weights are in memory, no
network for the model libraries), then the home is unlocked, the embedding model and Milvus open,
and only then are models decrypted and loaded under their policies.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from ..config import Settings
from ..knowledge import AuditEvents, Knowledge, effective_groups
from ..llm.hardening import disable_core_dumps, offline_env
from ..llm.loader import LoadOptions
from ..ops.events import FanoutEvents, OpsEvents
from ..ops.metrics import Metrics
from ..ops.tasks import TaskStore
from ..rag.answer import AnswerEngine, EngineOptions
from ..uploads import Uploads
from ..wiring import Appliance, open_appliance
from .models import ModelManager

Clock = Callable[[], float]
DEFAULT_BUDGET_SHARE = 0.8


def load_options(settings: Settings) -> LoadOptions:
    llm = settings.llm
    budget = (
        int(llm.memory_budget_gb * 2**30)
        if llm.memory_budget_gb
        else int(psutil.virtual_memory().available * DEFAULT_BUDGET_SHARE)
    )
    dtype = None if llm.dtype == "stored" else llm.dtype
    return LoadOptions(device=llm.device, dtype=dtype, max_memory_bytes=budget)


def engine_options(settings: Settings) -> EngineOptions:
    a, llm = settings.answer, settings.llm
    return EngineOptions(
        passages=a.passages,
        min_score=a.min_score,
        extractive_sentences=a.extractive_sentences,
        history_turns=a.history_turns,
        max_new_tokens=llm.max_new_tokens,
        context_tokens=llm.context_tokens,
        temperature=llm.temperature,
        request_timeout_s=settings.serve.request_timeout_s,
        question_logging=settings.security.question_logging,
        threads=generation_threads(settings),
        best_source_last=a.best_source_last,
        cite_support=a.cite_support,
        unsupported=a.unsupported,
        stop_repeat_tokens=llm.stop_repeat_tokens,
    )


@dataclass
class Runtime:
    settings: Settings
    app: Appliance
    knowledge: Knowledge
    models: ModelManager
    engine: AnswerEngine
    metrics: Metrics
    task_store: TaskStore
    uploads: Uploads
    clock: Clock = time.time
    started_at: float = field(default_factory=time.time)
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(
        cls,
        settings: Settings,
        passphrase: str,
        *,
        clock: Clock = time.time,
        load_models: bool = True,
        watchdog: bool = True,
        actor: str = "service:serve",
    ) -> Runtime:
        disable_core_dumps()
        offline_env()
        app = open_appliance(settings, passphrase, now=int(clock()), actor=actor)
        return cls.build(app, clock=clock, load_models=load_models, watchdog=watchdog)

    @classmethod
    def build(
        cls,
        app: Appliance,
        *,
        clock: Clock = time.time,
        load_models: bool = True,
        watchdog: bool = True,
        knowledge: Knowledge | None = None,
    ) -> Runtime:
        settings = app.settings
        knowledge = knowledge or Knowledge(settings, app.secure)
        knowledge.retriever  # noqa: B018 - open the embedder and Milvus before any model
        knowledge.embedder.prepare_queries()  # the checked trace, before the first question
        knowledge.start_dense_memory()
        metrics = Metrics()
        task_store = TaskStore.for_settings(settings)
        models = ModelManager(
            app.models,
            app.secure,
            options=load_options(settings),
            clock=clock,
            names=settings.llm.models,
            decrypt_threads=settings.security.decrypt_threads,
            recheck_s=settings.llm.policy_recheck_s,
            on_event=_unlock_metrics(metrics),
            load_threads=generation_threads(settings),
        )
        engine = AnswerEngine(
            retriever=knowledge.retriever,
            models=models,
            home=app.secure,
            options=engine_options(settings),
            groups_of=lambda user: effective_groups(user.groups),
            clock=clock,
            observers=[metrics.observe_answer, task_store.observe_answer],
        )
        events = ingest_events(app, task_store, metrics)
        uploads = Uploads(knowledge, events=events, clock=clock)
        runtime = cls(
            settings, app, knowledge, models, engine, metrics, task_store, uploads, clock, clock()
        )
        if load_models:
            models.load_all()
        if watchdog:
            models.start_watchdog()
        return runtime

    def close(self) -> None:
        self.uploads.close()
        for extra in self.extras.values():
            closer = getattr(extra, "close", None)
            if callable(closer):
                closer()
        self.models.close()
        self.knowledge.close_dense_memory()
        self.task_store.close()


def ingest_events(
    app: Appliance, tasks: TaskStore, metrics: Metrics, actor: str = "service:serve"
) -> FanoutEvents:
    """Where ingestion inside the server reports: audit log, task store and metrics."""
    return FanoutEvents(
        AuditEvents(app.secure, actor=actor), OpsEvents(tasks=tasks, metrics=metrics)
    )


def _unlock_metrics(metrics: Metrics) -> Callable[[str, str, str], None]:
    def on_event(event: str, model: str, code: str) -> None:
        if event == "load":
            metrics.unlock(model, "ok", code)
        elif event == "refused":
            metrics.unlock(model, "refused", code)
        elif event == "unload":
            metrics.unlock(model, "unloaded", code)

    return on_event


def generation_threads(settings: Settings) -> int:
    """torch threads for loading and generation: ``llm.threads``, 0 meaning every core (the
    embedder keeps its own count in the threads that embed, see `ingest.threads`)."""
    return settings.llm.threads or os.cpu_count() or 1
