"""Load test (issue 5), short form: 20 simulated staff in four groups for ~20 s against a real
server on loopback (API + web UI, extractive answers), through web logins, API keys, streaming
and plain answers, searches and source views. Zero errors, zero leaks of a foreign group, and the
question counter of /metrics equal to the questions asked. `bench/bench_load.py` runs the same
harness for 2 minutes per mode against the `appliance serve` process."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from appliance.serve.server import build_app
from tests.ingest.test_embed import bundled_embedder
from tests.support.load import (
    LOAD_DOCS,
    Phase,
    Staff,
    acl_problems,
    add_staff,
    run_phase,
    scrape,
    summary,
)
from tests.support.server import running_server
from tests.support.serving import PASSWORD, build_world, open_runtime

pytestmark = pytest.mark.slow
USERS, DURATION_S = 20, 20.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[Staff]]]:
    now = int(time.time())
    root = tmp_path_factory.mktemp("load")
    world = build_world(root, model_dir=None, docs=LOAD_DOCS, embedder=bundled_embedder(), now=now)
    staff = add_staff(world.appliance(now), USERS, password=PASSWORD, now=now)
    runtime = open_runtime(world, clock=time.time, embedder=bundled_embedder())
    try:
        with running_server(build_app(runtime, ui=True)) as url:
            yield url, staff
    finally:
        runtime.close()


def test_twenty_staff_for_twenty_seconds(served: tuple[str, list[Staff]]) -> None:
    url, staff = served
    assert len({g for s in staff for g in s.groups}) == 4
    before = scrape(url)
    phase = Phase("extractive", model="extractive", expect_mode="extractive", duration_s=DURATION_S)
    started = time.monotonic()
    tally = asyncio.run(run_phase(url, staff, phase))
    report: dict[str, Any] = summary(tally, phase, time.monotonic() - started, scrape(url) - before)
    assert report["errors"] == 0, report["error_examples"]
    assert report["acl_violations"] == 0, report["acl_examples"]
    kinds = Counter(s.kind for s in tally.samples)
    assert kinds["login"] == kinds["page"] == USERS
    assert min(kinds["chat"], kinds["stream"], kinds["search"], kinds["source"]) > 0, kinds
    assert report["acl_probes"] > 0  # foreign chunk ids were tried (and refused)
    assert report["questions"] >= USERS * 3, report  # the load was real: several rounds each
    assert tally.own_code_found > 0, "no user ever found their own group's planted code"
    assert report["answer_modes"] == {"extractive": report["questions"]}
    counted = (report["server"], report["questions"], report["by_kind"])
    assert report["metrics_match"] and report["metrics_completed_match"], counted


def test_acl_check_sees_foreign_sources_and_codes() -> None:
    """The leak check itself: a foreign group's source or code is caught, one's own is not."""
    hr = Staff("x", ("hr",), "p", "t")
    assert acl_problems(hr, [{"group": "hr"}, {"group": "public"}], ["HRX-8123"]) == []
    assert len(acl_problems(hr, [{"group": "finance"}], [])) == 1
    assert len(acl_problems(hr, [], ["code FIN-4417 and LEG-5590"])) == 2
