"""Pure rendering of the web UI: escaping, citations, highlighting, tables, languages."""

from __future__ import annotations

import re
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from ui.format import (
    highlight,
    html_table,
    login_page,
    mode_label,
    pages_text,
    query_terms,
    render_answer,
    render_conversation,
    render_sources,
    status_html,
    upload_rows,
)
from ui.i18n import EN, TABLES, ZH, pick_language, t

SOURCE = {
    "n": 1,
    "chunk_id": "doc-1:1:0",
    "doc_id": "doc-1",
    "document": "finance/budget.md",
    "group": "finance",
    "title": "Budget <2027>",
    "section": ["Budget 2027", "Travel"],
    "page_start": 3,
    "page_end": 4,
    "text": "The travel budget is 48,000 euros. Travelling needs approval.",
}


def test_both_languages_have_the_same_keys_and_placeholders() -> None:
    assert EN.keys() == ZH.keys()
    for key in EN:
        assert set(re.findall(r"{(\w+)}", EN[key])) == set(re.findall(r"{(\w+)}", ZH[key])), key


def test_language_from_cookie_then_accept_language() -> None:
    assert pick_language("zh-CN,zh;q=0.9,en;q=0.8") == "zh"
    assert pick_language("en-US,en;q=0.9,zh;q=0.8") == "en"
    assert pick_language("fr-FR,zh;q=0.5") == "zh"
    assert pick_language("fr-FR") == "en"
    assert pick_language(None) == "en"
    assert pick_language("en", cookie="zh") == "zh"
    assert pick_language("zh", cookie="xx") == "zh"
    assert t("zh", "admin.verified", n=3) == "审计日志完整：已校验 3 条记录。"
    assert set(TABLES) == {"en", "zh"}


def test_highlight_marks_query_words_at_word_starts_and_escapes() -> None:
    out = highlight("<b>Travel</b> budget; repay travelling", "What is the TRAVEL budget?")
    assert out == (
        "&lt;b&gt;<mark>Travel</mark>&lt;/b&gt; <mark>budget</mark>; repay <mark>travel</mark>ling"
    )
    assert "the" not in query_terms("what is the budget")


def test_highlight_chinese_by_character_pairs() -> None:
    out = highlight("每位员工有28天年假。", "员工年假有几天")
    assert "<mark>员工</mark>" in out and "<mark>年假</mark>" in out


@given(st.text(max_size=200), st.text(max_size=40))
def test_highlight_never_changes_the_text_and_never_leaks_markup(text: str, query: str) -> None:
    out = highlight(text, query)
    plain = out.replace("<mark>", "").replace("</mark>", "")
    import html

    assert html.unescape(plain) == text
    assert "<" not in plain


def test_citations_link_only_to_shown_sources() -> None:
    out = render_answer("See [1] and [7].\n<script>", numbers={1}, turn=2)
    assert '<a class="cite" href="#src-2-1" data-turn="2" data-n="1">[1]</a>' in out
    assert "[7]" in out and "src-2-7" not in out
    assert "&lt;script&gt;" in out and "<br>" in out


def test_source_panel_shows_title_group_pages_section_passage_and_download() -> None:
    out = render_sources(
        [{"question": "travel budget", "sources": [SOURCE]}],
        lang="en",
        download_url=lambda doc_id: f"/ui/download/{doc_id}",
    )
    assert 'id="src-0-1"' in out and "Budget &lt;2027&gt;" in out
    assert "group: finance · pages 3–4 · section: Budget 2027 &gt; Travel" in out
    assert "<mark>travel</mark>" in out.lower() and "/ui/download/doc-1" in out
    without = render_sources([{"question": "x", "sources": [SOURCE]}], lang="zh")
    assert "download" not in without and "组: finance" in without
    assert "Sources of the answer" in render_sources([], lang="en")


def test_pages_and_mode_labels() -> None:
    assert pages_text(None, None, "en") == ""
    assert pages_text(5, 5, "en") == "page 5"
    assert mode_label("generative", "qwen-ft", "en") == "Model qwen-ft"
    assert mode_label("extractive", None, "en") == "Extractive – no language model used"
    assert mode_label("extractive", None, "zh").startswith("摘录模式")


def test_conversation_shows_pending_answer_and_mode() -> None:
    turns = [
        {"question": "q<1>", "answer": "a [1]", "sources": [SOURCE], "mode": "extractive"},
        {"question": "q2", "answer": "", "sources": []},
    ]
    out = render_conversation(turns, lang="en")
    assert "q&lt;1&gt;" in out and 'href="#src-0-1"' in out
    assert "Extractive" in out and "Searching your documents" in out


def test_tables_escape_cells_and_translate_states() -> None:
    upload = SimpleNamespace(name="a<b>.docx", group="hr", state="failed", code="corrupt")
    rows = upload_rows([upload], "zh")
    assert rows == [["a<b>.docx", "hr", "失败", f"[corrupt] {ZH['reason.corrupt']}"]]
    out = html_table(["file"], rows, table_id="u")
    assert "a&lt;b&gt;.docx" in out and 'id="u"' in out and out.count("<tr") == 2


def test_status_html_and_login_page_escape() -> None:
    out = status_html({"overall": {"ok": True, "problems": ["<x>", {"code": "[a](b)"}]}})
    assert "<li><b>overall</b><ul><li>ok: True</li>" in out and "<li>&lt;x&gt;</li>" in out
    assert "<li>code: [a](b)</li>" in out
    page = login_page("zh", error="<bad>")
    assert "&lt;bad&gt;" in page and 'action="/login"' in page and "用户名" in page


def test_language_switch_links_on_the_login_page() -> None:
    page = login_page("en")
    assert 'href="/ui/lang/zh"' in page and 'href="/ui/lang/en"' in page and "中文" in page


def test_locale_script_goes_first_in_an_html_head_only() -> None:
    from ui.routes import _inject

    html_headers = {b"content-type": b"text/html; charset=utf-8"}
    out = _inject(b"<html><head><title>x</title></head></html>", html_headers, "zh-CN")
    assert out.startswith(b"<html><head><script>") and b'("zh-CN")</script><title>' in out
    assert _inject(b"<head>", {b"content-type": b"application/json"}, "zh") == b"<head>"
    gzipped = {**html_headers, b"content-encoding": b"gzip"}
    assert _inject(b"<head>", gzipped, "zh") == b"<head>"
