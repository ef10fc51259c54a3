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
from ..knowledge import Knowledge, effective_groups
from ..llm.hardening import disable_core_dumps, offline_env
from ..llm.loader import LoadOptions
from ..rag.answer import AnswerEngine, EngineOptions
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
    )


@dataclass
class Runtime:
    settings: Settings
    app: Appliance
    knowledge: Knowledge
    models: ModelManager
    engine: AnswerEngine
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
        _generation_threads(settings)
        models = ModelManager(
            app.models,
            app.secure,
            options=load_options(settings),
            clock=clock,
            names=settings.llm.models,
            decrypt_threads=settings.security.decrypt_threads,
            recheck_s=settings.llm.policy_recheck_s,
        )
        engine = AnswerEngine(
            retriever=knowledge.retriever,
            models=models,
            home=app.secure,
            options=engine_options(settings),
            groups_of=lambda user: effective_groups(user.groups),
            clock=clock,
        )
        runtime = cls(settings, app, knowledge, models, engine, clock, started_at=clock())
        if load_models:
            models.load_all()
        if watchdog:
            models.start_watchdog()
        return runtime

    def close(self) -> None:
        self.models.close()


def _generation_threads(settings: Settings) -> None:
    """The embedder pins torch to one thread for ingestion; generation wants every core."""
    import torch

    threads = settings.llm.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
