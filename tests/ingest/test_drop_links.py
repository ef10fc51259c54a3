"""Symbolic links in the drop folder (security review, issue 12): never followed when scanning,
reading, parsing, quarantining or moving into the vault. Real files and real links under
tmp_path, real pipeline passes (Milvus Lite, SQLite, the bundled embedder, a real vault)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ingest.drop import Candidate, Link, survey
from ingest.elements import Element, ParsedDocument
from ingest.embed import Embedder
from ingest.errors import LinkRefused
from ingest.isolate import parse_isolated
from ingest.jobs import FileResult
from ingest.parse import ParseLimits
from ingest.safefs import open_below, open_dir, write_new
from tests.ingest.pipeline_kit import Kit, build_kit, put
from tests.ingest.test_embed import bundled_embedder

CANARY = "Ostrava ledger canary: the vault combination is 7741-MAGENTA-2209."
HARMLESS = "The canteen opens at half past eleven and closes at two in the afternoon."
SETTINGS = "[security]\nkdf_cost_log2 = 17\n"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return bundled_embedder()


class Recorded:
    """An `ingest.jobs.Events` sink that keeps what the pipeline reports (the appliance's
    sink audits the same calls)."""

    def __init__(self) -> None:
        self.results: list[FileResult] = []

    def file_done(self, result: FileResult) -> None:
        self.results.append(result)

    def about(self, rel_path: str) -> list[tuple[str, str]]:
        return [(r.outcome, r.code) for r in self.results if r.rel_path == rel_path]


def _kit(tmp_path: Path, embedder: Embedder, mode: str) -> tuple[Kit, Recorded]:
    kit = build_kit(tmp_path / "kb", embedder, mode=mode)
    events = Recorded()
    kit.pipeline.events = events
    return kit, events


def _outcomes(report: object) -> dict[str, tuple[str, str]]:
    return {f.rel_path: (f.outcome, f.code) for f in report.files}  # type: ignore[attr-defined]


def _canary_anywhere(kit: Kit) -> bool:
    groups = ["finance", "hr", "public"]
    texts = kit.search("Ostrava ledger canary vault combination MAGENTA", groups, limit=20)
    stored = [kit.vault.open_bytes(i) for i in kit.vault.list_ids()] if kit.vault else []
    return any("MAGENTA" in t for t in texts) or any(b"MAGENTA" in s for s in stored)


def test_a_failed_folder_that_is_a_link_is_never_written_through(
    tmp_path: Path, embedder: Embedder
) -> None:
    """`drop/_failed/finance` -> the home: a failing `appliance.toml` must not replace the
    home's settings file; it stays where it was, with the reason recorded once."""
    kit, events = _kit(tmp_path, embedder, "inbox")
    home = tmp_path / "home"
    home.mkdir()
    (home / "appliance.toml").write_text(SETTINGS)
    (kit.drop / "_failed").mkdir()
    (kit.drop / "_failed" / "finance").symlink_to(home, target_is_directory=True)
    dropped = put(kit.drop, "finance/appliance.toml", "[security]\nkdf_cost_log2 = 1\n")

    first = kit.pipeline.run_once(settle=False)

    assert (home / "appliance.toml").read_text() == SETTINGS
    assert sorted(os.listdir(home)) == ["appliance.toml"]  # no moved file, no reason note
    assert dropped.read_text() == "[security]\nkdf_cost_log2 = 1\n"  # not lost either
    result = next(f for f in first.files if f.rel_path == "finance/appliance.toml")
    assert (result.outcome, result.code) == ("failed", "symlink")
    assert "_failed/finance is a symbolic link" in result.detail  # sealed in the registry
    doc = kit.registry.find("inbox", "finance/appliance.toml")
    assert doc is not None and doc.error_code == "symlink" and "_failed" in doc.error
    # the next pass leaves it alone (reported and audited once), the home still untouched
    second = kit.pipeline.run_once(settle=False)
    assert _outcomes(second)["finance/appliance.toml"] == ("unchanged", "")
    assert events.about("finance/appliance.toml") == [("failed", "symlink")]
    assert (home / "appliance.toml").read_text() == SETTINGS


@pytest.mark.parametrize("mode", ["inbox", "mirror"])
def test_links_in_the_drop_folder_are_reported_once_and_never_followed(
    tmp_path: Path, embedder: Embedder, mode: str
) -> None:
    kit, events = _kit(tmp_path, embedder, mode)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "ledger.txt").write_text(CANARY)
    put(kit.drop, "finance/ok.txt", HARMLESS)
    (kit.drop / "finance" / "passwd").symlink_to("/etc/passwd")
    (kit.drop / "finance" / "ledger.txt").symlink_to(outside / "ledger.txt")
    (kit.drop / "finance" / "archive").symlink_to(outside, target_is_directory=True)
    (kit.drop / "hr").symlink_to(outside, target_is_directory=True)  # a whole group folder
    links = ["finance/archive", "finance/ledger.txt", "finance/passwd", "hr"]

    first = _outcomes(kit.pipeline.run_once(settle=False))

    assert first["finance/ok.txt"] == ("indexed", "")
    assert {rel: first[rel] for rel in links} == dict.fromkeys(links, ("failed", "symlink"))
    assert not any(rel.startswith(("finance/archive/", "hr/")) for rel in first)
    assert not _canary_anywhere(kit)
    passages = kit.search("root daemon nologin bin bash sbin", ["finance"], limit=20)
    assert not any("root:" in t for t in passages)
    indexed = {d.rel_path for d in kit.registry.documents(status="indexed")}
    assert indexed == {"finance/ok.txt"}
    for rel in links:  # left as they were: a link is never moved, deleted or written through
        assert (kit.drop / rel).is_symlink()
        assert "symbolic link" in (kit.registry.find(mode, rel) or pytest.fail(rel)).error
    assert (outside / "ledger.txt").read_text() == CANARY and len(os.listdir(outside)) == 1
    assert not (kit.drop / "_failed").exists()

    second = _outcomes(kit.pipeline.run_once(settle=False))
    assert {rel: second[rel] for rel in links} == dict.fromkeys(links, ("unchanged", ""))
    assert all(events.about(rel) == [("failed", "symlink")] for rel in links)


def _swap_for_link(
    kit: Kit, rel: str, target: Path, when: str
) -> tuple[Callable[[FileResult], None], list[str]]:
    """A progress callback that replaces ``rel`` by a link to ``target`` as soon as the
    pipeline reports ``when``, and the list where it notes that it did."""
    done: list[str] = []

    def progress(result: FileResult) -> None:
        if result.rel_path == when and not done:
            path = kit.drop / rel
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            path.symlink_to(target, target_is_directory=target.is_dir())
            done.append(rel)

    return progress, done


@pytest.mark.parametrize("mode", ["inbox", "mirror"])
@pytest.mark.parametrize("swapped", ["file", "folder"])
def test_a_file_swapped_for_a_link_between_hash_and_parse_is_never_indexed(
    tmp_path: Path, embedder: Embedder, mode: str, swapped: str
) -> None:
    """A pass plans files in folder order: it hashes `finance/a/b.txt`, then reports
    `finance/zz/last.txt` unchanged, and only then starts parsing. That report is where the
    test swaps the file (or its folder) for a link to a secret."""
    kit, events = _kit(tmp_path, embedder, mode)
    put(kit.drop, "finance/zz/last.txt", "Visitors register at the front desk on arrival.")
    kit.pipeline.run_once(settle=False)
    outside = tmp_path / "outside"
    (outside / "a").mkdir(parents=True)
    (outside / "a" / "b.txt").write_text(CANARY)
    put(kit.drop, "finance/a/b.txt", HARMLESS)
    if mode == "inbox":  # the same content again: reported unchanged (and removed)
        put(kit.drop, "finance/zz/last.txt", "Visitors register at the front desk on arrival.")
    rel, target = (
        ("finance/a/b.txt", outside / "a" / "b.txt")
        if swapped == "file"
        else ("finance/a", outside / "a")
    )
    progress, done = _swap_for_link(kit, rel, target, when="finance/zz/last.txt")

    report = kit.pipeline.run_once(settle=False, progress=progress)

    assert done == [rel]
    got = _outcomes(report)
    assert got["finance/zz/last.txt"] == ("unchanged", "")
    assert got["finance/a/b.txt"] == ("failed", "symlink")
    assert not _canary_anywhere(kit)
    doc = kit.registry.find(mode, "finance/a/b.txt")
    assert doc is not None and doc.status == "failed" and doc.chunks == 0
    assert doc.content_hmac  # it was hashed before the swap: the parse step refused the link
    assert (kit.drop / rel).is_symlink() and (outside / "a" / "b.txt").read_text() == CANARY
    assert events.about("finance/a/b.txt") == [("failed", "symlink")]


def _swap_then_read(path: Path, *, limits: ParseLimits) -> ParsedDocument:
    """Runs in the parse child: replaces the file's name in the drop folder by a link to the
    secret (both paths are written in the file), then reads what it was given."""
    _, original, secret = path.read_text().splitlines()
    os.unlink(original)
    os.symlink(secret, original)
    text = path.read_text()
    return ParsedDocument(elements=(Element(kind="text", text=text),), title=path.stem, pages=1)


def test_the_parse_child_reads_the_opened_file_not_its_name(tmp_path: Path) -> None:
    drop, secret = tmp_path / "drop", tmp_path / "secret.txt"
    secret.write_text(CANARY)
    content = f"{HARMLESS}\n{drop / 'finance' / 'notes.txt'}\n{secret}"
    put(drop, "finance/notes.txt", content)
    with open_below(drop, "finance/notes.txt") as opened:
        document = parse_isolated(opened, limits=ParseLimits(), parser=_swap_then_read)
    assert document.elements[0].text == content and document.title == "notes"
    assert (drop / "finance" / "notes.txt").is_symlink()  # the swap did happen


def test_safefs_refuses_a_link_at_every_level(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "g" / "sub").mkdir(parents=True)
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "f.txt").write_text(CANARY)
    (root / "g" / "sub" / "f.txt").symlink_to(outside / "sub" / "f.txt")
    (root / "h").symlink_to(outside, target_is_directory=True)
    (root / "g" / "dir").symlink_to(outside / "sub", target_is_directory=True)
    for rel in ("g/sub/f.txt", "h/sub/f.txt", "g/dir/f.txt"):
        with pytest.raises(LinkRefused):
            open_below(root, rel)
    with pytest.raises(LinkRefused):
        open_dir(root, ["h", "new"], create=True)
    assert sorted(os.listdir(outside)) == ["sub"]
    folder = open_dir(root, ["g"])
    try:  # a note written over a link replaces the link; the link's target is untouched
        (root / "g" / "note.txt").symlink_to(outside / "sub" / "f.txt")
        write_new(folder, "note.txt", b"reason\n")
    finally:
        os.close(folder)
    assert not (root / "g" / "note.txt").is_symlink()
    assert (root / "g" / "note.txt").read_bytes() == b"reason\n"
    assert (outside / "sub" / "f.txt").read_text() == CANARY


def test_the_scan_reports_links_and_takes_a_configured_drop_folder_that_is_one(
    tmp_path: Path,
) -> None:
    """The operator may point `ingest.drop_dir` at a link (e.g. to a mounted share); links
    *inside* it are reported, not followed."""
    share = tmp_path / "share"
    put(share, "finance/a.txt", HARMLESS)
    (share / "finance" / "b.txt").symlink_to(share / "finance" / "a.txt")
    (share / "hr").symlink_to(share / "finance", target_is_directory=True)
    (tmp_path / "drop").symlink_to(share, target_is_directory=True)
    found = list(survey(tmp_path / "drop"))
    assert [(type(e).__name__, e.rel_path) for e in found] == [
        ("Link", "hr"),  # a folder's own entries first, then its sub-folders'
        ("Candidate", "finance/a.txt"),
        ("Link", "finance/b.txt"),
    ]
    assert found[0] == Link("hr", "")
    candidate = found[1]
    assert isinstance(candidate, Candidate) and candidate.root == tmp_path / "drop"
    assert candidate.path == tmp_path / "drop" / "finance" / "a.txt"
