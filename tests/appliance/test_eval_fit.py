"""`appliance eval retrieval --beir DIR --fit` end to end: the real embedder, keyed BM25, Milvus
Lite and registry on small hand-made sets, and the settings file it may rewrite."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import cli
from appliance.config import default_settings_text, load_settings, write_settings
from appliance.errors import ConfigError, UsageError

WAREHOUSES = ["north", "south", "east", "west"]


def write_beir(root: Path, passages: dict[str, str], queries: dict[str, tuple[str, str]]) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in passages.items())
    )
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, (t, _) in queries.items())
    )
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, (_, d) in queries.items())
    )
    return root


def serial_codes(root: Path) -> Path:
    """Passages alike but for a serial number: the embedder cannot tell them apart, BM25 can."""
    passages = {
        f"p{i}": f"Inventory record: the spare part with serial number {7310 + 37 * i} is kept "
        f"on a shelf in the {WAREHOUSES[i % 4]} warehouse."
        for i in range(40)
    }
    queries = {
        f"q{i}": (f"where is serial number {7310 + 37 * i} kept", f"p{i}") for i in range(25)
    }
    return write_beir(root, passages, queries)


TOPICS = [
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar inside leaves.",
    "The Treaty of Westphalia ended the Thirty Years War in 1648.",
    "A sourdough starter is a culture of wild yeast and lactic acid bacteria.",
    "Jupiter is the largest planet of the solar system, a gas giant with a great red spot.",
    "Mitochondria produce most of the chemical energy that powers a cell.",
    "The violin has four strings tuned in perfect fifths.",
    "Basalt is a volcanic rock formed from rapidly cooling lava.",
    "Penguins cannot fly but swim with flipper-like wings.",
    "Compound interest is interest earned on previously earned interest.",
    "The Great Wall of China was built over many dynasties to guard the northern border.",
]


def distinct_topics(root: Path) -> Path:
    """Each query is its passage, word for word: both retrievers put it first, always."""
    passages = {f"t{i}": text for i, text in enumerate(TOPICS)}
    queries = {f"q{i}": (text, f"t{i}") for i, text in enumerate(TOPICS)}
    return write_beir(root, passages, queries)


def home_with(tmp_path: Path, **retrieval: object) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "appliance.toml").write_text(default_settings_text(), encoding="utf-8")
    if retrieval:
        write_settings(home, "retrieval", retrieval)
    return home


def run(home: Path, folder: Path, *extra: str) -> dict[str, object]:
    result = CliRunner().invoke(
        cli,
        ["--home", str(home), "eval", "retrieval", "--beir", str(folder), "--fit", *extra],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in extra else {"text": result.output}


def test_fit_writes_better_constants_and_shows_before_and_after(tmp_path: Path) -> None:
    home = home_with(tmp_path, fusion_dense_weight=1.0)  # the embedder alone: poor here
    folder = serial_codes(tmp_path / "codes")
    before = (home / "appliance.toml").read_text()
    out = run(home, folder, "--json")
    fit = out["fit"]
    assert isinstance(fit, dict) and out["written"] is True
    assert fit["current"]["dense_weight"] == 1.0
    assert fit["leave_out_ndcg@10"] > fit["current_ndcg@10"] + 0.2
    assert fit["fitted"]["dense_weight"] < 1.0
    after = (home / "appliance.toml").read_text()
    settings = load_settings(home).retrieval
    assert settings.fusion_dense_weight == fit["fitted"]["dense_weight"]
    assert settings.fusion == fit["fitted"]["method"]
    # only the fusion keys changed: every comment and every other line is kept
    changed = {a for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b}
    assert changed and all(line.startswith("fusion") for line in changed)


def test_fit_that_cannot_improve_leaves_the_file_unchanged(tmp_path: Path) -> None:
    home = home_with(tmp_path)
    folder = distinct_topics(tmp_path / "topics")
    before = (home / "appliance.toml").read_bytes()
    out = run(home, folder, "--folds", "2")
    text = str(out["text"])
    assert "before: convex, bounds-normalised, dense weight 0.80" in text
    assert "nDCG@10 1.0000" in text
    assert "not written" in text and "unchanged" in text
    assert (home / "appliance.toml").read_bytes() == before


def test_dry_run_shows_but_writes_nothing(tmp_path: Path) -> None:
    home = home_with(tmp_path, fusion_dense_weight=1.0)
    folder = serial_codes(tmp_path / "codes")
    before = (home / "appliance.toml").read_bytes()
    out = run(home, folder, "--dry-run")
    assert "not written (--dry-run)" in str(out["text"])
    assert (home / "appliance.toml").read_bytes() == before


def test_fit_without_a_settings_file_is_refused(tmp_path: Path) -> None:
    folder = distinct_topics(tmp_path / "topics")
    result = CliRunner().invoke(
        cli,
        ["--home", str(tmp_path / "nowhere"), "eval", "retrieval", "--beir", str(folder), "--fit"],
    )
    assert isinstance(result.exception, UsageError)
    assert "--dry-run" in result.exception.hint


def test_write_settings_keeps_comments_and_refuses_invalid_values(tmp_path: Path) -> None:
    home = home_with(tmp_path)
    overridden = write_settings(home, "retrieval", {"fusion": "rrf", "fusion_rrf_k": 20})
    assert overridden == []
    text = (home / "appliance.toml").read_text()
    assert "# rrf only: the constant k in weight / (k + rank)" in text
    assert tomllib.loads(text)["retrieval"]["fusion_rrf_k"] == 20
    before = (home / "appliance.toml").read_bytes()
    with pytest.raises(ConfigError, match="invalid"):
        write_settings(home, "retrieval", {"fusion_dense_weight": 1.5})
    assert (home / "appliance.toml").read_bytes() == before


def test_write_settings_names_environment_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = home_with(tmp_path)
    monkeypatch.setenv("APPLIANCE__RETRIEVAL__FUSION_DENSE_WEIGHT", "0.3")
    assert write_settings(home, "retrieval", {"fusion_dense_weight": 0.6}) == [
        "APPLIANCE__RETRIEVAL__FUSION_DENSE_WEIGHT"
    ]


def test_eval_measures_a_server_only_index_as_exact_search(tmp_path: Path) -> None:
    """The scratch collection is Milvus Lite, which refuses HNSW: eval falls back to FLAT."""
    home = home_with(tmp_path)
    write_settings(home, "milvus", {"index_type": "HNSW"})
    folder = distinct_topics(tmp_path / "topics")
    result = CliRunner().invoke(
        cli,
        ["--home", str(home), "eval", "retrieval", "--beir", str(folder), "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["settings"] == {
        "dense_index": "FLAT",
        "fusion": "convex, bounds-normalised, dense weight 0.80",
    }
    assert out["hybrid"]["ndcg@10"] == 1.0
