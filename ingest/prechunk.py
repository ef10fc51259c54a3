"""Chunking and BM25 term counting where the parse happens: in the parse child process.

On two cores the main process has one job worth its core: embedding (one torch thread). The
chunker counts tokens thousands of times per document and the BM25 analyzer stems and segments
every chunk; in the main process both hold the GIL and slow the embedder. Neither needs the
model, only its tokenizer, so the pipeline sends the parse child a :class:`ChunkSpec` (the
tokenizer as JSON plus :class:`ChunkParams`) and gets back a :class:`ChunkedDocument`: the
chunks and, per chunk, its analyzed terms with their counts. The terms are plaintext and travel
through the same in-memory pipe as the chunk text; the *keyed* term ids are computed in the main
process (:func:`keyed_term_freqs`), so the BM25 key never leaves it.

The results are exactly those of :func:`ingest.chunk.chunk_document` with
:meth:`ingest.embed.Embedder.count_tokens` and of :func:`ingest.sparse.doc_term_freqs` over
:func:`ingest.sparse.analyze`, whichever process computes them.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from .chunk import Chunk, ChunkParams, chunk_document
from .elements import ParsedDocument
from .embed import tokenizer_counter
from .sparse import TermHasher, analyze

__all__ = ["ChunkSpec", "ChunkedDocument", "chunk_and_count", "keyed_term_freqs", "warm_up"]

CountTokens = Callable[[str], int]
_COUNTERS: dict[str, CountTokens] = {}  # by tokenizer digest: each process builds one once


@dataclass(frozen=True)
class ChunkSpec:
    """What chunking needs of the embedder: its tokenizer (JSON) and the chunk sizes.

    Build it with :meth:`build`, which checks the JSON once (a bad one fails here, in the main
    process, rather than once per file in the children).
    """

    tokenizer_json: str = field(repr=False)
    params: ChunkParams
    digest: str

    @classmethod
    def build(cls, tokenizer_json: str, params: ChunkParams) -> ChunkSpec:
        """Raises ``ValueError`` when ``tokenizer_json`` is not a fast tokenizer."""
        spec = cls(tokenizer_json, params, hashlib.sha256(tokenizer_json.encode()).hexdigest())
        spec.count_tokens()
        return spec

    def count_tokens(self) -> CountTokens:
        """This process's counter for the tokenizer, built on first use (~20 ms)."""
        counter = _COUNTERS.get(self.digest)
        if counter is None:
            counter = _COUNTERS[self.digest] = tokenizer_counter(self.tokenizer_json)
        return counter


@dataclass(frozen=True)
class ChunkedDocument:
    """A parsed document's chunks with their BM25 terms (not yet keyed).

    ``document`` keeps the title, pages and warnings but not the elements (the chunks hold all
    their text), so less crosses the pipe. ``chunk_s`` is the time the chunking took where it
    ran (the pipeline's per-stage report).
    """

    document: ParsedDocument
    chunks: tuple[Chunk, ...]
    term_counts: tuple[dict[str, int], ...]  # per chunk: analyzed term -> count
    chunk_s: float = 0.0


def chunk_and_count(
    document: ParsedDocument, *, params: ChunkParams, count_tokens: CountTokens
) -> ChunkedDocument:
    """Chunk ``document`` and count each chunk's BM25 terms (of its ``embed_text``); pure."""
    chunks = tuple(chunk_document(document, params=params, count_tokens=count_tokens))
    counts = tuple(dict(Counter(analyze(c.embed_text))) for c in chunks)
    return ChunkedDocument(replace(document, elements=()), chunks, counts)


def keyed_term_freqs(counts: Mapping[str, int], hasher: TermHasher) -> dict[int, int]:
    """Term id -> count, equal (order included) to ``doc_term_freqs`` over the tokens that
    ``counts`` counts: terms whose keyed ids collide add up."""
    out: dict[int, int] = {}
    for term, n in counts.items():
        term_id = hasher.term_id(term)
        out[term_id] = out.get(term_id, 0) + n
    return out


def warm_up() -> None:
    """Load the analyzer's stemmer and jieba's dictionary (about 0.5 s, ~70 MiB) once, in the
    parse forkserver, so that children inherit them instead of loading them per file."""
    analyze("warming up the analyzer 预热分词词典")
