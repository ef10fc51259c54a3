"""Chunking in the parse child: the same chunks and BM25 terms as in the main process, with
the embedder's real tokenizer sent as JSON; failures and time limits of the chunking phase."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from ingest.chunk import ChunkParams, chunk_document
from ingest.elements import Element, ParsedDocument
from ingest.embed import Embedder
from ingest.errors import Rejected
from ingest.isolate import parse_and_chunk_isolated
from ingest.parse import ParseLimits, parse_file
from ingest.prechunk import ChunkSpec, chunk_and_count, keyed_term_freqs
from ingest.sparse import TermHasher, analyze, doc_term_freqs
from tests.ingest.conftest import corpus_file
from tests.ingest.test_embed import bundled_embedder

PARAMS = ChunkParams(max_tokens=128, overlap_tokens=16)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return bundled_embedder()


@pytest.fixture(scope="module")
def spec(embedder: Embedder) -> ChunkSpec:
    assert embedder.tokenizer_json is not None  # the bundled model has a fast tokenizer
    return ChunkSpec.build(embedder.tokenizer_json, PARAMS)


def _sentences(path: Path, *, limits: ParseLimits) -> ParsedDocument:
    """A parse that is quick but whose chunking is slow: 300,000 sentences."""
    text = "".join(f"Sentence number {i} is here. " for i in range(300_000))
    return ParsedDocument(elements=(Element("text", text),), title="long", pages=1)


def _not_text(path: Path, *, limits: ParseLimits) -> ParsedDocument:
    """A document the chunker cannot handle (a bug of a parser, in effect)."""
    return ParsedDocument(elements=(Element("text", None),), title="bad", pages=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "relative",
    [
        "markitdown/test.docx",  # headings, a table
        "unstructured/language-docs/UDHR_first_article_all.txt",  # Chinese among 400 languages
        "markitdown/test.xlsx",  # sheets: tables split by rows
    ],
)
def test_child_chunks_equal_main_process_chunks(
    relative: str, spec: ChunkSpec, embedder: Embedder
) -> None:
    source = corpus_file(relative)
    chunked = parse_and_chunk_isolated(source, limits=ParseLimits(), chunking=spec)
    parsed = parse_file(source, limits=ParseLimits())
    expected = chunk_document(parsed, params=PARAMS, count_tokens=embedder.count_tokens)
    assert len(expected) > 1 and list(chunked.chunks) == expected
    assert list(chunked.term_counts) == [dict(Counter(analyze(c.embed_text))) for c in expected]
    document = chunked.document
    assert (document.title, document.pages, document.warnings) == (
        parsed.title,
        parsed.pages,
        parsed.warnings,
    )
    assert document.elements == () and chunked.chunk_s > 0


def test_tokenizer_from_json_counts_like_the_embedder(spec: ChunkSpec, embedder: Embedder) -> None:
    count = spec.count_tokens()
    texts = [
        "",
        "hello world",
        "[CLS] x [SEP]",
        "员工每年享有十五天带薪年假。",
        "a" * 300,
        "é" * 50,
    ]
    assert [count(t) for t in texts] == [embedder.count_tokens(t) for t in texts]
    assert count("word " * 1000) == 1000  # no truncation, no special tokens


def test_keyed_term_freqs_equal_doc_term_freqs() -> None:
    hasher = TermHasher(bytes(range(32)))
    text = "Rules of the road: the road is wide, roads are long. 道路交通安全法规定道路"
    counts = chunk_and_count(
        ParsedDocument(elements=(Element("text", text),), title="", pages=1),
        params=PARAMS,
        count_tokens=len,
    ).term_counts[0]
    keyed = keyed_term_freqs(counts, hasher)
    expected = doc_term_freqs(analyze(text), hasher)
    assert list(keyed.items()) == list(expected.items()) and max(keyed.values()) > 1


def test_a_bad_tokenizer_is_refused_in_the_main_process() -> None:
    with pytest.raises(ValueError, match="fast tokenizer"):
        ChunkSpec.build('{"not": "a tokenizer"}', PARAMS)


def test_chunking_error_in_child_is_an_index_error(spec: ChunkSpec, tmp_path: Path) -> None:
    with pytest.raises(Rejected) as info:
        parse_and_chunk_isolated(tmp_path, limits=ParseLimits(), chunking=spec, parser=_not_text)
    assert info.value.code == "index-error" and "AttributeError" in info.value.message


def test_chunking_has_its_own_time_limit(spec: ChunkSpec, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(Rejected) as info:
        parse_and_chunk_isolated(
            tmp_path, limits=ParseLimits(timeout_s=1), chunking=spec, parser=_sentences
        )
    assert info.value.code == "timeout"
    assert info.value.message.startswith("Chunking the parsed text took longer than 1 s")
    assert time.monotonic() - started < 30
