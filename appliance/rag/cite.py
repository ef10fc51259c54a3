"""Citation checking and link neutralising for model answers, streamed or whole.

What a model writes reaches people through markdown and HTML clients, so before any text leaves:

* citation markers keep only numbers of sources that were given (``[7]`` with three sources is
  removed, ``[1, 7]`` becomes ``[1]``) and take one form: ``【1】``, ``［1］``, ``[1,2]``,
  ``[1-2]`` and ``[Source 1]`` become ``[1]`` / ``[1][2]``; a removed marker takes its leading
  spaces with it;
* markdown images become their alt text, markdown links their text (a link whose text is a
  number is read as a citation), HTML tags (``<img>``, ``<a>``, ``<script>``, ``<iframe>``, any
  tag) are stripped, a tag that never closes loses its ``<`` (to ``＜``), ``<https://…>``
  autolinks lose their brackets, and any leftover ``](`` is split so no client can re-assemble
  a link;
* outside addresses are defanged so nothing auto-links or auto-loads them:
  ``https://example.com/a.pdf`` -> ``hxxps://example[.]com/a[.]pdf``, ``ftp://`` -> ``fxp://``,
  ``//host.tld`` -> ``//host[.]tld``, ``www.host.tld`` -> ``www[.]host[.]tld``,
  ``data:image/png;…`` -> ``data[:]image/png;…``, any other ``://`` -> ``[:]//``. Bare domain
  names (``example.com``) are left alone: markdown clients do not link them.

Where a removal would glue two pieces of ASCII together (``h<b>ttps://…``, ``[<i>7]``), one
space is left instead, so removals can never assemble a new marker, tag or address.

:class:`CitationFilter` does this on a token stream: :meth:`~CitationFilter.feed` returns what is
safe to show now and holds back a tail that may still become a marker, link, tag or address
(``"[12"``, ``"![alt](ht"``, ``"https://exa"``, trailing spaces). The output does not depend on
how the text was split: for every split, the fed pieces plus :meth:`~CitationFilter.finish` equal
:func:`validate` of the whole text (a hypothesis property in the tests). Every construct has a
length bound, so the held-back tail stays short.
"""

from __future__ import annotations

from collections.abc import Callable

import regex

__all__ = ["CitationFilter", "validate"]

_CITE_WORD = r"(?:sources?|src|refs?|来源|资料|文档|出处)"
_CITE = regex.compile(
    r"(?P<ws>[ \t]*)[\[【［]\s*(?:" + _CITE_WORD + r"\s*[:：#]?\s*)?"
    r"(?P<nums>\d{1,4}(?:\s*(?:[,，、;；&]|and|和|[-–~～])\s*(?:"
    + _CITE_WORD
    + r"\s*[:：#]?\s*)?\d{1,4}){0,20})\s*[\]】］]",
    regex.IGNORECASE,
)
_LINK = regex.compile(
    r"(?P<img>!)?\[(?P<text>[^\[\]\n]{0,300})\]\(\s*(?:<[^<>\n]{0,2048}>|[^\s()]{0,2048})"
    r"(?:\s+(?:\"[^\"\n]{0,300}\"|'[^'\n]{0,300}'))?\s*\)"
)
_AUTOLINK = regex.compile(
    r"<(?P<addr>(?:https?|ftp|data|javascript|file|mailto):[^\s<>]{0,2048})>", regex.IGNORECASE
)
_TAG = regex.compile(r"</?[A-Za-z][A-Za-z0-9-]{0,30}(?:\s[^<>]{0,1000})?/?>(?P<tws>[ \t]*)")
# A tag that never closes: only its "<" is consumed (group "consume"), the rest is scanned on.
_TAG_OPEN = regex.compile(r"(?P<consume><)[/!?]?[A-Za-z]")
_HOST_CH = r"[^\s/?#<>\"'`()\[\]{}]"
_HOST_END = r"[^\s/?#<>\"'`()\[\]{}.,;:!?]"
_PATH_CH = r"[^\s<>\"'`()\[\]{}]"
_PATH_END = r"[^\s<>\"'`()\[\]{}.,;:!?]"
_URL = regex.compile(
    rf"(?P<scheme>https?|ftp)://(?P<host>(?:{_HOST_CH}{{0,254}}{_HOST_END})?)"
    rf"(?P<rest>[/?#](?:{_PATH_CH}{{0,2047}}{_PATH_END})?)?",
    regex.IGNORECASE,
)
_DOMAIN = r"[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,10}"
_SLASHES = regex.compile(rf"//(?P<host>[A-Za-z0-9-]{{1,63}}\.{_DOMAIN})")
_WWW = regex.compile(rf"(?P<www>www)\.(?P<host>{_DOMAIN})", regex.IGNORECASE)
_DATA = regex.compile(r"(?P<data>data):(?P<rest>[\w.+/-]{0,100}[;,])", regex.IGNORECASE)
_LINK_BREAK = regex.compile(r"\]\(")
_SCHEME_SEP = regex.compile(
    r"(?P<consume>:)//"
)  # left over where an address ran into another ("x://x://")
_STARTERS = regex.compile(r"[ \t!\[【［<hHfF/wWdD\]:]")

# Characters that could combine into a marker, tag or address when a removal joins them.
_GLUE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789[](<>:/.!-_@")
_GLUE |= frozenset("【】［］＜＞")
_FOLLOWS_FREELY = frozenset(",;!?)")
_MAX_RANGE = 20  # "[1-20]" expands; a wider range is a year or a page span, not citations


class CitationFilter:
    """Streaming citation checker and link neutraliser for one answer (see module doc)."""

    def __init__(self, n_sources: int) -> None:
        if n_sources < 0:
            raise ValueError("n_sources must be >= 0")
        self.n_sources = n_sources
        self._pending = ""
        self._last: str | None = None  # last character already emitted
        self._cited: list[int] = []

    @property
    def cited(self) -> list[int]:
        """Source numbers cited so far, unique, in order of first appearance."""
        return list(self._cited)

    def feed(self, delta: str) -> str:
        """Add ``delta``; return the text that is safe to emit now."""
        self._pending += delta
        return self._drain(final=False)

    def finish(self) -> str:
        """The end of the answer: return everything still held back."""
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> str:
        text, out, pos = self._pending, [], 0
        last = self._last
        while pos < len(text):
            start = _STARTERS.search(text, pos)
            if start is None:
                out.append(text[pos:])
                pos = len(text)
                break
            out.append(text[pos : start.start()])
            pos = start.start()
            if not final and _open_at(text, pos):
                break
            last = next((piece[-1] for piece in reversed(out) if piece), self._last)
            piece, pos = self._rewrite_at(text, pos, last)
            out.append(piece)
        emitted = "".join(out)
        if emitted:
            self._last = emitted[-1]
        self._pending = text[pos:]
        return emitted

    def _rewrite_at(self, text: str, pos: int, prev: str | None) -> tuple[str, int]:
        """The replacement of the construct starting at ``pos`` (or its first character);
        ``prev`` is the last character emitted before it."""
        for pattern, rewrite in _REWRITES:
            m = pattern.match(text, pos)
            if m is not None and m.end() > pos:
                end = m.end("consume") if "consume" in pattern.groupindex else m.end()
                return rewrite(self, m, _Context(prev, text[end : end + 2])), end
        return text[pos], pos + 1

    # --- rewrites (one per construct) ---------------------------------------------------------

    def _citation(self, m: regex.Match[str], ctx: _Context) -> str:
        numbers = [k for k in _numbers(m["nums"]) if 1 <= k <= self.n_sources]
        if not numbers:
            return ctx.join("")
        for k in numbers:
            if k not in self._cited:
                self._cited.append(k)
        tail = " " if ctx.after.startswith("(") else ""  # "[1](" must not become a link
        return m["ws"] + "".join(f"[{k}]" for k in numbers) + tail

    def _link(self, m: regex.Match[str], ctx: _Context) -> str:
        label = m["text"]
        as_citation = None if m["img"] else _CITE.fullmatch(f"[{label}]")
        if as_citation is not None:
            return self._citation(as_citation, ctx)
        return ctx.join(self._inner(label))

    def _autolink(self, m: regex.Match[str], ctx: _Context) -> str:
        return ctx.join(self._inner(m["addr"]))

    def _tag(self, m: regex.Match[str], ctx: _Context) -> str:
        if m["tws"] and ctx.prev is not None and not ctx.prev.isspace():
            return " "  # the tag took the space after it; "word<br> next" keeps one
        return ctx.join("")

    def _tag_open(self, m: regex.Match[str], ctx: _Context) -> str:
        return "＜"

    def _inner(self, text: str) -> str:
        inner = CitationFilter(self.n_sources)
        out = inner.feed(text) + inner.finish()
        for k in inner.cited:
            if k not in self._cited:
                self._cited.append(k)
        return out

    def _url(self, m: regex.Match[str], ctx: _Context) -> str:
        scheme = {"http": "hxxp", "https": "hxxps", "ftp": "fxp"}[m["scheme"].lower()]
        return f"{scheme}://{_defang_path(m['host'] + (m['rest'] or ''))}"

    def _slashes(self, m: regex.Match[str], ctx: _Context) -> str:
        return "//" + _defang_host(m["host"])

    def _www(self, m: regex.Match[str], ctx: _Context) -> str:
        return f"{m['www']}[.]{_defang_host(m['host'])}"

    def _data(self, m: regex.Match[str], ctx: _Context) -> str:
        return f"{m['data']}[:]{m['rest']}"

    def _link_break(self, m: regex.Match[str], ctx: _Context) -> str:
        return "] ("

    def _scheme_sep(self, m: regex.Match[str], ctx: _Context) -> str:
        return "[:]"


class _Context:
    """Around a construct: the last character emitted before it, up to two input characters
    after it."""

    __slots__ = ("after", "prev")

    def __init__(self, prev: str | None, after: str) -> None:
        self.prev, self.after = prev, after

    def join(self, replacement: str) -> str:
        """``replacement`` with a space on a side where a removal would glue ASCII together."""
        if not replacement:
            return " " if self._glues(self.prev, self.after) else ""
        left = " " if self._glues(self.prev, replacement[0]) else ""
        right = " " if self._glues(replacement[-1], self.after) else ""
        return left + replacement + right

    @staticmethod
    def _glues(before: str | None, after: str) -> bool:
        if before is None or not after or before not in _GLUE or after[0] not in _GLUE:
            return False
        if after[0] in _FOLLOWS_FREELY:
            return False
        return not (after[0] == "." and (len(after) == 1 or after[1].isspace()))


_Rewrite = Callable[[CitationFilter, "regex.Match[str]", _Context], str]
_REWRITES: tuple[tuple[regex.Pattern[str], _Rewrite], ...] = (
    (_LINK, CitationFilter._link),
    (_CITE, CitationFilter._citation),
    (_AUTOLINK, CitationFilter._autolink),
    (_TAG, CitationFilter._tag),
    (_TAG_OPEN, CitationFilter._tag_open),
    (_URL, CitationFilter._url),
    (_SLASHES, CitationFilter._slashes),
    (_WWW, CitationFilter._www),
    (_DATA, CitationFilter._data),
    (_LINK_BREAK, CitationFilter._link_break),
    (_SCHEME_SEP, CitationFilter._scheme_sep),
)


def _open_at(text: str, pos: int) -> bool:
    """Whether a construct starting at ``pos`` may still change with more text.

    True when any pattern matches partially up to the end, or completely but so close to the end
    that the two characters after it (which decide spacing) or a longer match are still unknown.
    """
    for pattern, _ in _REWRITES:
        m = pattern.match(text, pos, partial=True)
        if m is not None and (m.partial or m.end() > len(text) - 2):
            return True
    return False


def _numbers(spec: str) -> list[int]:
    """``"1, 2-4 and 7"`` -> ``[1, 2, 3, 4, 7]`` (unique, in order)."""
    found: list[int] = []
    parts = regex.split(r"\s*(?:[,，、;；&]|and|和)\s*", spec, flags=regex.IGNORECASE)
    for part in parts:
        ends = [int(d) for d in regex.findall(r"\d+", part)]
        if len(ends) == 2 and 0 < ends[1] - ends[0] <= _MAX_RANGE:
            ends = list(range(ends[0], ends[1] + 1))
        found.extend(k for k in ends if k not in found)
    return found


def _defang_host(host: str) -> str:
    return host.replace(".", "[.]")


_NESTED = regex.compile(r"://|(?<=data):", regex.IGNORECASE)


def _defang_path(text: str) -> str:
    """A URL's host and path, defanged: dots, and any address that ran on inside it
    (``http://a/b;http://c``, ``…/data:image…``) loses its scheme separator."""
    return _NESTED.sub(lambda m: "[:]" + m[0][1:], _defang_host(text))


def validate(text: str, n_sources: int) -> tuple[str, list[int]]:
    """One-shot :class:`CitationFilter`: the cleaned text and the cited source numbers."""
    f = CitationFilter(n_sources)
    out = f.feed(text) + f.finish()
    return out, f.cited
