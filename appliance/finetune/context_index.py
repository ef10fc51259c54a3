"""Retrieval for training examples: the data set's contexts in a scratch collection.

Why a scratch collection, and not the appliance's own document index: a QA row's gold passage is
its ``context``, which need not be (and usually is not) a document the appliance holds, and the
prompt must look like serving's, so distractors have to compete with the gold passage the way
documents compete at serving. So the distinct contexts of the data set are indexed through the
appliance's real write path (``Pipeline.index_parsed``: the same chunking, the home's embedding
model, keyed BM25, encrypted chunk text, Milvus Lite) and every question is searched with the
real :class:`~appliance.rag.retrieve.Retriever` in hybrid mode, as the answer engine does. This
is what `appliance eval retrieval` builds (:func:`appliance.rag.evaluate.build_scratch`), and
it never touches the appliance's own collection or what staff may see.

The scratch lives inside the job's folder in the home (not in /tmp), under random keys held in
memory only, and is deleted as soon as the examples are built: nothing of it can be read later,
even from a backup.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..rag.beir import BeirSet
from ..rag.beir import Passage as ContextPassage
from ..rag.evaluate import GROUP, build_scratch
from ..rag.retrieve import Passage
from .rows import QaRow, Row


class ContextIndex:
    """The distinct contexts of some QA rows, searchable like the appliance's documents."""

    def __init__(self, rows: Sequence[Row]) -> None:
        self._ids: dict[str, str] = {}  # context text -> document name
        self._titles: dict[str, str] = {}
        for row in rows:
            known = not isinstance(row, QaRow) or row.context is None or row.context in self._ids
            if not known:
                assert isinstance(row, QaRow) and row.context is not None
                self._ids[row.context] = f"d{len(self._ids):05d}"
                self._titles[row.context] = row.title.replace("_", " ")
        self._retriever: Any = None
        self._store: Any = None
        self._workdir: Path | None = None

    def __len__(self) -> int:
        return len(self._ids)

    def gold_of(self, row: QaRow) -> str | None:
        """The document name of the row's context (None: the row has none)."""
        return self._ids.get(row.context) if row.context is not None else None

    def build(
        self,
        workdir: Path,
        embedder: Any,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        passages = tuple(
            ContextPassage(doc, self._titles[text], text) for text, doc in self._ids.items()
        )
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._workdir = workdir
        if passages:
            data = BeirSet("contexts", passages, {}, {}, 0)
            self._retriever, _registry, self._store = build_scratch(
                data, workdir, embedder, progress
            )

    def search(self, question: str, limit: int) -> list[Passage]:
        if self._retriever is None:
            return []
        return list(self._retriever.search(question, groups=[GROUP], limit=limit).passages)

    def close(self) -> None:
        """Close the scratch collection and delete it (its keys were in memory only)."""
        if self._store is not None:
            self._store.close()
        self._retriever = self._store = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
