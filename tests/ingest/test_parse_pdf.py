"""PDFs: text with page numbers, font-size headings, encryption, damage, scans and OCR."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pikepdf
import pytest

from ingest import parse_tools
from ingest.elements import ParsedDocument
from ingest.errors import Rejected
from ingest.parse import ParseLimits, parse_file
from tests.ingest.conftest import all_text, corpus_file, require_tool

Parsed = Callable[..., ParsedDocument]


def rejected(relative: str, limits: ParseLimits | None = None) -> Rejected:
    with pytest.raises(Rejected) as info:
        parse_file(corpus_file(relative), limits=limits or ParseLimits())
    return info.value


def test_text_comes_with_page_numbers_and_without_bare_page_footers(parsed: Parsed) -> None:
    document = parsed("py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf")
    assert document.pages == 4
    assert {e.page for e in document.elements} == {1, 2, 3, 4}
    assert all_text(document).startswith("Hello, here is some text without a meaning.")
    assert not [e for e in document.elements if e.text.strip().isdigit()]
    assert document.ocr_pages == 0 and document.warnings == ()


def test_a_table_of_bare_numbers_is_not_mistaken_for_page_numbers(parsed: Parsed) -> None:
    document = parsed("unstructured/pdf/all-number-table.pdf")
    assert {"200.01", "400.01", "600.01"} <= {e.text for e in document.elements}
    assert document.title == "all-number-table"  # metadata says "Untitled spreadsheet"


def test_placeholder_metadata_title_is_not_the_document_title(parsed: Parsed) -> None:
    # A PDF printer wrote "(anonymous)": citations would show that as the document's name.
    document = parsed("markitdown/masterformat_partial_numbering.pdf")
    assert document.title and "anonymous" not in document.title


def test_control_characters_are_dropped_from_the_metadata_title(tmp_path: Path) -> None:
    copy = tmp_path / "report.pdf"
    with pikepdf.open(
        corpus_file("py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf")
    ) as pdf:
        pdf.docinfo["/Title"] = "Quarterly\x00 report\x07"  # as ImageMagick writes its titles
        pdf.save(copy)
    assert parse_file(copy, limits=ParseLimits()).title == "Quarterly report"


def test_headings_from_font_sizes_get_levels(parsed: Parsed) -> None:
    document = parsed("unstructured/pdf/layout-parser-paper-fast.pdf")
    titles = [(e.text, e.level) for e in document.elements if e.kind == "title"]
    assert titles[0][0].startswith("LayoutParser: A Uni") and titles[0][1] == 1
    assert ("Introduction", 2) in titles


def test_korean_text_is_intact(parsed: Parsed) -> None:
    document = parsed("unstructured/pdf/korean-text-with-tables.pdf")
    assert "빅포인트 적립" in all_text(document)
    assert "ko" in {e.language for e in document.elements}


def test_encrypted_pdf_with_empty_user_password_is_indexed(parsed: Parsed) -> None:
    document = parsed("unstructured/pdf/copy-protected.pdf")
    assert "opens without a password" in document.warnings[0]
    assert "LayoutParser" in all_text(document)
    assert "Potato" in all_text(parsed("qpdf/V4-aes.pdf"))  # AES-128, empty user password


@pytest.mark.parametrize(
    "relative",
    ["unstructured/pdf/password.pdf", "qpdf/enc-XI-R6_V5_U-view_O-master.pdf"],  # RC4, AES-256
)
def test_password_protected_pdf_is_refused(relative: str) -> None:
    error = rejected(relative)
    assert error.code == "password-protected"
    assert "password" in error.message and "qpdf --decrypt" in error.hint


@pytest.mark.parametrize(
    ("relative", "reason"),
    [
        ("qpdf/issue-100.pdf", "PDF has no trailer"),
        ("qpdf/issue-120.pdf", "PDF has no page tree"),
        ("qpdf/bad5.pdf", "invalid xref entry"),
        ("qpdf/bad1.pdf", "PDF has no trailer"),  # five bytes: "oops\n"
    ],
)
def test_damaged_pdf_is_corrupt_with_the_reason(relative: str, reason: str) -> None:
    error = rejected(relative)
    assert error.code == "corrupt"
    assert reason in error.message


def test_pdf_pdfminer_cannot_read_is_recovered(parsed: Parsed) -> None:
    # pdfminer raises on this colour space; the PDFium fallback reads the text.
    text = all_text(parsed("unstructured/pdf/pdf-bad-color-space.pdf"))
    assert "2023 Environmental Report" in text and "net-zero" in text


def test_page_limit(parsed: Parsed) -> None:
    error = rejected(
        "py-pdf-sample-files/004-pdflatex-4-pages/pdflatex-4-pages.pdf", ParseLimits(max_pages=2)
    )
    assert error.code == "oversized" and "4 pages" in error.message


def test_long_pdf_takes_the_fast_path(parsed: Parsed) -> None:
    document = parsed("unstructured/pdf/pdf2image-memory-error-test-400p.pdf")
    assert document.pages == 400
    assert {e.page for e in document.elements} >= {1, 200, 399}
    assert "fast text extraction" in document.warnings[0]


def test_blank_pdf_is_empty(tmp_path: Path) -> None:
    blank = tmp_path / "blank.pdf"
    pdf = pikepdf.new()
    pdf.add_blank_page()
    pdf.save(blank)
    with pytest.raises(Rejected) as info:
        parse_file(blank, limits=ParseLimits())
    assert info.value.code == "empty" and "no text and no images" in info.value.message


def test_scanned_page_is_ocred(parsed: Parsed) -> None:
    require_tool("tesseract", "tesseract-ocr")
    document = parsed("py-pdf-sample-files/008-reportlab-inline-image/inline-image.pdf")
    assert document.ocr_pages == 1
    assert "Test" in all_text(document)
    assert {e.page for e in document.elements} == {1}


def test_scan_with_ocr_switched_off_is_no_text() -> None:
    error = rejected("unstructured/pdf/loremipsum-flat.pdf", ParseLimits(ocr=False))
    assert error.code == "no-text" and "OCR is switched off" in error.message


def test_scan_without_tesseract_says_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a host without Tesseract
    parse_tools.tesseract_path.cache_clear()
    try:
        error = rejected("unstructured/pdf/loremipsum-flat.pdf")
    finally:
        parse_tools.tesseract_path.cache_clear()
    assert error.code == "no-text"
    assert "scanned document: install tesseract-ocr to index it" in error.message
