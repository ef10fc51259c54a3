"""Text formats (txt, csv, html, md, eml), images, encodings and the cheap language tags."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.elements import ParsedDocument
from ingest.errors import Rejected
from ingest.parse import ParseLimits, decode_html, parse_file
from ingest.parse_plain import heading_level, plain_text_elements
from ingest.parse_text import decode_bytes, guess_language, join_cjk_spaces
from tests.ingest.conftest import all_text, corpus_file, require_tool

Parsed = Callable[..., ParsedDocument]
ZH = "企业知识库设备：员工把文件放进文件夹，系统自动解析并建立索引。"


def test_plain_text_paragraphs_and_bullets(parsed: Parsed) -> None:
    document = parsed("unstructured/fake-text.txt")
    kinds = [(e.kind, e.text) for e in document.elements]
    assert kinds[0] == ("text", "This is a test document to use for unit tests.")
    assert ("list_item", "Dogs are the best") in kinds


@pytest.mark.parametrize(
    "relative",
    [
        "unstructured/fake-text-utf-16.txt",
        "unstructured/fake-text-utf-16-be.txt",  # no BOM
        "unstructured/fake-text-utf-32.txt",
    ],
)
def test_unicode_encodings_are_detected(parsed: Parsed, relative: str) -> None:
    assert "This is a test document to use for unit tests." in all_text(parsed(relative))


def test_shift_jis_csv_keeps_its_kanji(parsed: Parsed) -> None:
    table = parsed("markitdown/test_mskanji.csv").elements[0].table
    assert table is not None and table.header == ("名前", "年齢", "住所")
    assert ("髙橋淳", "35", "名古屋") in table.rows


def test_csv_layout_banner_header_and_delimiter(parsed: Parsed) -> None:
    title, table = parsed("unstructured/stanley-cups-utf-16.csv").elements
    assert (title.kind, title.text) == ("title", "Stanley Cups")
    assert table.table is not None and table.table.header == ("Team", "Location", "Stanley Cups")
    semicolons = parsed("unstructured/table-semicolon-delimiter.csv").elements[0].table
    assert semicolons is not None and semicolons.rows[1] == ("2023", "2", "143,1", "-814,38")


@pytest.mark.parametrize("encoding", ["gb18030", "gbk", "utf-16-le"])
def test_chinese_without_bom_is_never_garbled(encoding: str) -> None:
    text, _ = decode_bytes(ZH.encode(encoding))
    assert text == ZH


def test_short_gbk_csv_decodes_as_chinese() -> None:
    data = "项目,金额\n销售额,100\n利润,20\n".encode("gbk")  # statistical detectors say cp949
    assert decode_bytes(data) == ("项目,金额\n销售额,100\n利润,20\n", "gb18030")


@settings(max_examples=80, deadline=None)
@given(
    st.text(
        alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=200
    )
)
def test_utf8_always_round_trips(text: str) -> None:
    # NUL characters are excluded: BOM-less UTF-16 is recognised by its NUL bytes, and text
    # with NULs in it is not plain text (e.g. "0\x00\x80" is also valid UTF-16-LE).
    assert decode_bytes(text.encode("utf-8"))[0] == text.lstrip("\ufeff")


def test_html_headings_lists_and_tables(parsed: Parsed) -> None:
    document = parsed("unstructured/fake-html.html")
    titles = [(e.text, e.level) for e in document.elements if e.kind == "title"]
    assert titles == [("My First Heading", 1), ("My Second Heading", 2), ("A Third Heading", 3)]
    table = next(e.table for e in document.elements if e.table)
    assert table.header == ("Column 1", "Column 2")
    assert ("Row 1, Cell 1", "Row 1, Cell 2") in table.rows


def test_html_legacy_encodings(parsed: Parsed) -> None:
    assert "Die schöne Frau" in all_text(parsed("unstructured/fake-html-cp1252.html"))
    japanese = all_text(parsed("unstructured/example-steelJIS-datasheet-utf-16.html"))
    assert "成分" in japanese
    html = '<html><head><meta charset="gb2312"></head><body><p>报告</p></body></html>'
    assert "报告" in decode_html(html.encode("gb2312"))  # the declaration wins over guessing


def test_markdown_code_and_umlauts(parsed: Parsed) -> None:
    kinds = [e.kind for e in parsed("unstructured/codeblock.md").elements]
    assert kinds.count("code") == 3 and "title" in kinds
    assert "können" in all_text(parsed("unstructured/umlauts-non-utf8.md"))


def test_email_headers_body_and_attachment_names(parsed: Parsed) -> None:
    document = parsed("unstructured/eml/fake-email-attachment.eml")
    subject, envelope, *body = document.elements
    assert (subject.kind, subject.text, subject.level) == ("title", "Fake email with attachment", 1)
    assert subject.extra["attachments"] == "fake-attachment.txt"
    assert envelope.text.startswith("From: Mallori Harrell <mallori@unstructured.io>")
    assert ("list_item", "Little to no content") in [(e.kind, e.text) for e in body]
    assert "Hey this is a fake attachment!" not in all_text(document)  # not parsed now
    assert document.title == "Fake email with attachment"
    assert "fake-attachment.txt" in document.warnings[0]


def test_email_encoded_subject_and_utf16_file(parsed: Parsed) -> None:
    assert parsed("unstructured/eml/mime-word-encoded-subject.eml").title == (
        "Simple email with ☸☿ Unicode subject"
    )
    assert "Violets are blue" in all_text(parsed("unstructured/eml/fake-email-utf-16-be.eml"))


@pytest.mark.parametrize(
    ("relative", "code"),
    [
        ("unstructured/eml/fake-encrypted.eml", "password-protected"),
        ("unstructured/eml/empty.eml", "empty"),
        ("unstructured/fake-text-all-whitespace.txt", "empty"),
    ],
)
def test_refused_text_files(relative: str, code: str) -> None:
    with pytest.raises(Rejected) as info:
        parse_file(corpus_file(relative), limits=ParseLimits())
    assert info.value.code == code


def test_chinese_image_is_ocred_with_chi_sim(parsed: Parsed) -> None:
    require_tool("tesseract", "tesseract-ocr")
    document = parsed("unstructured/img/chi_sim_image.jpeg")
    text = all_text(document)
    assert "适用人群" in text and "肌肤" in text
    assert " 肌 肤" not in text  # OCR's spaces between hanzi are removed
    assert document.ocr_pages == 1 and document.elements[0].language == "zh"


def test_photo_without_text_is_empty() -> None:
    require_tool("tesseract", "tesseract-ocr")
    with pytest.raises(Rejected) as info:
        parse_file(corpus_file("unstructured/img/bmp_24.bmp"), limits=ParseLimits())
    assert info.value.code == "empty"


def test_language_tags() -> None:
    assert guess_language(ZH) == "zh"
    assert guess_language("我们使用 Milvus 和 BM25 进行检索") == "zh"
    assert guess_language("The appliance answers questions offline.") == "en"
    assert guess_language("これは日本語のテキストです") == "ja"
    assert guess_language("한국어 텍스트입니다") == "ko"
    assert guess_language("2023-06-30 | 12,553") is None


def test_plain_text_headings() -> None:
    assert heading_level("第三章 文件分类") == 1
    assert heading_level("第二节 范围") == 2
    assert heading_level("2.1 Scope") == 2
    assert heading_level("CHAPTER IV") == 1
    assert heading_level("Quarterly Sales Report") == 2
    assert heading_level("This is a sentence.") == 0
    assert heading_level('1. Hugman, Barry J., ed. (2005). "Who\'s Who"') == 0
    elements = plain_text_elements(
        "第一章 总则\n\n为了规范管理，特制定本制度。\n\n一、合同。\n二、财务。"
    )
    assert [(e.kind, e.level) for e in elements] == [
        ("title", 1),
        ("text", 0),
        ("list_item", 0),
        ("list_item", 0),
    ]
    assert join_cjk_spaces("适 用 人 群 : all") == "适用人群 : all"
