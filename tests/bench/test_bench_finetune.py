"""The fine-tuning benchmark's whole code path on a tiny configuration (no timing asserted).

The tiny Qwen2 as the base model, a dozen training rows (some about held-out articles, which
must not be trained on), a two-step default job through the real `finetune start` child, one
round of plain peft against two resumed steps of the job, and four held-out questions asked of
the base and of its adapter through the real answer engine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.finetune_kit import ENV, training_rows
from tests.support.fixtures import TinyModel, make_tiny_model_fixture

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import bench_finetune  # noqa: E402

tiny_model = make_tiny_model_fixture(scope="module")
HELD_OUT = "New York City"


def _train_file(path: Path) -> Path:
    rows = training_rows(16)
    for i, row in enumerate(rows):  # SQuAD's titles (underscores); 4 rows held out
        row["title"] = "To_Kill_a_Mockingbird" if i % 4 == 3 else ("Beyoncé", "IPod")[i % 2]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _beir(folder: Path) -> Path:
    passages = [
        ("p0", HELD_OUT, "the budget code is 417 and every answer cites its sources."),
        ("p1", HELD_OUT, "the canteen code is 902 and the index grows."),
        ("p2", "IPod", "the laptop code is 555."),
    ]
    queries = [
        ("q0", "what is the budget code?", ["417"], False, "p0"),
        ("q1", "what is the canteen code?", ["902"], False, "p1"),
        ("q2", "what is the report colour?", [], True, "p1"),
        ("q3", "what is the canteen code now?", ["902"], False, "p1"),
        ("q4", "what is the laptop code?", ["555"], False, "p2"),  # a tuning article
        ("q5", "what is the budget colour?", [], True, "p0"),
        ("q6", "what is the budget code now?", ["417"], False, "p0"),
    ]
    (folder / "qrels").mkdir(parents=True)
    lines = [json.dumps({"_id": i, "title": t, "text": x}) for i, t, x in passages]
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    lines = [
        json.dumps({"_id": q, "text": t, "metadata": {"answers": a, "impossible": i, "doc": d}})
        for q, t, a, i, d in queries
    ]
    (folder / "queries.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    qrels = ["query-id\tcorpus-id\tscore"]
    qrels += [f"{q}\t{d}\t1" for q, _t, _a, i, d in queries if not i]
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def embedder() -> Any:
    from ingest.embed import Embedder

    return Embedder.load("bundled", threads=1)


def test_the_benchmark_runs_end_to_end(
    tmp_path: Path, tiny_model: TinyModel, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    lines = bench_finetune.tune_lines(_train_file(tmp_path / "train.jsonl"))
    assert len(lines) == 12
    assert all(json.loads(x)["title"] in ("Beyoncé", "IPod") for x in lines)
    report = bench_finetune.run(
        model_source=tiny_model.path,
        train=tmp_path / "train.jsonl",
        beir=_beir(tmp_path / "beir"),
        limit=4,
        seed=0,
        rounds=1,
        slice_steps=2,
        start_args=["--max-steps", "2"],
        settings={"llm": {"max_new_tokens": 8}},
        extra_unanswerable=3,
        workdir=tmp_path,
        embedder=embedder,
        log=lambda _m: None,
    )
    assert report["data"]["rows"] == 12
    job = report["job"]
    assert job["state"] == "finished" and job["steps"] == job["total_steps"] == 2
    assert job["settings"]["rank"] == 16 and job["settings"]["epochs"] == 1  # the defaults
    assert job["examples"] == 12 and job["tokens"] > 0 and job["peak_rss_mb"] > 100
    assert [c["step"] for c in job["checkpoints"]] == [2] and job["checkpoints"][0]["bytes"] > 0
    assert job["loss_curve"][0][0] in (1, 2) and job["tokens_per_s"] > 0
    side = report["plain_vs_appliance"]
    (one,) = side["slices"]
    assert one["steps"] == [3, 4] and one["same_tokens"]  # after the 2 warm steps
    assert side["ratio"] == one["ratio"] > 0
    assert side["checkpoint_encrypted_bytes"] > 0
    assert side["resumes"][0]["load_checkpoint_s"] > 0
    assert side["example_counts"]["answer"] + side["example_counts"]["not_found"] > 0
    ev = report["eval"]
    assert ev["counts"]["questions"] == 4 and ev["counts"]["unanswerable"] == 1
    assert ev["counts"]["passages_not_indexed"] == 0
    extra = ev["extra_unanswerable"]  # the one held-out unanswerable question not drawn
    assert extra["questions"] == 1 and extra["adapter"]["abstention_accuracy"] in (0.0, 1.0)
    assert report["settings"] == {"llm": {"max_new_tokens": 8}}
    for role in ("base", "adapter"):
        assert ev[role]["errors"] == 0 and ev[role]["p50_s"] is not None
    assert ev["adapter"]["model"] == bench_finetune.ADAPTER
    assert set(report["verdict"]) == {
        "default_job_under_45_min",
        "tokens_per_s_ratio",
        "adapter_f1",
        "adapter_f1_gain",
        "abstention_accuracy",
        "false_abstention",
        "citation_precision",
    }
    assert report["verdict"]["default_job_under_45_min"]["met"]
    assert report["machine"]["load_average_start"]
    assert not list(tmp_path.glob("kapp-bench-finetune-*"))  # the scratch is gone


def test_set_options_become_settings_sections() -> None:
    got = bench_finetune.parse_settings(
        ["finetune.passages=6", "finetune.drop_gold=0.05", 'llm.dtype="fp32"']
    )
    assert got == {"finetune": {"passages": 6, "drop_gold": 0.05}, "llm": {"dtype": "fp32"}}
    with pytest.raises(SystemExit, match=r"SECTION\.KEY=VALUE"):
        bench_finetune.parse_settings(["passages=6"])
