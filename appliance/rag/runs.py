"""Each judged query's two ranked lists, kept so that fusion can be scored without searching again.

Searching is the expensive part of judging a fusion (embedding, two Milvus searches per query);
fusing two ranked lists is pure arithmetic. So `appliance eval retrieval --fit` and
``bench/bench_fusion.py`` search every judged query once, through the real
:class:`~appliance.rag.retrieve.Retriever` (the product's own embedder, keyed BM25, Milvus and
registry), keep both chunk-level lists with their scores in a :class:`DevSet`, and then score any
number of fusion forms and constants offline with :func:`score_runs`. The score is the same as
the live search would give: the same lists, the same :func:`~appliance.rag.fuse.fuse_lists`, the
same deduplication of chunks into documents.

A :class:`DevSet` is stored as JSON holding document names, chunk ids and scores (never passage
text): benchmarks cache them outside the repository.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fuse import DEFAULT_FUSION, FusionPolicy, Ranked, fuse_lists
from .metrics import ndcg_at_k

__all__ = ["DevSet", "QueryRun", "collect_runs", "ranked_documents", "score_runs"]

K = 10
FORMAT = "kapp-devset-1"


@dataclass(frozen=True)
class QueryRun:
    """One judged query: its text, both retrievers' chunk lists (best first) and judgements."""

    id: str
    text: str
    dense: tuple[Ranked, ...]
    sparse: tuple[Ranked, ...]
    qrels: Mapping[str, int]


@dataclass(frozen=True)
class DevSet:
    """A labelled set's runs; ``doc_of`` maps every chunk id in them to its document name."""

    name: str
    runs: tuple[QueryRun, ...]
    doc_of: Mapping[str, str]
    depth: int

    def subset(self, keep: Callable[[QueryRun], bool], name: str | None = None) -> DevSet:
        return DevSet(
            name or self.name, tuple(r for r in self.runs if keep(r)), self.doc_of, self.depth
        )

    def to_json(self) -> dict[str, Any]:
        chunks = sorted(self.doc_of)
        at = {c: i for i, c in enumerate(chunks)}
        return {
            "format": FORMAT,
            "name": self.name,
            "depth": self.depth,
            "chunks": [[c, self.doc_of[c]] for c in chunks],
            "runs": [
                {
                    "id": r.id,
                    "text": r.text,
                    "qrels": dict(r.qrels),
                    "dense": [[at[h.id], h.score] for h in r.dense],
                    "sparse": [[at[h.id], h.score] for h in r.sparse],
                }
                for r in self.runs
            ],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> DevSet:
        if obj.get("format") != FORMAT:
            raise ValueError(f"Not a {FORMAT} file.")
        chunks = [str(c) for c, _ in obj["chunks"]]
        doc_of = {str(c): str(d) for c, d in obj["chunks"]}

        def hits(rows: Sequence[Sequence[Any]]) -> tuple[Ranked, ...]:
            return tuple(Ranked(chunks[int(i)], float(s)) for i, s in rows)

        runs = tuple(
            QueryRun(
                str(r["id"]),
                str(r["text"]),
                hits(r["dense"]),
                hits(r["sparse"]),
                {str(d): int(g) for d, g in r["qrels"].items()},
            )
            for r in obj["runs"]
        )
        return cls(str(obj["name"]), runs, doc_of, int(obj["depth"]))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as f:
            json.dump(self.to_json(), f, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def load(cls, path: Path) -> DevSet:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return cls.from_json(json.load(f))


def collect_runs(
    name: str,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    retriever: Any,
    *,
    groups: Sequence[str],
    depth: int,
    progress: Callable[[int, int], None] | None = None,
) -> DevSet:
    """Search every query once with both retrievers (``depth`` hits each) through ``retriever``
    (a :class:`~appliance.rag.retrieve.Retriever`) and keep the lists."""
    runs, doc_of = [], {}
    for n, (qid, text) in enumerate(queries.items(), start=1):
        dense, sparse = retriever.candidate_lists(
            text, groups=groups, dense_depth=depth, sparse_depth=depth
        )
        names = retriever.document_names(h.doc_id for h in (*dense, *sparse))
        for h in (*dense, *sparse):
            doc_of[h.id] = names.get(h.doc_id, h.doc_id)
        runs.append(
            QueryRun(
                qid,
                text,
                tuple(Ranked(h.id, h.score) for h in dense),
                tuple(Ranked(h.id, h.score) for h in sparse),
                dict(qrels[qid]),
            )
        )
        if progress is not None:
            progress(n, len(queries))
    return DevSet(name, tuple(runs), doc_of, depth)


def ranked_documents(chunks: Sequence[str], doc_of: Mapping[str, str], k: int = K) -> list[str]:
    """The first ``k`` distinct documents of a chunk ranking (what ``eval retrieval`` scores)."""
    return list(dict.fromkeys(doc_of[c] for c in chunks))[:k]


def score_runs(
    dev: DevSet,
    *,
    mode: str = "hybrid",
    policy: FusionPolicy = DEFAULT_FUSION,
    embedder_languages: frozenset[str] = frozenset({"en"}),
) -> list[float]:
    """nDCG@10 of every query in ``dev`` under ``mode`` (dense, sparse or hybrid fused by
    ``policy``), computed from the kept lists."""
    out = []
    for run in dev.runs:
        if mode == "dense":
            chunks = [h.id for h in run.dense]
        elif mode == "sparse":
            chunks = [h.id for h in run.sparse]
        else:
            fused = fuse_lists(
                run.text,
                run.dense,
                run.sparse,
                policy=policy,
                embedder_languages=embedder_languages,
                limit=len(run.dense) + len(run.sparse),
            )
            chunks = [h.id for h in fused.hits]
        out.append(ndcg_at_k(ranked_documents(chunks, dev.doc_of), run.qrels, K))
    return out
