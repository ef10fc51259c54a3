"""Settings sections for keys, accounts and the data path: security, users, ingest, milvus,
embedding, retrieval (:mod:`appliance.config` assembles them)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from secure.clock import DEFAULT_SKEW, MAX_SKEW


class Section(BaseModel):
    """One `[section]` of appliance.toml: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


class SecuritySettings(Section):
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


class UserSettings(Section):
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


class IngestSettings(Section):
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


class MilvusSettings(Section):
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


class EmbeddingSettings(Section):
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
    trace_queries: bool = Field(
        True,
        description="embed questions through a TorchScript trace of the model, checked "
        "against the eager model at start (same vectors, ~4 ms sooner, ~76 MB more memory); falls "
        "back by itself",
    )


class RetrievalSettings(Section):
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
    dense_memory: Literal["auto", "on", "off"] = Field(
        "auto",
        description="exact dense search in the server's memory, in front of Milvus (float16 "
        "vectors plus residuals, rescored exactly, and the sealed passages; never on disk): "
        "auto = with Milvus Lite, whose exact FLAT search costs about 25 ms at 100k chunks; on "
        "= also with a Milvus server; off = Milvus searches every question",
    )
    dense_memory_mb: int = Field(
        1024,
        ge=1,
        description="most memory (MB) the in-memory dense index may take: per chunk 4 bytes "
        "per vector dimension plus its sealed passage (384-d: about 3 KB, some 300,000 chunks "
        "in 1024 MB); above it dense searches stay with Milvus",
    )
