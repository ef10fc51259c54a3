"""Which source supports an answer the model gave without citing anything.

Small models often answer from the sources but leave out the ``[n]`` markers the rules ask for,
and an answer without a source cannot be checked by the reader. When a generated answer cites
nothing, the engine looks for the source that holds it and cites that one (``... [2]``):

* the answer's terms (:func:`ingest.sparse.analyze`: stemmed English words without stop
  words, jieba words for Chinese) that the question does not already contain are what the
  answer *adds*; when it adds nothing, all of its terms count;
* a source supports the answer when it holds at least :data:`MIN_SUPPORT` of those terms; the
  source holding the largest share is cited, the better-ranked one on a tie;
* an answer no source supports stays uncited: the engine never invents support.

Pure function: no model, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from ingest.sparse import analyze

__all__ = ["MIN_SUPPORT", "supporting_source"]

MIN_SUPPORT = 0.6


def supporting_source(answer: str, question: str, sources: Sequence[str]) -> int | None:
    """The 1-based number of the source that best supports ``answer``, or None (module doc)."""
    terms = set(analyze(answer))
    added = terms - set(analyze(question))
    wanted = added or terms
    if not wanted:
        return None
    best, best_share = None, 0.0
    for n, text in enumerate(sources, 1):
        share = len(wanted & set(analyze(text))) / len(wanted)
        if share > best_share:
            best, best_share = n, share
    return best if best_share >= MIN_SUPPORT else None
