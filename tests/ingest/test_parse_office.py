"""Word, PowerPoint, OpenDocument, EPUB and RTF files from the corpus, parsed for real."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import docx
import pytest

from ingest.elements import ParsedDocument
from ingest.parse import ParseLimits, parse_file
from tests.ingest.conftest import all_text, require_tool

Parsed = Callable[..., ParsedDocument]


def test_docx_headings_carry_levels_for_breadcrumbs(parsed: Parsed) -> None:
    document = parsed("unstructured/category-level.docx")
    titles = [(e.text, e.level) for e in document.elements if e.kind == "title"]
    assert titles == [("A Heading 1", 1), ("A Heading 2", 2), ("Another Heading 1", 1)]
    assert "Call me Ishmael" in all_text(document)
    assert {e.language for e in document.elements} == {"en"}


def test_docx_page_numbers_follow_page_breaks(parsed: Parsed) -> None:
    document = parsed("unstructured/page-breaks.docx")
    pages = {e.text.split("\n")[0][:30]: e.page for e in document.elements}
    assert pages["First page, tab here:\tfollowed"] == 1
    assert pages["<<followed by text on same pag"] == 3
    assert pages["<<and then more text proceeds."] == 6
    assert document.pages == 6


def test_docx_tables_keep_header_rows_and_merged_cells(parsed: Parsed) -> None:
    tables = [e.table for e in parsed("unstructured/docx-tables.docx").elements if e.table]
    assert tables[0] is not None and tables[0].header == ("Header Col 1", "Header Col 2")
    assert tables[0].rows == (("Lorem ipsum", "A link example"),)
    merged = tables[2]
    assert merged is not None and merged.rows[0] == ("a", "b", "b")  # colspan repeated


def test_chinese_docx_text_is_intact_and_tagged(tmp_path: Path) -> None:
    # A real .docx written by python-docx (the corpus has no Chinese Word file).
    source = tmp_path / "制度.docx"
    document = docx.Document()
    document.add_heading("企业文件管理制度", level=1)
    document.add_paragraph("为了规范公司文件管理，提高工作效率，特制定本制度。")
    document.add_heading("第一节 范围", level=2)
    document.add_paragraph("合同类文件", style="List Bullet")
    document.save(str(source))
    parsed = parse_file(source, limits=ParseLimits())
    rows = [(e.kind, e.text, e.level, e.language) for e in parsed.elements]
    assert rows == [
        ("title", "企业文件管理制度", 1, "zh"),
        ("text", "为了规范公司文件管理，提高工作效率，特制定本制度。", 0, "zh"),
        ("title", "第一节 范围", 2, "zh"),
        ("list_item", "合同类文件", 0, "zh"),
    ]
    assert parsed.title == "企业文件管理制度"


def test_pptx_slide_numbers_are_pages_and_titles_are_titles(parsed: Parsed) -> None:
    document = parsed("unstructured/fake-power-point-table.pptx")
    title, table = document.elements
    assert (title.kind, title.text, title.page, title.level) == (
        "title",
        "A Slide with a Table",
        1,
        1,
    )
    assert table.table is not None and table.table.header == ("Column 1", "Column 2", "Column 3")
    assert ("Red", "Green", "Blue") in table.table.rows


def test_pptx_with_only_slide_titles_is_indexed(parsed: Parsed) -> None:
    document = parsed("unstructured/fake-power-point-many-pages.pptx")
    assert [(e.text, e.page) for e in document.elements] == [("Page 1", 1), ("Page 2", 2)]


def test_legacy_doc_is_converted_with_libreoffice(parsed: Parsed) -> None:
    require_tool("soffice", "libreoffice-writer-nogui")
    document = parsed("unstructured/fake.doc")
    assert "Lorem ipsum dolor sit amet." in all_text(document)
    assert any("LibreOffice" in w for w in document.warnings)
    assert document.title == "fake"


def test_legacy_ppt_keeps_slide_titles(parsed: Parsed) -> None:
    require_tool("soffice", "libreoffice-impress-nogui")
    document = parsed("unstructured/fake-power-point.ppt")
    first = document.elements[0]
    assert (first.kind, first.text, first.page) == ("title", "Adding a Bullet Slide", 1)
    assert "Find the bullet slide layout" in all_text(document)


def test_doc_without_libreoffice_is_unsupported_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ingest import parse_tools

    monkeypatch.setenv("PATH", str(tmp_path))  # a host without LibreOffice
    parse_tools.soffice_path.cache_clear()
    try:
        from ingest.errors import Rejected
        from tests.ingest.conftest import corpus_file

        with pytest.raises(Rejected) as info:
            parse_file(corpus_file("unstructured/fake.doc"), limits=ParseLimits())
    finally:
        parse_tools.soffice_path.cache_clear()
    assert info.value.code == "unsupported"
    assert "LibreOffice" in info.value.message


def test_file_named_doc_holding_docx_is_parsed_as_docx(parsed: Parsed) -> None:
    document = parsed("unstructured/language-docs/eng_spa_mult.doc")
    assert "named .doc but contains a Word document (OOXML)" in document.warnings[0]
    assert "Todos los seres humanos" in all_text(document)


@pytest.mark.parametrize(
    ("relative", "phrase"),
    [
        ("unstructured/fake.odt", "Lorem ipsum dolor sit amet."),
        ("markitdown/test.epub", "This is a test paragraph with some formatting."),
        ("unstructured/fake-doc.rtf", "My first paragraph."),
    ],
)
def test_pandoc_formats(parsed: Parsed, relative: str, phrase: str) -> None:
    assert phrase in all_text(parsed(relative))


def test_odt_table_and_epub_chapters(parsed: Parsed) -> None:
    table = next(e.table for e in parsed("unstructured/fake.odt").elements if e.table)
    assert table.header == ("Header row", "Mon", "Wed", "Fri")
    chapters = [e.text for e in parsed("markitdown/test.epub").elements if e.kind == "title"]
    assert chapters == ["Chapter 1: Test Content", "Chapter 2: More Content"]
