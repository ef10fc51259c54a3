"""What one indexed version becomes in Milvus: a record per chunk (encrypted passage, dense
vector, keyed BM25 vector) and the term statistics the registry adds when it commits."""

from __future__ import annotations

from secure.records import RecordCipher

from .bm25_stats import TermCounts
from .chunk import Chunk
from .jobs import Prepared
from .schema import PassageText, seal_passage
from .sparse import Bm25Params, doc_vector
from .store import ChunkRecord


def build_records(
    doc_id: str,
    version: int,
    group: str,
    prepared: Prepared,
    *,
    corpus: tuple[int, int],
    cipher: RecordCipher,
    bm25: Bm25Params,
) -> tuple[list[ChunkRecord], TermCounts]:
    """``corpus``: (chunks, total length) already indexed in ``group``, for BM25's average
    length (the group's own: a weight never depends on another group's documents)."""
    tfs = prepared.tfs
    lengths = [sum(tf.values()) for tf in tfs]
    n_docs, total = corpus
    avgdl = (total + sum(lengths)) / max(1, n_docs + len(lengths))
    df: dict[int, int] = {}
    records = []
    for chunk, vector, tf, length in zip(
        prepared.chunks, prepared.vectors, tfs, lengths, strict=True
    ):
        for term in tf:
            df[term] = df.get(term, 0) + 1
        chunk_id = f"{doc_id}:{version}:{chunk.index}"
        records.append(
            ChunkRecord(
                id=chunk_id,
                doc_id=doc_id,
                version=version,
                groups=(group,),
                page=chunk.page_start if chunk.page_start is not None else -1,
                kind=chunk.kind,
                language=chunk.language or "",
                payload=seal_passage(cipher, chunk_id, _passage(chunk, prepared.parsed.title)),
                dense=vector,
                sparse=doc_vector(tf, doc_len=length, avgdl=avgdl or 1.0, params=bm25),
            )
        )
    return records, TermCounts(len(records), sum(lengths), df)


def _passage(chunk: Chunk, title: str) -> PassageText:
    return PassageText(chunk.text, chunk.section_path, title, chunk.page_start, chunk.page_end)


__all__ = ["build_records"]
