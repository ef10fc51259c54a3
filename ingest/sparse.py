"""Keyed BM25: sparse vectors computed on our side, so Milvus never sees words.

Milvus' built-in BM25 would need the chunk plaintext in Milvus and would keep a readable
vocabulary. Instead we analyze text here and name each term by ``HMAC-SHA256(key, term)``
truncated to a uint32 (SECURITY.md: "term ids are keyed hashes"). The scores reproduce Milvus'
own BM25 (``knowhere`` + ``BM25Stats.BuildIDF``):

* document side: ``tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))`` per term, stored in
  a sparse field searched with the ``IP`` metric;
* query side: ``count_in_query * ln(1 + (N - df + 0.5) / (df + 0.5))`` per term, with ``N`` and
  ``df`` summed over the groups the asking user may read (the registry keeps them per group,
  `ingest/bm25_stats.py`; :class:`CorpusStats` is the same in memory for benchmarks); repeated
  query terms add, as in Milvus, whose query vector holds term counts.

Because document weights use their group's ``avgdl`` at ingest time, they drift as it grows; the
registry may re-weight when ``avgdl`` has moved far (the ranking impact of small drift is nil).

The analyzer (:func:`analyze`) follows Milvus' ``english`` analyzer for non-Han text (words of
letters and digits, lower-case, Lucene stop words, Snowball English stemmer) and jieba's search
mode for Han runs, each script run on its own. The choices were measured with
``bench/bench_sparse.py`` (results in ``bench/results/sparse.json``).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import re
import threading
import unicodedata
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeGuard

from .stopwords import ENGLISH_STOP_WORDS

__all__ = [
    "Analyzer",
    "AnalyzerConfig",
    "Bm25Params",
    "CorpusStats",
    "TermHasher",
    "analyze",
    "configure_jieba",
    "doc_term_freqs",
    "doc_vector",
    "query_vector",
]

KEY_BYTES = 32
_UINT32_SLOTS = 2**32 - 1  # Milvus reserves the largest uint32 as a sparse index
_MAX_TOKEN_CHARS = 40  # like Milvus' RemoveLongFilter: longer "words" are noise (hashes, base64)

# Han ideographs (CJK unified + extension A + compatibility + supplementary planes).
_HAN_RUN = re.compile("([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]+)")
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_WORD_NO_APOSTROPHE = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class AnalyzerConfig:
    """The knobs of :class:`Analyzer`; the defaults are the measured best (see module doc)."""

    stop_words: frozenset[str] = ENGLISH_STOP_WORDS
    stem: bool = True
    jieba_mode: Literal["search", "exact"] = "search"  # lcut_for_search or lcut
    nfkc: bool = True  # fold full-width letters and digits ("ＡＢＣ１２３" -> "ABC123")
    keep_apostrophes: bool = False  # "john's" one token (True) or "john", "s" (False, Milvus)


class Analyzer:
    """Turns text into the terms BM25 counts; language-aware per script run."""

    def __init__(self, config: AnalyzerConfig | None = None) -> None:
        self.config = config or AnalyzerConfig()
        self._word = _WORD if self.config.keep_apostrophes else _WORD_NO_APOSTROPHE
        self._stem = _STEM if self.config.stem else None

    def analyze(self, text: str) -> list[str]:
        if self.config.nfkc:
            text = unicodedata.normalize("NFKC", text)
        tokens: list[str] = []
        for i, run in enumerate(_HAN_RUN.split(text)):
            if not run:
                continue
            tokens.extend(self._han(run) if i % 2 else self._latin(run))
        return tokens

    def _latin(self, run: str) -> list[str]:
        words = [w.lower().replace("’", "'") for w in self._word.findall(run)]
        words = [w for w in words if len(w) < _MAX_TOKEN_CHARS and w not in self.config.stop_words]
        if self._stem is None:
            return words
        return [self._stem(w) for w in words]

    def _han(self, run: str) -> list[str]:
        jieba = _jieba_tokenizer()
        return jieba.lcut_for_search(run) if self.config.jieba_mode == "search" else jieba.lcut(run)


class _EnglishStemmer:
    """Snowball English (Porter2, the stemmer Milvus uses) via PyStemmer, one per thread
    because PyStemmer's stemmers are not thread-safe."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __call__(self, word: str) -> str:
        stem = getattr(self._local, "stem", None)
        if stem is None:
            import Stemmer

            stemmer = Stemmer.Stemmer("english")
            stemmer.maxCacheSize = 50_000
            stem = self._local.stem = stemmer.stemWord
        return str(stem(word))


_STEM = _EnglishStemmer()


_JIEBA_LOCK = threading.Lock()
_JIEBA: Any = None
_JIEBA_CACHE_DIR: Path | None = None


def configure_jieba(cache_dir: Path | None) -> None:
    """Choose where jieba may keep its dictionary cache; call once at start, before any text.

    jieba builds a prefix dictionary from its bundled word list on first use (about 0.7 s here)
    and by default writes it to the system temp dir as ``jieba.cache``, and reads a cache found
    there. ``None`` (the default) builds it in memory and writes nothing; a directory (owned by
    the appliance) makes later starts load the cache from there (faster). The cache holds only
    jieba's own dictionary, never document text. Nothing is downloaded either way.
    """
    global _JIEBA_CACHE_DIR
    with _JIEBA_LOCK:
        if _JIEBA is not None:
            raise RuntimeError("configure_jieba must be called before the first Chinese text.")
        _JIEBA_CACHE_DIR = cache_dir


def _jieba_tokenizer() -> Any:
    """The shared jieba tokenizer, loaded on first use (it takes about a second)."""
    global _JIEBA
    with _JIEBA_LOCK:
        if _JIEBA is None:
            _JIEBA = _load_jieba(_JIEBA_CACHE_DIR)
        return _JIEBA


def _load_jieba(cache_dir: Path | None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jieba 0.42 imports the deprecated pkg_resources
        import jieba
    logging.getLogger("jieba").setLevel(logging.WARNING)  # it logs each load at DEBUG
    tokenizer = jieba.Tokenizer()
    if cache_dir is None:
        tokenizer.FREQ, tokenizer.total = tokenizer.gen_pfdict(tokenizer.get_dict_file())
        tokenizer.initialized = True
    else:
        tokenizer.tmp_dir = str(cache_dir)
        tokenizer.initialize()
    return tokenizer


_DEFAULT_ANALYZER: Analyzer | None = None


def analyze(text: str) -> list[str]:
    """Terms of ``text`` with the default :class:`AnalyzerConfig` (same for documents and queries).

    English and other non-Han text: words of letters and digits, lower-cased, stop words
    dropped, Snowball-stemmed. Han runs: jieba search-mode words. Punctuation and whitespace are
    dropped; digits are kept. jieba loads lazily on the first Han text (:func:`configure_jieba`).
    """
    global _DEFAULT_ANALYZER
    if _DEFAULT_ANALYZER is None:
        _DEFAULT_ANALYZER = Analyzer()
    return _DEFAULT_ANALYZER.analyze(text)


class TermHasher:
    """Maps a term to its keyed id: ``HMAC-SHA256(key, term)`` reduced to ``[0, 2**32 - 1)``.

    ``key`` is the 32-byte BM25 term key the key hierarchy derives from the root key (label
    ``bm25-terms``). Collisions (about one per 2**32 pairs) only merge two terms' counts, which
    is harmless for ranking. Ids are cached per instance; the key never appears in ``repr``.
    """

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise ValueError(f"The BM25 term key must be {KEY_BYTES} bytes.")
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self._cached = functools.lru_cache(maxsize=1 << 17)(self._compute)

    def term_id(self, term: str) -> int:
        return self._cached(term)

    def _compute(self, term: str) -> int:
        mac = self._mac.copy()
        mac.update(term.encode("utf-8"))
        return int.from_bytes(mac.digest()[:8], "big") % _UINT32_SLOTS

    def __repr__(self) -> str:
        return "TermHasher(<key hidden>)"


@dataclass(frozen=True)
class Bm25Params:
    k1: float = 1.2
    b: float = 0.75


def doc_term_freqs(tokens: list[str], hasher: TermHasher) -> dict[int, int]:
    """Term id -> count in the document (the document length is ``len(tokens)``)."""
    return dict(Counter(hasher.term_id(t) for t in tokens))


def doc_vector(
    tf: Mapping[int, int], *, doc_len: int, avgdl: float, params: Bm25Params
) -> dict[int, float]:
    """BM25 document weights; ``avgdl`` below 1 is raised to 1, as Milvus does."""
    norm = params.k1 * (1.0 - params.b + params.b * doc_len / max(avgdl, 1.0))
    return {t: n * (params.k1 + 1.0) / (n + norm) for t, n in tf.items() if n > 0}


def query_vector(
    tokens: list[str], hasher: TermHasher, *, df: Mapping[int, int], n_docs: int
) -> dict[int, float]:
    """Query weights ``count * idf``; dot it with :func:`doc_vector` outputs to score."""
    counts = Counter(hasher.term_id(t) for t in tokens)
    return {t: n * idf(df.get(t, 0), n_docs) for t, n in counts.items()}


def idf(df: int, n_docs: int) -> float:
    return math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))


@dataclass
class CorpusStats:
    """Document count, total length and per-term document frequency of one collection.

    A value object with no I/O: the registry persists it (:meth:`to_json`) and updates it as
    documents' chunks are written (:meth:`add`) or deleted (:meth:`remove`).
    """

    n_docs: int = 0
    total_len: int = 0
    df: dict[int, int] = field(default_factory=dict)

    @property
    def avgdl(self) -> float:
        return self.total_len / self.n_docs if self.n_docs else 0.0

    def add(self, tf: Mapping[int, int], doc_len: int) -> None:
        self.n_docs += 1
        self.total_len += doc_len
        for term in tf:
            self.df[term] = self.df.get(term, 0) + 1

    def remove(self, tf: Mapping[int, int], doc_len: int) -> None:
        """Undo :meth:`add` for the same ``tf``; refuses to go below zero (stats out of sync)."""
        if self.n_docs < 1 or self.total_len < doc_len or any(self.df.get(t, 0) < 1 for t in tf):
            raise ValueError(
                "BM25 corpus statistics do not contain this document; rebuild them from the "
                "registry (they are out of sync)."
            )
        self.n_docs -= 1
        self.total_len -= doc_len
        for term in tf:
            left = self.df[term] - 1
            if left:
                self.df[term] = left
            else:
                del self.df[term]

    def to_json(self) -> dict[str, Any]:
        return {
            "n_docs": self.n_docs,
            "total_len": self.total_len,
            "df": {str(t): n for t, n in sorted(self.df.items())},
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CorpusStats:
        """Parse what :meth:`to_json` wrote; raises ``ValueError`` on any malformed field."""
        n_docs, total_len, df = obj.get("n_docs"), obj.get("total_len"), obj.get("df")
        if not (_count(n_docs) and _count(total_len) and isinstance(df, dict)):
            raise ValueError("BM25 corpus statistics are malformed; rebuild them.")
        parsed: dict[int, int] = {}
        for key, value in df.items():
            term = int(key) if isinstance(key, str) and key.isascii() and key.isdigit() else -1
            if not (0 <= term < _UINT32_SLOTS and _count(value) and 0 < value <= n_docs):
                raise ValueError("BM25 corpus statistics are malformed; rebuild them.")
            parsed[term] = value
        return cls(n_docs=n_docs, total_len=total_len, df=parsed)


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
