"""An extractive answer quotes documents; what they say cannot pass for a citation or a link.

A real appliance (tests/ui/kit.py, no model, so answers are extractive) holds a document whose
text carries a literal ``[2]`` and a markdown link. The answer and its web rendering keep only
the engine's own citations (review 12, item 11).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ingest.test_embed import bundled_embedder
from tests.ui.kit import UiWorld, build
from ui.format import render_conversation

DOCS = {
    "finance/guide.md": (
        "# Travel guide\n\nTravel rules: see [2] and [click](http://evil.example/) before you "
        "book.\n"
    ),
    "finance/budget.md": "# Budget\n\nThe travel budget for 2027 is 48,000 euros.\n",
    "public/welcome.md": "# Welcome\n\nThe canteen opens at 11:30.\n",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiWorld]:
    w = build(Path(tmp_path_factory.mktemp("links")), bundled_embedder(), docs=DOCS)
    yield w
    w.close()


def test_quoted_marker_and_link_are_neither_citations_nor_links(world: UiWorld) -> None:
    user = world.app.users.get("fred")
    answer = world.runtime.engine.answer("What are the travel rules?", user=user, channel="ui")
    assert answer.mode == "extractive" and len(answer.sources) >= 2
    guide = next(s.n for s in answer.sources if s.document == "finance/guide.md")
    assert f"Travel rules: see and click before you book [{guide}]." in answer.text
    assert "](" not in answer.text and "evil.example" not in answer.text
    turn = {
        "question": "What are the travel rules?",
        "answer": answer.text,
        "sources": [s.to_dict() for s in answer.sources],
        "mode": answer.mode,
    }
    html = render_conversation([turn], lang="en")
    links = [int(n) for n in re.findall(r'<a class="cite"[^>]*data-n="(\d+)"', html)]
    # every link is one of the engine's own markers, each for a source the answer cited
    assert html.count("<a") == len(links) == len(re.findall(r"\[\d+\]", answer.text))
    assert guide in links and set(links) == set(answer.cited)
    assert "evil.example" not in html and "http" not in html
