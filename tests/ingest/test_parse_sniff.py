"""Format detection by magic bytes, and the refusals that need no parser."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ingest.errors import Rejected
from ingest.parse import SUPPORTED_EXTENSIONS
from ingest.sniff import detect_format
from tests.ingest.conftest import corpus_file

LIMIT = 200 * 2**20


def refusal(path: Path, max_bytes: int = LIMIT) -> Rejected:
    with pytest.raises(Rejected) as info:
        detect_format(path, max_bytes=max_bytes)
    return info.value


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("unstructured/fake.docx", "docx"),
        ("unstructured/fake.doc", "doc"),
        ("unstructured/tests-example.xls", "xls"),
        ("xlrd/biff4_no_format_no_window2.xls", "xls"),  # pre-OLE2 BIFF4 stream
        ("openpyxl/writer/tests/data/empty.xltm", "xlsx"),
        ("unstructured/fake-power-point.ppt", "ppt"),
        ("markitdown/test.epub", "epub"),
        ("unstructured/fake.odt", "odt"),
        ("unstructured/fake-doc.rtf", "rtf"),
        ("unstructured/img/bmp_24.bmp", "image"),
        ("unstructured/eml/fake-email.txt", "txt"),  # an e-mail saved as .txt stays text
    ],
)
def test_formats_are_recognised(relative: str, expected: str) -> None:
    assert detect_format(corpus_file(relative), max_bytes=LIMIT).format == expected


def test_magic_wins_over_a_wrong_extension(tmp_path: Path) -> None:
    disguised = tmp_path / "report.docx"
    shutil.copyfile(corpus_file("unstructured/pdf/fake-memo.pdf"), disguised)
    detected = detect_format(disguised, max_bytes=LIMIT)
    assert detected.format == "pdf"
    assert "named .docx but contains a PDF document" in detected.warnings[0]


def test_empty_and_oversized(tmp_path: Path) -> None:
    assert refusal(corpus_file("unstructured/empty.txt")).code == "empty"
    big = refusal(corpus_file("unstructured/fake.docx"), max_bytes=1000)
    assert big.code == "oversized" and "over the limit" in big.message


def test_unsupported_types_are_named(tmp_path: Path) -> None:
    heic = refusal(corpus_file("unstructured/img/DA-1p.heic"))
    assert heic.code == "unsupported" and "HEIC" in heic.message
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/sh\necho hello\n")
    other = refusal(script)
    assert other.code == "unsupported" and ".sh" in other.message
    archive = tmp_path / "bundle.zip"
    shutil.make_archive(str(tmp_path / "bundle"), "zip", root_dir=tmp_path, base_dir="tool.sh")
    assert "ZIP archive" in refusal(archive).message


def test_encrypted_ooxml_and_broken_zip() -> None:
    locked = refusal(corpus_file("unstructured/password_protected.xlsx"))
    assert locked.code == "password-protected" and locked.hint
    broken = refusal(corpus_file("openpyxl/tests/data/reader/null_archive.xlsx"))
    assert broken.code == "corrupt" and "no document part" in broken.message


def test_binary_named_as_text_is_corrupt(tmp_path: Path) -> None:
    fake = tmp_path / "notes.txt"
    fake.write_bytes(bytes(range(256)) * 4)
    assert refusal(fake).code == "corrupt"


def test_supported_extensions_cover_the_brief() -> None:
    wanted = {".docx", ".doc", ".xlsx", ".xlsm", ".xls", ".pdf", ".pptx", ".ppt", ".eml", ".msg"}
    wanted |= {".html", ".md", ".txt", ".csv", ".epub", ".odt", ".rtf", ".png", ".jpg", ".tiff"}
    assert wanted | {".bmp"} <= SUPPORTED_EXTENSIONS
