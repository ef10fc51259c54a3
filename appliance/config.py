"""Settings: one TOML file (`<home>/appliance.toml`) with environment overrides.

Precedence, highest first: explicit keyword arguments (tests, CLI flags) → environment variables
``APPLIANCE__SECTION__KEY`` → files in the secrets directory → the TOML file → defaults.
Settings are loaded once at start (:func:`load_settings`) and passed down; nothing reads them at
import time. Every field carries a description; `appliance/defaults/appliance.toml` documents them
all and a test keeps the two in step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from secure.clock import DEFAULT_SKEW, MAX_SKEW

from .errors import ConfigError

SETTINGS_FILE = "appliance.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SecuritySettings(_Section):
    kdf_cost_log2: int = Field(
        17,
        ge=10,
        le=22,
        description="scrypt cost (log2 N) for sealing the root key and issuer keys",
    )
    host_factors_required: int = Field(
        0,
        ge=0,
        description="at least this many hashed host factors must match; it can only raise the "
        "k a policy was signed with, never lower it (0 = the policy's own k)",
    )
    clock_skew_s: int = Field(
        DEFAULT_SKEW,
        ge=0,
        le=MAX_SKEW,
        description=f"allowed backwards clock skew (seconds) against the trusted-time high-water "
        f"mark and a policy's issue time; at most {MAX_SKEW} (an hour covers NTP-less clock drift "
        "and a daylight-saving mistake; more would let a clock set back by days pass the "
        "rollback checks)",
    )
    question_logging: Literal["hmac", "plain", "none"] = Field(
        "hmac",
        description="how question text enters the audit log: as an HMAC (default), in plain text, "
        "or not at all",
    )
    audit_checkpoint_every: int = Field(
        100, ge=1, description="write a signed audit checkpoint every N entries"
    )
    decrypt_threads: int = Field(
        0, ge=0, description="threads used to decrypt model files (0 = all cores)"
    )


class UserSettings(_Section):
    min_password_length: int = Field(12, ge=8, description="minimum password length")
    lockout_failures: int = Field(
        5,
        ge=1,
        description="wrong passwords in a row before logins to the account from clients not "
        "recognised for it are delayed (and before a trusted device loses its trust)",
    )
    lockout_minutes: int = Field(
        15,
        ge=1,
        description="the longest such delay: it starts at one minute and doubles with each "
        "further wrong password; recognised clients are never delayed",
    )
    client_failures: int = Field(
        10,
        ge=1,
        description="failed logins from one client address (IPv6: its /64) within "
        "client_window_minutes before its further attempts wait a doubling time",
    )
    client_window_minutes: int = Field(
        60, ge=1, description="the sliding window in which a client address's failures count"
    )
    client_max_delay_minutes: int = Field(
        15, ge=1, description="the longest wait for a client address (it doubles from 1 second)"
    )
    global_failures_per_minute: int = Field(
        30,
        ge=1,
        description="failed logins per minute from all addresses together above which logins "
        "without a trusted device are refused until the rate drops",
    )
    trusted_device_days: int = Field(
        30,
        ge=1,
        description="how long a browser (device cookie) and an address stay recognised for an "
        "account after a successful login",
    )
    password_cost_log2: int = Field(
        15, ge=10, le=20, description="scrypt cost (log2 N) for password hashes"
    )


class IngestSettings(_Section):
    mode: Literal["inbox", "mirror"] = Field(
        "inbox",
        description="inbox: originals move into the encrypted vault and leave the drop folder; "
        "mirror: the drop folder is a live source (e.g. a mounted share) and is never changed",
    )
    drop_dir: Path | None = Field(
        None, description="the drop folder (default <home>/drop); one sub-folder per group"
    )
    settle_s: float = Field(
        2.0, ge=0, description="a file is picked up once unchanged for this many seconds"
    )
    watch_interval_s: float = Field(
        2.0, gt=0, description="how often `ingest --watch` rescans besides file events"
    )
    max_file_mb: int = Field(200, ge=1, description="larger files are quarantined as oversized")
    timeout_s: float = Field(120.0, gt=0, description="time limit for parsing one file")
    max_pages: int = Field(2000, ge=1, description="pages parsed per document at most")
    ocr: bool = Field(True, description="OCR pages without text and images (needs Tesseract)")
    ocr_languages: str = Field("eng+chi_sim", description="Tesseract language codes")
    chunk_max_tokens: int = Field(
        256, ge=32, description="chunk size in the embedder's tokens (its limit is a ceiling)"
    )
    chunk_overlap_tokens: int = Field(32, ge=0, description="overlap between chunks")
    parse_ahead: int = Field(
        2, ge=1, le=8, description="files parsed at once in child processes while others embed"
    )
    parse_ahead_chunks: int = Field(
        3000, ge=1, description="parsing pauses while this many parsed chunks wait to be embedded"
    )
    parse_nice: int = Field(
        10, ge=0, le=19, description="how much lower the parse processes' CPU priority is"
    )


class MilvusSettings(_Section):
    uri: str = Field(
        "",
        description="Milvus URI: empty for Milvus Lite in <home>/milvus/chunks.db, or a server "
        "such as http://milvus:19530",
    )
    token: str = Field("", description="Milvus token (user:password) for a server")
    collection: str = Field("chunks", description="collection name")
    index_type: Literal["FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX"] = Field(
        "FLAT",
        description="dense vector index: FLAT (exact), IVF_FLAT (clustered, ivf_* settings), "
        "HNSW (graph, hnsw_* settings; Milvus server only) or AUTOINDEX (Milvus chooses); "
        "changing it, hnsw_m, hnsw_ef_construction or ivf_nlist rebuilds the index of an "
        "existing collection from its stored vectors the next time it is opened",
    )
    hnsw_m: int = Field(16, ge=2, le=2048, description="HNSW: links per node (build parameter)")
    hnsw_ef_construction: int = Field(
        200, ge=1, le=65536, description="HNSW: candidates kept while building the graph"
    )
    hnsw_ef: int = Field(
        128,
        ge=1,
        le=16384,
        description="HNSW: candidates kept per search (at least the hits asked for); higher is "
        "closer to exact and slower",
    )
    ivf_nlist: int = Field(
        1024, ge=1, le=65536, description="IVF_FLAT: clusters the vectors are split into (build)"
    )
    ivf_nprobe: int = Field(
        64,
        ge=1,
        le=65536,
        description="IVF_FLAT: clusters scanned per search; higher is closer to exact and slower",
    )
    timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="time limit for one Milvus call; a server that does not answer in time "
        "counts as unavailable (questions answer 503, ingestion waits and retries)",
    )
    retry_for_s: float = Field(
        300.0,
        ge=0,
        description="how long ingestion keeps retrying a Milvus write while Milvus is "
        "unavailable before the job stops (its files stay in the drop folder, none is "
        "quarantined); 0: stop at once",
    )
    retry_initial_s: float = Field(
        0.5, gt=0, description="first pause between those retries; it doubles each time"
    )
    retry_max_s: float = Field(10.0, gt=0, description="longest pause between those retries")
    reconnect_max_s: float = Field(
        1.0,
        gt=0,
        le=120,
        description="longest pause between attempts to reconnect to a Milvus server that went "
        "away: answers resume at most this long after it is back",
    )
    tls_ca: Path | None = Field(
        None,
        description="https:// URIs: PEM file of the CA (or the self-signed certificate) that "
        "signed the Milvus server's certificate; unset: the system's trusted CAs",
    )
    tls_cert: Path | None = Field(
        None, description="mutual TLS: the appliance's client certificate (PEM); needs tls_ca"
    )
    tls_key: Path | None = Field(None, description="mutual TLS: the key of tls_cert (PEM)")
    tls_server_name: str = Field(
        "",
        description="the name to expect in the server's certificate when it differs from the "
        "URI's host (e.g. an IP address in the URI)",
    )


class EmbeddingSettings(_Section):
    model: str = Field(
        "bundled",
        description="'bundled' (all-MiniLM-L6-v2, English) or a local sentence-transformers "
        "directory",
    )
    device: str = Field("cpu", description="cpu or cuda")
    batch_size: int = Field(8, ge=1, description="texts per embedding batch")
    threads: int = Field(
        1,
        ge=0,
        description="CPU threads for embedding (0 = all cores); 1 leaves a core for parsing",
    )


class RetrievalSettings(_Section):
    top_k: int = Field(8, ge=1, le=100, description="passages returned per question")
    candidates: int = Field(
        100, ge=1, le=1000, description="results fetched from each retriever before fusion"
    )
    fusion: Literal["convex", "rrf"] = Field(
        "convex",
        description="how the embedder's and BM25's lists become one: convex (weighted sum of "
        "normalised scores) or rrf (weighted reciprocal rank); chosen by leave-one-collection-"
        "out (docs/benchmarks.md), refit on your own data with `appliance eval retrieval --fit`",
    )
    fusion_normalisation: Literal["bounds", "minmax", "zscore"] = Field(
        "bounds",
        description="convex only: bounds maps each list from its theoretical lowest score "
        "(cosine -1, BM25 0) to its top score onto 0..1; minmax from its lowest returned score; "
        "zscore to mean 0 and standard deviation 1",
    )
    fusion_dense_weight: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="the embedder's share of the fused score (BM25 gets the rest); a query in "
        "a language the embedder does not read ranks by BM25 alone whatever this says",
    )
    fusion_rrf_k: int = Field(
        60, ge=0, le=1000, description="rrf only: the constant k in weight / (k + rank)"
    )


class LlmSettings(_Section):
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


class AnswerSettings(_Section):
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


class ServeSettings(_Section):
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
        ["127.0.0.1"],
        description="addresses whose X-Forwarded-Proto and X-Forwarded-For headers are believed "
        "(uvicorn's forwarded_allow_ips); empty: none",
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


class MonitoringSettings(_Section):
    tasks_kept: int = Field(
        10000, ge=100, description="recent ingestion jobs and questions kept for status pages"
    )
    show_names: bool = Field(
        False,
        description="show question text and document names in status, metrics and reports",
    )


class FinetuneSettings(_Section):
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


class Settings(BaseSettings):
    """All settings of one appliance home."""

    model_config = SettingsConfigDict(
        env_prefix="APPLIANCE__",
        env_nested_delimiter="__",
        extra="forbid",
        secrets_dir=None,
    )

    home: Path = Field(Path("."), description="the data directory (set by --home / APPLIANCE_HOME)")
    secrets_dir: Path | None = Field(
        None,
        description="directory of secret files (e.g. /run/secrets): 'passphrase' holds the root "
        "key passphrase",
    )
    security: SecuritySettings = Field(
        default_factory=SecuritySettings,  # type: ignore[arg-type]
        description="keys, policies, trusted time and the audit log",
    )
    users: UserSettings = Field(
        default_factory=UserSettings,  # type: ignore[arg-type]
        description="accounts, passwords and login throttling",
    )
    ingest: IngestSettings = Field(
        default_factory=IngestSettings,  # type: ignore[arg-type]
        description="the drop folder, parsing and chunking",
    )
    milvus: MilvusSettings = Field(
        default_factory=MilvusSettings,  # type: ignore[arg-type]
        description="where chunks are stored",
    )
    embedding: EmbeddingSettings = Field(
        default_factory=EmbeddingSettings,  # type: ignore[arg-type]
        description="the embedding model",
    )
    retrieval: RetrievalSettings = Field(
        default_factory=RetrievalSettings,  # type: ignore[arg-type]
        description="hybrid search",
    )

    llm: LlmSettings = Field(
        default_factory=LlmSettings,  # type: ignore[arg-type]
        description="the local language model",
    )
    answer: AnswerSettings = Field(
        default_factory=AnswerSettings,  # type: ignore[arg-type]
        description="how answers are built from passages",
    )
    serve: ServeSettings = Field(
        default_factory=ServeSettings,  # type: ignore[arg-type]
        description="the HTTP server, API and web UI",
    )
    monitoring: MonitoringSettings = Field(
        default_factory=MonitoringSettings,  # type: ignore[arg-type]
        description="status, metrics and reports",
    )
    finetune: FinetuneSettings = Field(
        default_factory=FinetuneSettings,  # type: ignore[arg-type]
        description="fine-tuning jobs (LoRA) on the appliance",
    )

    @property
    def drop_dir(self) -> Path:
        return self.ingest.drop_dir or self.home / "drop"

    @property
    def milvus_uri(self) -> str:
        return self.milvus.uri or str(self.home / "milvus" / "chunks.db")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)


def load_settings(home: Path, **overrides: object) -> Settings:
    """Load `<home>/appliance.toml` (if present) under environment overrides."""
    from pydantic import ValidationError

    toml_file = home / SETTINGS_FILE

    class HomeSettings(Settings):
        model_config = SettingsConfigDict(toml_file=toml_file if toml_file.is_file() else None)

    try:
        return HomeSettings(home=home, **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(
            f"Invalid settings ({problems}).",
            hint=f"Fix {toml_file} or the APPLIANCE__… environment variables.",
        ) from exc


def write_settings(home: Path, section: str, values: Mapping[str, object]) -> list[str]:
    """Set ``values`` in ``[section]`` of ``<home>/appliance.toml``, keeping its comments and
    every other setting (the file is replaced atomically, with its permissions). Values are
    checked against the section's model first: invalid ones raise :class:`ConfigError` and
    nothing is written. Returns the environment variables that override what was written."""
    import tomlkit
    from pydantic import ValidationError

    path = home / SETTINGS_FILE
    text = path.read_text(encoding="utf-8") if path.is_file() else default_settings_text()
    doc = tomlkit.parse(text)
    if section not in doc:
        doc[section] = tomlkit.table()
    table = doc[section]
    for key, value in values.items():
        table[key] = value  # type: ignore[index]
    model = Settings.model_fields[section].annotation
    try:
        model.model_validate(table.unwrap())  # type: ignore[union-attr]
    except ValidationError as exc:
        raise ConfigError(
            f"Refusing to write invalid [{section}] settings: {exc.errors()[0]['msg']}.",
            hint=f"Check the values for {', '.join(values)}.",
        ) from None
    tmp = path.with_name(f".{SETTINGS_FILE}.tmp")
    tmp.write_text(tomlkit.dumps(doc), encoding="utf-8")
    if path.is_file():
        os.chmod(tmp, path.stat().st_mode & 0o7777)
    os.replace(tmp, path)
    names = {f"APPLIANCE__{section}__{key}".upper() for key in values}
    return sorted(k for k in os.environ if k.upper() in names)


def default_settings_text() -> str:
    """The documented default settings file written by `appliance init`."""
    return (Path(__file__).parent / "defaults" / SETTINGS_FILE).read_text(encoding="utf-8")
