"""What a user's search returns depends only on documents of groups that user may read.

BM25 term weights used to come from every group's documents, so a finance user could tell from
rankings how often a word occurs in HR's documents. A real appliance (tests/ui/kit.py) on a real
server: fred (finance) searches before and after every HR document is deleted, and gets the
same bytes back, scores and ranks included (review 12, item 6).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.serve.server import build_app
from tests.ingest.test_embed import bundled_embedder
from tests.support.server import running_server
from tests.ui.kit import UiWorld, build

# "budget" is common in HR (the other group), rare in finance; "zebrafish" is HR's alone.
DOCS = {
    "finance/review.md": "# Review\n\nBudget review: the budget, the budget and the budget.\n",
    "finance/canteen.md": "# Canteen\n\nCanteen review: the canteen menu changes.\n",
    **{
        f"hr/hiring-{i}.md": f"# Hiring {i}\n\nThe hiring budget for team {i} funds the "
        "zebrafish lab.\n"
        for i in range(8)
    },
}
QUERY = "budget canteen zebrafish"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiWorld]:
    w = build(Path(tmp_path_factory.mktemp("bm25-groups")), bundled_embedder(), docs=DOCS)
    yield w
    w.close()


def search(url: str, key: str, mode: str) -> dict[str, Any]:
    r = httpx.post(
        url + "/v1/search",
        json={"query": QUERY, "limit": 8, "mode": mode},
        headers={"Authorization": "Bearer " + key},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    body.pop("timings_ms")  # wall-clock times, not results
    return body


def test_another_groups_documents_do_not_move_a_users_results(world: UiWorld) -> None:
    key = world.app.users.issue_token("fred", now=int(time.time()))
    knowledge = world.runtime.knowledge
    with running_server(build_app(world.runtime, ui=False)) as url:
        before = {mode: search(url, key, mode) for mode in ("sparse", "hybrid")}
        assert {p["document"] for p in before["sparse"]["data"]} == {
            "finance/review.md",
            "finance/canteen.md",
        }
        pipeline = knowledge.pipeline()
        hr = knowledge.registry.documents(group="hr")
        assert len(hr) == 8
        for doc in hr:
            pipeline.delete_document(doc.doc_id)
        assert knowledge.registry.documents(group="hr") == []
        after = {mode: search(url, key, mode) for mode in ("sparse", "hybrid")}
    assert after == before
