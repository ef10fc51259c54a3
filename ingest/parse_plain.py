"""Structure for plain text (``.txt``, e-mail bodies, OCR output): paragraphs, headings, lists.

Why not `unstructured.partition_text`: it runs spaCy's English tagger on every paragraph
(104 s for a 3 MB novel here) and calls every Chinese paragraph a title. These rules are cheap
and language-neutral: a heading is a short line standing alone, without sentence punctuation,
that is numbered ("2.1 Scope", "第三章", "一、") or styled like a heading (Title Case, CAPS).
"""

from __future__ import annotations

import re

from ingest.elements import Element
from ingest.parse_text import clean_text

MAX_HEADING_CHARS = 80
LONG_BLOCK_LINES = 8  # a "paragraph" longer than this is probably text without blank lines
SHORT_LINE_SHARE = 0.6
_BULLET_RE = re.compile(
    r"^\s*(?:(?:[-*•·●▪◦○■□➢►‣]|\(?\d{1,2}[).]|\(?[a-zA-Z][).])\s+\S"
    r"|[一二三四五六七八九十]+、|\d{1,2}、|[（(][一二三四五六七八九十\d]+[）)])"
)
_SYMBOL_BULLET_RE = re.compile(r"^\s*[-*•·●▪◦○■□➢►‣]\s+")
_CHAPTER_RE = re.compile(r"^第[一二三四五六七八九十百千零〇\d]+([章节条部篇卷编])")
_CN_ORDINAL_RE = re.compile(r"^[一二三四五六七八九十]+、")
_CN_PAREN_RE = re.compile(r"^[（(][一二三四五六七八九十]+[）)]")
_NUMBERED_RE = re.compile(r"^(\d{1,2}(?:\.\d{1,2}){0,4})\.?\s+\S")
_ROMAN_RE = re.compile(r"^(?:CHAPTER|PART|SECTION|Chapter|Part|Section)\s+[\dIVXLC]+\b")
_SENTENCE_END = tuple(".!?;:,。！？；：，")
_NOT_IN_HEADINGS = (", ", "[", '"', "“", "(http", " | ")
_CHAPTER_LEVELS = {"部": 1, "篇": 1, "卷": 1, "编": 1, "章": 1, "节": 2, "条": 3}


def heading_level(line: str) -> int:
    """Heading depth (1 = top) of a stand-alone line, or 0 when it reads like body text."""
    line = line.strip()
    if not line or len(line) > MAX_HEADING_CHARS or "\n" in line:
        return 0
    chapter = _CHAPTER_RE.match(line)
    if chapter:
        return _CHAPTER_LEVELS[chapter.group(1)]
    if _CN_ORDINAL_RE.match(line):
        return 2 if not line.endswith(_SENTENCE_END) else 0
    if _CN_PAREN_RE.match(line):
        return 3 if not line.endswith(_SENTENCE_END) else 0
    if line.endswith(_SENTENCE_END) or not any(c.isalpha() for c in line):
        return 0
    if _ROMAN_RE.match(line):
        return 1
    if any(mark in line for mark in _NOT_IN_HEADINGS):
        return 0  # citations, references, table rows
    numbered = _NUMBERED_RE.match(line)
    if numbered:
        return min(numbered.group(1).count(".") + 1, 3)
    return _styled_heading_level(line)


def _styled_heading_level(line: str) -> int:
    tokens = line.split()
    words = [w for w in tokens if any(c.isalpha() for c in w)]
    if not words or len(words) > 12 or len(words) < 0.7 * len(tokens):
        return 0
    if line.isupper() and len(words) >= 1 and len(line) >= 3:
        return 1
    small = {"a", "an", "and", "as", "at", "by", "for", "in", "of", "on", "or", "the", "to", "with"}
    capitalised = [w for w in words if w[0].isupper() or w.lower() in small]
    if len(words) >= 2 and len(capitalised) == len(words) and words[0][0].isupper():
        return 2
    return 0


def is_list_item(line: str) -> bool:
    return bool(_BULLET_RE.match(line))


def split_paragraphs(text: str) -> list[str]:
    """Blank lines separate paragraphs; form feeds (page breaks) do too.

    Text without blank lines (exports, copy-paste from web pages) falls back to the reflow rule:
    a line much shorter than the text's typical line ends its paragraph.
    """
    text = clean_text(text.replace("\f", "\n\n"))
    paragraphs: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.split("\n") if line.strip()]
        if len(lines) > LONG_BLOCK_LINES:
            paragraphs.extend(_split_at_short_lines(lines))
        elif lines:
            paragraphs.append("\n".join(lines).strip())
    return paragraphs


def _split_at_short_lines(lines: list[str]) -> list[str]:
    lengths = sorted(len(line.rstrip()) for line in lines)
    typical = lengths[int(0.9 * (len(lengths) - 1))]
    out: list[str] = []
    current: list[str] = []
    for line in lines:
        current.append(line)
        if len(line.rstrip()) < SHORT_LINE_SHARE * typical or is_list_item(line):
            out.append("\n".join(current).strip())
            current = []
    if current:
        out.append("\n".join(current).strip())
    return out


def _join_lines(lines: list[str]) -> str:
    """Re-flow hard-wrapped lines; keep the line break where either side is CJK."""
    out = lines[0].strip()
    for line in lines[1:]:
        line = line.strip()
        if not line:
            continue
        if out.endswith("-") and line[:1].islower():
            out = out[:-1] + line
        elif out and (ord(out[-1]) > 0x2E80 or ord(line[0]) > 0x2E80):
            out += line
        else:
            out += " " + line
    return out


def paragraph_elements(
    paragraph: str, page: int | None = None, *, headings: bool = True
) -> list[Element]:
    """Elements for one paragraph: a heading, list items, or one text block.

    ``headings=False`` when the caller has a better signal (a PDF's font sizes).
    """
    lines = [line for line in paragraph.split("\n") if line.strip()]
    if not headings:
        if any(is_list_item(line) for line in lines):
            return _list_block(lines, page)
        return [Element(kind="text", text=_join_lines(lines), page=page)]
    if len(lines) == 1:
        level = heading_level(lines[0])
        if level:
            return [Element(kind="title", text=lines[0].strip(), page=page, level=level)]
    if any(is_list_item(line) for line in lines):
        return _list_block(lines, page)
    # A numbered or chapter heading directly above its first paragraph (no blank line).
    first_level = heading_level(lines[0]) if _is_marked_heading(lines[0]) else 0
    if first_level:
        heading = Element(kind="title", text=lines[0].strip(), page=page, level=first_level)
        return [heading, Element(kind="text", text=_join_lines(lines[1:]), page=page)]
    return [Element(kind="text", text=_join_lines(lines), page=page)]


def _is_marked_heading(line: str) -> bool:
    """Headings recognisable without a blank line after them: numbered, chapter, or CAPS."""
    line = line.strip()
    marked = (_CHAPTER_RE, _CN_ORDINAL_RE, _CN_PAREN_RE, _ROMAN_RE, _NUMBERED_RE)
    return any(r.match(line) for r in marked) or (line.isupper() and len(line) >= 3)


def _list_block(lines: list[str], page: int | None) -> list[Element]:
    """Bulleted lines start items; other lines continue the current item (or lead text)."""
    elements: list[Element] = []
    current: list[str] = []
    current_is_item = False
    for line in lines:
        if is_list_item(line):
            elements.extend(_flush(current, current_is_item, page))
            current, current_is_item = [line], True
        else:
            current.append(line)
    elements.extend(_flush(current, current_is_item, page))
    return elements


def _flush(lines: list[str], is_item: bool, page: int | None) -> list[Element]:
    if not lines:
        return []
    text = _join_lines(lines)
    if is_item:  # symbol bullets are layout; numbers ("2.", "(b)") carry meaning and stay
        return [Element(kind="list_item", text=_SYMBOL_BULLET_RE.sub("", text, count=1), page=page)]
    return [Element(kind="text", text=text, page=page)]


def plain_text_elements(
    text: str, page: int | None = None, *, headings: bool = True
) -> list[Element]:
    """All elements of a plain-text body, in order."""
    elements: list[Element] = []
    for paragraph in split_paragraphs(text):
        elements.extend(paragraph_elements(paragraph, page, headings=headings))
    return elements


def paged_text_elements(text: str) -> list[Element]:
    """Like :func:`plain_text_elements`, numbering pages at form feeds (Tesseract, pdftotext)."""
    elements: list[Element] = []
    for number, page_text in enumerate(text.split("\f"), start=1):
        elements.extend(plain_text_elements(page_text, page=number))
    return elements
