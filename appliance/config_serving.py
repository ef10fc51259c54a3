"""Settings sections for models and what they serve: llm, answer, serve, monitoring, finetune
(:mod:`appliance.config` assembles them)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from .config_data import Section


class LlmSettings(Section):
    device: str = Field("cpu", description="where models run: cpu or cuda[:N] (when a GPU exists)")
    dtype: Literal["stored", "bf16", "fp16", "fp32"] = Field(
        "stored",
        description="weight dtype: 'stored' keeps the package's dtype (no copy on CPU); bf16/fp16 "
        "halve memory on a GPU",
    )
    memory_budget_gb: float = Field(
        0.0,
        ge=0,
        description="most memory one model's weights may take (0 = 80 % of available memory); "
        "weights never spill to disk",
    )
    threads: int = Field(0, ge=0, description="CPU threads for generation (0 = all cores)")
    models: list[str] = Field(
        default_factory=list,
        description="models `serve` unlocks at start (empty = every installed model)",
    )
    max_new_tokens: int = Field(512, ge=1, description="tokens generated per answer at most")
    context_tokens: int = Field(
        0, ge=0, description="prompt budget in tokens (0 = the model's own context length)"
    )
    temperature: float = Field(0.0, ge=0, le=2, description="sampling temperature (0 = greedy)")
    stop_repeat_tokens: int = Field(
        20,
        ge=0,
        description="stop an answer once its last N tokens repeat a run it already wrote (a "
        "small model's loop would otherwise run to max_new_tokens); 0 = never",
    )
    policy_recheck_s: float = Field(
        60.0, gt=0, description="how often a loaded model's policy is checked again"
    )


class AnswerSettings(Section):
    passages: int = Field(6, ge=1, le=50, description="passages offered to the model at most")
    min_score: float = Field(
        0.0,
        ge=0,
        description="passages scoring below this fused score are not used (0 = keep all)",
    )
    extractive_sentences: int = Field(
        3, ge=1, le=20, description="sentences in an extractive answer"
    )
    history_turns: int = Field(
        4, ge=0, le=50, description="earlier question/answer pairs given to the model"
    )
    best_source_last: bool = Field(
        True,
        description="write the passages into the prompt best last, right before the question "
        "(they keep their numbers: [1] is still the best)",
    )
    cite_support: bool = Field(
        True,
        description="a generated answer that cites nothing gets the source that holds most of "
        "what it says (at least 60 % of its words), never one that does not",
    )
    unsupported: Literal["flag", "keep"] = Field(
        "keep",
        description="a generated answer that still cites nothing (no source holds it): 'keep' "
        "returns it as an ordinary (uncited) answer; 'flag' appends a note that no source "
        "supports it and returns it as not found in the documents (with the bundled model it "
        "also flagged 47 % of answerable held-out questions: docs/benchmarks.md)",
    )


class ServeSettings(Section):
    host: str = Field("127.0.0.1", description="address `serve` listens on")
    port: int = Field(8080, ge=1, le=65535, description="port `serve` listens on")
    tls_cert: Path | None = Field(None, description="PEM certificate file: serve HTTPS")
    tls_key: Path | None = Field(None, description="PEM private key file for tls_cert")
    max_concurrent: int = Field(2, ge=1, le=64, description="answers generated at the same time")
    queue_size: int = Field(
        32, ge=0, description="requests waiting for a slot before 429 is returned"
    )
    queue_timeout_s: float = Field(
        60.0, gt=0, description="how long a request waits in the queue before 429"
    )
    request_timeout_s: float = Field(
        180.0, gt=0, description="time limit for one answer, queueing excluded"
    )
    max_body_kb: int = Field(
        256,
        ge=1,
        le=65536,
        description="largest API request body in KiB; a larger one is refused (413) before "
        "it is read",
    )
    max_messages: int = Field(
        64, ge=1, le=4096, description="messages one chat request may carry at most (else 400)"
    )
    max_message_chars: int = Field(
        16000, ge=1, description="characters one chat message may have at most (else 400)"
    )
    ui: bool = Field(True, description="mount the staff web UI at /")
    watch_drop: bool = Field(
        True,
        description="ingest files appearing in the drop folder while serving (instead of a "
        "separate `ingest --watch`, which cannot share a Milvus Lite file with the server)",
    )
    downloads: bool = Field(
        True, description="staff may download originals of documents they may see"
    )
    session_minutes: int = Field(480, ge=1, description="web sessions expire after this long")
    session_idle_minutes: int = Field(
        30,
        ge=1,
        description="web sessions end after this many minutes without activity (the page's "
        "background polls do not count)",
    )
    behind_tls_proxy: bool = Field(
        False,
        description="a reverse proxy terminates TLS in front of `serve`: cookies are always "
        "Secure and the web UI's origin is https",
    )
    trusted_proxies: list[str] = Field(
        [],
        description="addresses whose X-Forwarded-Proto and X-Forwarded-For headers are believed "
        "(uvicorn's forwarded_allow_ips), e.g. a reverse proxy's; empty (the default): none, so "
        "nobody can claim another client address",
    )
    public_origin: str | None = Field(
        None,
        pattern=r"^https?://[A-Za-z0-9.\-\[\]:]+$",
        description="the origin browsers use for the web UI (e.g. https://kb.example.com) when "
        "a proxy rewrites the Host header; unset: taken from each request's Host",
    )
    ui_cache_dir: Path | None = Field(
        None,
        description="a memory file system (tmpfs) where the web UI keeps uploads until they "
        "are submitted, in a private sub-folder; unset: /dev/shm, or <home>/tmp/ui on disk when "
        "/dev/shm cannot be used (logged, and a status warning)",
    )
    ui_upload_max_age_s: int = Field(
        300, ge=1, description="uploaded files not submitted within this many seconds are deleted"
    )
    ui_upload_quota_mb: int = Field(
        1024,
        ge=1,
        description="most MiB of uploaded, not yet submitted files one user may keep in the web "
        "UI's upload area (it is memory); uploads past it are refused until some are submitted",
    )


class MonitoringSettings(Section):
    tasks_kept: int = Field(
        10000, ge=100, description="recent ingestion jobs and questions kept for status pages"
    )
    show_names: bool = Field(
        False,
        description="show question text and document names in status, metrics and reports",
    )


class FinetuneSettings(Section):
    max_data_mb: int = Field(
        200, ge=1, description="largest training file `finetune data add` takes"
    )
    nice: int = Field(
        10,
        ge=0,
        le=19,
        description="how much lower the training process's CPU priority is than serving's",
    )
    threads: int = Field(
        0,
        ge=0,
        description="CPU threads a training job uses (0 = all cores but one, which stays with "
        "serving)",
    )
    batch_size: int = Field(2, ge=1, le=64, description="training examples per step")
    max_steps: int = Field(
        120,
        ge=0,
        description="steps a job trains at most when `finetune start` has no --max-steps (0 = "
        "every epoch in full); 120 ends a default job on the SQuAD tuning set within 45 minutes "
        "on 2 cores",
    )
    max_seq_tokens: int = Field(
        1024,
        ge=128,
        le=32768,
        description="longest training example in tokens: a QA prompt keeps as many passages as "
        "fit, as the answer engine does with the model's context",
    )
    passages: int = Field(
        3,
        ge=1,
        le=50,
        description="passages retrieved into each QA training prompt (serving offers "
        "answer.passages)",
    )
    drop_gold: float = Field(
        0.1,
        ge=0,
        le=1,
        description="share of answerable QA examples whose gold passage is taken out of the "
        "retrieved ones, so the model learns to answer 'not in the documents' (RAFT)",
    )
    lora_alpha: float = Field(0.0, ge=0, description="LoRA scaling alpha (0 = twice the rank)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA inputs")
    lora_layers: int = Field(
        0,
        ge=0,
        description="LoRA on the top N decoder layers only (0 = every layer): the layers below "
        "run forward only, so a step costs less",
    )
    warmup_share: float = Field(
        0.03, ge=0, lt=1, description="share of the steps the learning rate warms up over"
    )
    checkpoint_every: int = Field(
        50, ge=1, description="steps between encrypted checkpoints (--checkpoint-every)"
    )
    policy_check_s: float = Field(
        10.0,
        gt=0,
        description="how often a running job checks its base model's policy (and how often a "
        "paused job looks for a valid one)",
    )
