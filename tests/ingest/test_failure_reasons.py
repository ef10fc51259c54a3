"""Failures are stored and reported as a stable code and a generic message; the parser's own
message (which can quote the document or name a server path) is kept sealed in the registry and
opened only on demand. Real parsers, real Milvus Lite, real SQLite, real encryption."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ingest.embed import Embedder
from ingest.parse import ParseLimits, parse_file
from ingest.reasons import INTERNAL, REASONS, known_code, open_detail, reason_message
from ingest.registry import SCHEMA_VERSION, Registry
from secure.errors import TamperedError
from tests.ingest.pipeline_kit import Kit, build_kit, put
from tests.ingest.test_embed import bundled_embedder
from tests.support.leaky import CANARY, canary_workbook, stored_bytes, truncated_png

# The codes are part of the product's interface (docs/ingestion.md, the UI's translations,
# scripts reading `docs list --json`): add new ones, never rename or drop one.
CODES = [
    "password-protected",
    "corrupt",
    "empty",
    "no-text",
    "oversized",
    "unsupported",
    "timeout",
    "no-group",
    "parse-error",
    "dependency-missing",
    "index-error",
    "interrupted",
    "not-picked-up",
    "index-unavailable",
    "symlink",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return bundled_embedder()


@pytest.fixture
def kit(tmp_path: Path, embedder: Embedder) -> Kit:
    return build_kit(tmp_path / "kb", embedder)


def test_reason_codes_are_a_fixed_table() -> None:
    assert list(REASONS) == CODES
    for code, message in REASONS.items():
        assert message.endswith(".") and len(message) < 240, code
    assert known_code("milvus-error") == INTERNAL == "index-error"
    assert reason_message("no-such-code") == REASONS["index-error"]


def test_the_leaky_files_really_leak_in_their_parser(tmp_path: Path) -> None:
    """The regression assets: without the fix, these messages reach users and stores."""
    with pytest.raises(Exception) as workbook:
        parse_file(canary_workbook(tmp_path / "pay.xlsx"), limits=ParseLimits())
    assert CANARY in str(workbook.value)
    image = truncated_png(tmp_path / "scan.png")
    with pytest.raises(Exception) as png:
        parse_file(image, limits=ParseLimits())
    assert str(image) in str(png.value)


def test_canary_and_paths_stay_out_of_plaintext_stores(kit: Kit) -> None:
    canary_workbook(kit.drop / "hr" / "pay.xlsx")
    truncated_png(kit.drop / "hr" / "scan.png")
    put(kit.drop, "hr/ok.md", "# Leave\n\nEvery employee has 28 days of annual leave.\n")
    put(kit.drop, "loose.txt", "outside any group folder")
    report = kit.pipeline.run_once(settle=False)
    got = {f.rel_path: f for f in report.files}
    assert got["hr/ok.md"].outcome == "indexed"
    expected = {"hr/pay.xlsx": "parse-error", "hr/scan.png": "corrupt", "loose.txt": "no-group"}
    for rel, code in expected.items():
        result = got[rel]
        assert (result.outcome, result.code, result.reason) == ("failed", code, REASONS[code])
    secrets = (CANARY, str(kit.root), "/kb/drop")
    notes = b"".join(p.read_bytes() for p in (kit.drop / "_failed").rglob("*.reason.txt"))
    assert set(notes.decode().splitlines()) == {f"{c}: {REASONS[c]}" for c in expected.values()}
    stored = stored_bytes(kit.root)
    for secret in secrets:
        assert secret.encode() not in notes, secret
        assert secret.encode() not in stored, secret
        assert all(secret not in f.reason for f in report.files), secret
    rows = {d.rel_path: d for d in kit.registry.documents(status="failed")}
    assert {r: d.error_code for r, d in rows.items()} == expected
    assert all(d.error == REASONS[d.error_code] for d in rows.values())
    # The admin can still learn what went wrong: the detail opens with the collection key.
    cipher = kit.pipeline.cipher
    detail = {
        rel: open_detail(cipher, source="inbox", rel_path=rel, sealed=d.error_detail)
        for rel, d in rows.items()
    }
    assert CANARY in detail["hr/pay.xlsx"] and "ValueError" in detail["hr/pay.xlsx"]
    # the path the parser saw (the parse child reads the opened file through its scratch link)
    assert "scan.png" in detail["hr/scan.png"]
    assert "group folder" in detail["loose.txt"]
    moved = rows["loose.txt"].error_detail  # bound to its file: it opens for no other
    with pytest.raises(TamperedError):
        open_detail(cipher, source="inbox", rel_path="hr/scan.png", sealed=moved)


def test_an_internal_failure_keeps_its_traceback_sealed(kit: Kit) -> None:
    """A failure after parsing (the vault folder vanishes during the pass) is an
    ``index-error``; its exception names server paths, which only the sealed detail holds."""
    put(kit.drop, "hr/a.md", "# A\n\nOne of two documents: it is indexed normally.\n")
    put(kit.drop, "hr/b.md", "# B\n\nThe other one: the vault is gone when it is written.\n")
    vault = kit.vault
    assert vault is not None
    away = vault.root.with_name("vault-away")

    def progress(result: object) -> None:
        if not away.exists():  # after the first file (files finish in parse order)
            vault.root.rename(away)

    try:
        report = kit.pipeline.run_once(settle=False, progress=progress)
    finally:
        away.rename(vault.root)
    first, second = report.files
    assert first.outcome == "indexed"
    assert (second.outcome, second.code, second.reason) == ("failed", INTERNAL, REASONS[INTERNAL])
    doc = kit.registry.find("inbox", second.rel_path)
    assert doc is not None
    detail = open_detail(
        kit.pipeline.cipher, source="inbox", rel_path=second.rel_path, sealed=doc.error_detail
    )
    assert "FileNotFoundError" in detail and str(vault.root) in detail and "Traceback" in detail
    assert str(kit.root).encode() not in stored_bytes(kit.root)
    assert str(kit.root) not in (kit.drop / "_failed" / f"{second.rel_path}.reason.txt").read_text()


def test_a_version_1_registry_is_upgraded_and_its_old_reasons_scrubbed(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    Registry(path).fail(
        source="inbox",
        rel_path="hr/pay.xlsx",
        group="hr",
        code="parse-error",
        reason="placeholder",
        content_hmac="00",
        size=1,
        fmt=".xlsx",
    )
    with sqlite3.connect(path) as db:  # what an older release stored
        db.execute("ALTER TABLE documents DROP COLUMN error_detail")
        db.execute(f"UPDATE documents SET error_code='milvus-error', error='quoting {CANARY}'")
        db.execute(
            "INSERT INTO job_files VALUES ('j', NULL, 'hr/pay.xlsx', 'failed', ?, '{}', 0)",
            (CANARY,),
        )
        db.execute("UPDATE meta SET value='1' WHERE key='schema'")
    assert CANARY.encode() in stored_bytes(tmp_path)
    registry = Registry(path)
    (doc,) = registry.documents()
    assert (doc.error_code, doc.error, doc.error_detail) == (INTERNAL, REASONS[INTERNAL], "")
    assert registry.job_files("j")[0]["reason"] == ""
    assert CANARY.encode() not in stored_bytes(tmp_path)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == str(
            SCHEMA_VERSION
        )
