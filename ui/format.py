"""Pure rendering for the web UI: HTML of answers, sources, states and admin tables.

No Gradio, no I/O, no clock: every function takes plain values (sources as dicts with the keys
of ``Source.to_dict()``) and returns escaped HTML or table rows, so it is tested on its own.
Everything that came from a document or a user is escaped; the only markup is our own. Nothing
here returns Markdown: a file name such as ``[Re-login](https:evil.example).docx`` would become a
link there, so every value that a document, a file name, a user or the audit log supplies goes
into HTML (a ``gr.HTML``) through ``html.escape``.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from ingest.reasons import known_code

from .i18n import t

_CITE = re.compile(r"\[(\d{1,3})\]")
_WORD = re.compile(r"[^\W\d_]{3,}|\d{2,}", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_STOP = frozenset(
    [
        "the",
        "and",
        "for",
        "are",
        "was",
        "were",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "does",
        "did",
        "has",
        "have",
        "had",
        "with",
        "from",
        "that",
        "this",
        "these",
        "those",
        "into",
        "about",
        "our",
        "your",
        "their",
        "there",
        "then",
        "than",
        "not",
        "can",
        "will",
        "would",
        "should",
        "could",
    ]
)


def _is_cjk(word: str) -> bool:
    return bool(_CJK.fullmatch(word))


def query_terms(query: str) -> list[str]:
    """Words worth highlighting: latin words of 3+ letters (no stop words), numbers, and
    every two-character run of Chinese text (Chinese has no spaces to split at)."""
    terms: set[str] = set()
    for word in _WORD.findall(query):
        if _CJK.search(word):
            continue
        if word.lower() not in _STOP:
            terms.add(word.lower())
    for run in _CJK.findall(query):
        if len(run) == 1:
            terms.add(run)
        terms.update(run[i : i + 2] for i in range(len(run) - 1))
    return sorted(terms, key=lambda w: (-len(w), w))


def highlight(text: str, query: str) -> str:
    """``text`` as HTML with the query's words in ``<mark>`` (case-insensitive; latin words
    match at word starts, so "pay" marks "payment" but not "repay")."""
    terms = query_terms(query)
    if not terms:
        return html.escape(text)
    parts = [re.escape(w) if _is_cjk(w) else r"(?<!\w)" + re.escape(w) for w in terms]
    pattern = re.compile("|".join(parts), re.IGNORECASE)
    out, last = [], 0
    for match in pattern.finditer(text):
        out.append(html.escape(text[last : match.start()]))
        out.append(f"<mark>{html.escape(match.group(0))}</mark>")
        last = match.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


def render_answer(text: str, *, numbers: Collection[int], turn: int) -> str:
    """The answer as HTML; ``[n]`` for a shown source becomes a link that opens source n."""

    def cite(match: re.Match[str]) -> str:
        n = int(match.group(1))
        if n not in numbers:
            return match.group(0)
        return f'<a class="cite" href="#src-{turn}-{n}" data-turn="{turn}" data-n="{n}">[{n}]</a>'

    escaped = html.escape(text)
    return _CITE.sub(cite, escaped).replace("\n", "<br>")


def mode_label(mode: str, model: str | None, lang: str) -> str:
    """'Model X' or 'Extractive – no language model used'."""
    if mode == "generative" and model:
        return t(lang, "mode.generative", model=model)
    return t(lang, "mode.extractive")


def pages_text(page_start: int | None, page_end: int | None, lang: str) -> str:
    if page_start is None:
        return ""
    if page_end is None or page_end == page_start:
        return f"{t(lang, 'source.page')} {page_start}"
    return f"{t(lang, 'source.pages')} {page_start}–{page_end}"


def render_source(
    source: Mapping[str, Any], *, query: str, lang: str, turn: int, download_url: str | None
) -> str:
    """One numbered source: title, group, pages, section, and the passage (highlighted)."""
    n = int(source["n"])
    title = source.get("title") or source.get("document") or source.get("doc_id", "")
    meta = [f"{t(lang, 'source.group')}: {source.get('group', '')}"]
    pages = pages_text(source.get("page_start"), source.get("page_end"), lang)
    if pages:
        meta.append(pages)
    section = " > ".join(source.get("section") or ())
    if section:
        meta.append(f"{t(lang, 'source.section')}: {section}")
    link = ""
    if download_url:
        link = (
            f'<a class="download" href="{html.escape(download_url)}" download>'
            f"{html.escape(t(lang, 'source.download'))}</a>"
        )
    return (
        f'<details class="source" id="src-{turn}-{n}" data-chunk="'
        f'{html.escape(str(source.get("chunk_id", "")))}">'
        f"<summary>[{n}] {html.escape(str(title))}</summary>"
        f'<div class="meta">{html.escape(" · ".join(meta))}</div>'
        f'<div class="document">{html.escape(str(source.get("document", "")))}</div>'
        f'<div class="passage">{highlight(str(source.get("text", "")), query)}</div>'
        f"{link}</details>"
    )


def render_sources(
    turns: Sequence[Mapping[str, Any]], *, lang: str, download_url: Any = None
) -> str:
    """Sources of every turn, newest first; ``download_url(doc_id)`` gives a link or None."""
    blocks = []
    for index in range(len(turns) - 1, -1, -1):
        turn = turns[index]
        items = [
            render_source(
                s,
                query=str(turn.get("question", "")),
                lang=lang,
                turn=index,
                download_url=download_url(s.get("doc_id")) if download_url else None,
            )
            for s in turn.get("sources", ())
        ]
        if items:
            blocks.append(f'<div class="turn-sources" data-turn="{index}">{"".join(items)}</div>')
    if not blocks:
        return f'<p class="empty">{html.escape(t(lang, "chat.no_sources"))}</p>'
    return "".join(blocks)


def render_conversation(turns: Sequence[Mapping[str, Any]], *, lang: str) -> str:
    """The question/answer pairs with their mode badge; the last answer may be partial."""
    out = []
    for index, turn in enumerate(turns):
        answer = str(turn.get("answer", ""))
        body = (
            render_answer(
                answer, numbers={int(s["n"]) for s in turn.get("sources", ())}, turn=index
            )
            if answer
            else f'<span class="pending">{html.escape(t(lang, "chat.thinking"))}</span>'
        )
        badge = ""
        if turn.get("mode"):
            label = mode_label(turn["mode"], turn.get("model"), lang)
            badge = f'<span class="mode">{html.escape(label)}</span>'
        out.append(
            f'<div class="turn" data-turn="{index}">'
            f'<div class="question">{html.escape(str(turn.get("question", "")))}</div>'
            f'<div class="answer">{body}</div>{badge}</div>'
        )
    return '<div class="conversation">' + "".join(out) + "</div>"


def when(ts: float | None) -> str:
    """UTC time for tables ('-' when unknown)."""
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def reason_text(lang: str, code: str) -> str:
    """``[code] generic message`` of an ingestion failure, translated ("" without a code)."""
    if not code:
        return ""
    return f"[{code}] {t(lang, f'reason.{known_code(code)}')}"


def upload_rows(uploads: Iterable[Any], lang: str) -> list[list[str]]:
    return [
        [u.name, u.group, t(lang, f"state.{u.state}"), reason_text(lang, u.code)] for u in uploads
    ]


def document_rows(docs: Iterable[Any], lang: str) -> list[list[Any]]:
    return [
        [
            d.doc_id,
            d.rel_path,
            d.group,
            d.status,
            d.pages,
            d.chunks,
            reason_text(lang, d.error_code),
            when(d.updated_at),
        ]
        for d in docs
    ]


def model_rows(states: Iterable[Any], lang: str) -> list[list[Any]]:
    yes, no = t(lang, "yes"), t(lang, "no")
    return [
        [
            s.name,
            yes if s.loaded else no,
            f"[{s.reason_code}] {s.reason}" if s.reason_code else s.reason,
            when(s.valid_until),
            s.binding,
            when(s.last_check),
            ", ".join(s.roles),
        ]
        for s in states
    ]


def user_rows(users: Iterable[Any], *, now: int, lang: str) -> list[list[Any]]:
    yes, no = t(lang, "yes"), t(lang, "no")
    return [
        [
            u.name,
            u.role,
            ", ".join(u.groups),
            yes if u.disabled else no,
            yes if u.is_locked(now) else no,
        ]
        for u in users
    ]


def audit_rows(entries: Iterable[Any]) -> list[list[Any]]:
    rows = []
    for e in entries:
        outcome = f"{e.outcome} [{e.reason}]" if e.reason else e.outcome
        rows.append([e.seq, when(e.time), e.actor, e.action, e.object, outcome])
    return rows


def status_html(status: Mapping[str, Any]) -> str:
    """A nested status mapping as nested HTML lists (keys and values escaped)."""

    def items(value: Any) -> str:
        out = []
        if isinstance(value, Mapping):
            for key, item in value.items():
                name = html.escape(str(key))
                if isinstance(item, Mapping | list):
                    out.append(f"<li><b>{name}</b>{items(item)}</li>")
                else:
                    out.append(f"<li>{name}: {html.escape(str(item))}</li>")
        elif isinstance(value, list):
            for item in value:
                nested = isinstance(item, Mapping | list)
                text = items(item) if nested else html.escape(str(item))
                out.append(f"<li>{text}</li>")
        return f"<ul>{''.join(out)}</ul>" if out else ""

    return f'<div class="kapp-status">{items(status)}</div>'


def message_html(text: str, *, kind: str = "result") -> str:
    """One line of text (a result, a verdict) as escaped HTML."""
    return f'<p class="kapp-{html.escape(kind)}">{html.escape(text)}</p>'


def detail_html(text: str) -> str:
    """A failure's detail (the parser's own words, maybe quoting the document) as escaped,
    preformatted text."""
    return f'<pre class="kapp-detail">{html.escape(text)}</pre>'


LANGUAGE_NAMES = (("en", "English"), ("zh", "中文"))


def language_links() -> str:
    """The language switch: one link per interface language (each sets the ``lang`` cookie)."""
    links = (
        f'<a class="lang" id="lang-{code}" href="/ui/lang/{code}" hreflang="{code}">{name}</a>'
        for code, name in LANGUAGE_NAMES
    )
    return '<span class="lang-switch">' + " · ".join(links) + "</span>"


def login_page(lang: str, *, error: str = "", next_url: str = "/", csrf: str = "") -> str:
    """The login form (our own page; the session cookie is set by the POST handler).
    ``csrf``: the token the POST must send back (the same value is in a cookie)."""
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="{html.escape(lang)}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(t(lang, "app.title"))} – {html.escape(t(lang, "login.title"))}</title>
<style>body{{font-family:sans-serif;max-width:22rem;margin:4rem auto;padding:0 1rem}}
label{{display:block;margin-top:1rem}}input{{width:100%;padding:.5rem;box-sizing:border-box}}
button{{margin-top:1.5rem;padding:.6rem 1.2rem}}.error{{color:#b00020}}</style></head>
<body>{language_links()}<h1>{html.escape(t(lang, "app.title"))}</h1>{message}
<form method="post" action="/login">
<input type="hidden" name="next" value="{html.escape(next_url)}">
<input type="hidden" name="csrf" value="{html.escape(csrf)}">
<label>{html.escape(t(lang, "login.user"))}
<input name="username" id="username" autocomplete="username" required maxlength="64"></label>
<label>{html.escape(t(lang, "login.password"))}
<input name="password" id="password" type="password" autocomplete="current-password"
 required maxlength="1024"></label>
<button type="submit" id="login">{html.escape(t(lang, "login.submit"))}</button>
</form></body></html>"""


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, table_id: str = "") -> str:
    """A plain escaped HTML table (one ``<tr>`` per row; ``data-id`` = the first cell)."""
    ident = f' id="{html.escape(table_id)}"' if table_id else ""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        f'<tr data-id="{html.escape(str(r[0]))}">'
        + "".join(f"<td>{html.escape(str(c))}</td>" for c in r)
        + "</tr>"
        for r in rows
    )
    return (
        f'<table class="kapp-table"{ident}><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )
