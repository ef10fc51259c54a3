"""PDF → elements with page numbers: pdfminer for the text layer, Tesseract for scanned pages.

Why this shape:
- qpdf (through pikepdf) opens first. It answers "is it encrypted, and does the empty password
  open it?" and repairs broken cross-reference tables far better than pdfminer. Encrypted files
  that open with the empty password, and files pdfminer chokes on, are re-written by qpdf into
  the private work directory and parsed from there.
- `unstructured.partition_pdf` needs `unstructured-inference` (layout models) even for the
  "fast" strategy in 0.27, which this product does not ship; pdfminer is what "fast" uses anyway.
- Headings come from font size: text clearly larger than the body text is a heading, and the
  distinct heading sizes, largest first, give levels 1-3.
"""

from __future__ import annotations

import contextlib
import logging
import re
import statistics
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.elements import Element, ParsedDocument
from ingest.errors import Rejected
from ingest.parse_limits import ParseLimits
from ingest.parse_pdfium import LARGE_PDF_PAGES, extract_pages_pdfium, pdfium_available
from ingest.parse_plain import is_list_item, plain_text_elements
from ingest.parse_text import clean_text, has_letters, join_cjk_spaces
from ingest.parse_tools import ocr_image, render_pdf_page, tesseract_path, usable_ocr_languages

MIN_PAGE_CHARS = 20  # fewer characters of text on a page with an image: treat it as a scan
HEADING_RATIO = 1.15  # font size relative to the body text from which a line is a heading
MAX_HEADING_SHARE = 0.15  # a size carrying more of the text than this is body text, not headings
MAX_HEADING_CHARS = 200
MAX_BARE_NUMBER_CHARS = 8  # a box of digits this short in the margin band is a page number
MARGIN_BAND = 0.15  # top and bottom share of the page height where page numbers sit
SCAN_HINT = "scanned document: install tesseract-ocr to index it"


@dataclass
class _Box:
    text: str
    size: float  # median font size; 0 when unknown (PDFium path)
    flowing: bool = True  # one paragraph (pdfminer box) rather than a page of lines
    y0: float = 0.0  # vertical extent on the page (pdfminer path)
    y1: float = 0.0


@dataclass
class _Page:
    number: int
    boxes: list[_Box] = field(default_factory=list)
    has_image: bool = False
    height: float = 0.0

    @property
    def chars(self) -> int:
        return sum(len(box.text) for box in self.boxes)


@dataclass
class _Opened:
    """What qpdf learned on opening the file."""

    source: Path  # the file to extract from (a decrypted copy for encrypted files)
    pages: int | None = None
    title: str = ""
    notes: list[str] = field(default_factory=list)
    failure: str = ""  # qpdf could not open the file: why
    damage: str = ""  # qpdf opened it after repairing damage: its first complaint


def parse_pdf(path: Path, *, limits: ParseLimits, workdir: Path) -> ParsedDocument:
    """Parse a PDF; raises :class:`Rejected` with code password-protected/corrupt/empty/no-text."""
    opened = _open_with_qpdf(path, workdir)
    if opened.pages is not None and opened.pages > limits.max_pages:
        raise Rejected(
            f"The PDF has {opened.pages} pages, more than the limit of {limits.max_pages}.",
            code="oversized",
            hint="Split the document, or raise the page limit in the ingest settings.",
        )
    notes = list(opened.notes)
    if opened.pages is not None and opened.pages >= LARGE_PDF_PAGES and pdfium_available():
        pages = _pdfium_pages(opened.source, limits.max_pages)
        notes.append(f"long PDF ({opened.pages} pages): fast text extraction, no font headings")
    else:
        pages = _extract_with_repair(path, opened, workdir, limits.max_pages)
    elements = _text_elements(pages)
    scans = [p for p in pages if p.chars < MIN_PAGE_CHARS and p.has_image]
    ocr_elements, ocr_notes = _ocr_pages(opened.source, scans, limits, workdir)
    elements = _merge_in_page_order(elements, ocr_elements)
    if not any(e.text.strip() for e in elements):
        raise _no_text(len(pages), scans, limits, opened)
    return ParsedDocument(
        elements=tuple(elements),
        title=opened.title or path.stem,
        pages=opened.pages or len(pages),
        warnings=(*notes, *ocr_notes),
        ocr_pages=len({e.page for e in ocr_elements}),
    )


def _open_with_qpdf(path: Path, workdir: Path) -> _Opened:
    """Open with qpdf (empty password); decrypt into ``workdir`` when the file is encrypted."""
    import pikepdf

    try:
        pdf = pikepdf.open(path)  # tries the empty password
    except pikepdf.PasswordError as exc:
        raise Rejected(
            "The PDF is encrypted with a password; it cannot be read without it.",
            code="password-protected",
            hint="Save a copy without a password (Print to PDF, or qpdf --decrypt) and drop it.",
        ) from exc
    except (pikepdf.PdfError, OSError, RuntimeError) as exc:
        return _Opened(path, failure=_qpdf_reason(exc))
    with pdf:
        opened = _Opened(path, pages=len(pdf.pages), title=_metadata_title(pdf))
        complaints = [
            w.split(": ", 1)[-1] for w in pdf.get_warnings() if "file is damaged" not in w
        ]
        opened.damage = complaints[0] if complaints else ""
        if pdf.is_encrypted:
            opened.source = workdir / "decrypted.pdf"
            pdf.save(opened.source, encryption=False)
            opened.notes.append(
                "the PDF is encrypted but opens without a password; indexed from a decrypted copy"
            )
    return opened


#: Titles that producers write when the author gave none ("(anonymous)": some PDF printers).
_PLACEHOLDER_TITLES = frozenset({"title", "document", "(anonymous)", "anonymous"})


def _metadata_title(pdf: Any) -> str:
    try:
        value = str(pdf.docinfo.get("/Title", ""))
    except (ValueError, TypeError, KeyError, RuntimeError):
        return ""
    value = "".join(ch for ch in value if ch.isprintable()).strip()  # "imagemagick-lzw\x00"
    placeholder = value.lower() in _PLACEHOLDER_TITLES or value.lower().startswith(
        ("untitled", "microsoft word")
    )
    file_name = re.search(r"\.[A-Za-z]{2,4}$", value) is not None  # "loremipsum.jpg", "a.docx"
    return value if 3 <= len(value) <= 200 and not placeholder and not file_name else ""


def _qpdf_reason(exc: BaseException) -> str:
    """qpdf's message without the file path it starts with, mapped to plain words."""
    message = str(exc).split(": ", 1)[-1].strip()
    known = {
        "unable to find trailer": "PDF has no trailer (its cross-reference table is missing)",
        "unable to find page tree": "PDF has no page tree",
        "pages tree has no /Kids": "PDF has an empty page tree",
        "unable to find /Root": "PDF has no /Root catalog",
    }
    for needle, meaning in known.items():
        if needle in message:
            return f"{meaning}; qpdf: {message}"
    return message[:300]


def _extract_with_repair(path: Path, opened: _Opened, workdir: Path, max_pages: int) -> list[_Page]:
    """pdfminer on the file; on failure, on a copy qpdf has rewritten; then PDFium."""
    qpdf_failure, source = opened.failure, opened.source
    try:
        return _extract_pages(source, max_pages)
    except Exception as first:  # noqa: BLE001 - pdfminer raises anything on damaged input
        failure: BaseException = first
    # Remembered for the verdict: if no text comes out of the fallbacks, the file is damaged.
    opened.damage = opened.damage or f"pdfminer: {type(failure).__name__}: {failure}"[:200]
    repaired = None if qpdf_failure else _qpdf_rewrite(path, workdir)
    if repaired is not None:
        try:
            return _extract_pages(repaired, max_pages)
        except Exception as second:  # noqa: BLE001
            failure = second
    if pdfium_available():  # PDFium reads some files pdfminer cannot
        with contextlib.suppress(Rejected, RuntimeError, OSError):
            return _pdfium_pages(repaired or source, max_pages)
    if qpdf_failure:  # every library failed: qpdf's diagnosis is the readable one
        raise Rejected(f"The PDF is damaged: {qpdf_failure}.", code="corrupt") from failure
    raise _corrupt(failure) from failure


def _pdfium_pages(source: Path, max_pages: int) -> list[_Page]:
    pages: list[_Page] = []
    for number, text, has_image in extract_pages_pdfium(source, max_pages):
        cleaned = join_cjk_spaces(clean_text(text))
        boxes = [_Box(cleaned, 0.0, flowing=False)] if cleaned else []
        pages.append(_Page(number, boxes, has_image))
    return pages


def _qpdf_rewrite(path: Path, workdir: Path) -> Path | None:
    import pikepdf

    target = workdir / "repaired.pdf"
    try:
        with warnings.catch_warnings(), pikepdf.open(path) as pdf:
            warnings.simplefilter("ignore")  # pikepdf's notes on forms; the copy is only read
            pdf.save(target, encryption=False, object_stream_mode=pikepdf.ObjectStreamMode.disable)
    except (pikepdf.PdfError, OSError, RuntimeError, ValueError):
        return None
    return target


def _corrupt(exc: BaseException) -> Rejected:
    name = type(exc).__name__
    detail = "".join(c for c in str(exc) if c.isprintable())[:200]
    if isinstance(exc, RecursionError):
        detail = "its object structure loops or nests too deeply"
    return Rejected(
        f"The PDF is damaged and its text cannot be read ({name}: {detail}).", code="corrupt"
    )


def _extract_pages(source: Path, max_pages: int) -> list[_Page]:
    from pdfminer.high_level import extract_pages
    from pdfminer.layout import LAParams

    # pdfminer logs every repair it makes; the outcome is reported once, as a Rejected reason.
    logging.getLogger("pdfminer").setLevel(logging.ERROR)
    params = LAParams(all_texts=True)
    pages: list[_Page] = []
    for number, layout in enumerate(extract_pages(source, laparams=params, maxpages=max_pages), 1):
        page = _Page(number, height=float(layout.height))
        _collect(layout, page)
        _drop_page_numbers(page)
        pages.append(page)
    return pages


def _collect(container: Any, page: _Page) -> None:
    from pdfminer.layout import LTChar, LTContainer, LTImage, LTTextBox

    for item in container:
        if isinstance(item, LTTextBox):
            text = _box_text(item)
            if text:
                sizes = [c.size for line in item for c in line if isinstance(c, LTChar)]
                size = round(statistics.median(sizes), 1) if sizes else 0
                page.boxes.append(_Box(text, size, y0=float(item.y0), y1=float(item.y1)))
        elif isinstance(item, LTImage):
            page.has_image = True
        elif isinstance(item, LTContainer):
            _collect(item, page)


def _drop_page_numbers(page: _Page) -> None:
    """Remove short number-only boxes alone on their line in the top or bottom margin band.

    Alone on the line: a row of numbers in a table has neighbours at the same height.
    """

    def is_page_number(box: _Box) -> bool:
        if has_letters(box.text) or len(box.text) > MAX_BARE_NUMBER_CHARS or page.height <= 0:
            return False
        in_band = box.y1 < MARGIN_BAND * page.height or box.y0 > (1 - MARGIN_BAND) * page.height
        neighbours = [b for b in page.boxes if b is not box and b.y0 < box.y1 and box.y0 < b.y1]
        return in_band and not neighbours

    page.boxes = [box for box in page.boxes if not is_page_number(box)]


def _box_text(box: Any) -> str:
    """Join a text box's lines; list items keep their own lines."""
    raw = clean_text(box.get_text())
    return join_cjk_spaces(raw)


def _text_elements(pages: list[_Page]) -> list[Element]:
    body = _body_size(pages)
    levels = _heading_levels(pages, body)
    elements: list[Element] = []
    for page in pages:
        for box in page.boxes:
            elements.extend(_box_elements(box, page.number, levels.get(box.size, 0)))
    return elements


def _body_size(pages: list[_Page]) -> float:
    weights: Counter[float] = Counter()
    for page in pages:
        for box in page.boxes:
            weights[box.size] += len(box.text)
    return weights.most_common(1)[0][0] if weights else 0.0


def _heading_levels(pages: list[_Page], body: float) -> dict[float, int]:
    """Font sizes of short boxes well above the body size, and rare → heading level 1-3."""
    chars_at: Counter[float] = Counter()
    for page in pages:
        for box in page.boxes:
            chars_at[box.size] += len(box.text)
    total = sum(chars_at.values()) or 1
    sizes = {
        box.size
        for page in pages
        for box in page.boxes
        if body
        and box.size >= body * HEADING_RATIO
        and chars_at[box.size] <= MAX_HEADING_SHARE * total
        and _heading_like(box.text)
    }
    return {size: min(rank, 3) for rank, size in enumerate(sorted(sizes, reverse=True), start=1)}


def _heading_like(text: str) -> bool:
    tokens = text.split()
    spelled_out = sum(1 for t in tokens if len(t) == 1) > len(tokens) / 2  # "v i X r a"
    return (
        len(text) <= MAX_HEADING_CHARS
        and text.count("\n") <= 2
        and any(c.isalpha() for c in text)
        and not (spelled_out and len(tokens) > 3)
        and not is_list_item(text)
    )


def _box_elements(box: _Box, page: int, level: int) -> list[Element]:
    if level and _heading_like(box.text):
        return [Element(kind="title", text=" ".join(box.text.split()), page=page, level=level)]
    if not box.flowing:
        return plain_text_elements(box.text, page=page)
    if is_list_item(box.text):  # bullets keep their own lines
        return plain_text_elements(box.text, page=page, headings=False)
    return plain_text_elements(_reflow(box.text), page=page, headings=False)


def _reflow(text: str) -> str:
    """A text box is one paragraph: drop its hard line breaks (keep them between CJK)."""
    text = re.sub(r"(?<=[a-z])-\n(?=[a-z])", "", text)
    text = re.sub(r"(?<=[\u3000-\u9fff\uff00-\uffef])\n(?=[\u3000-\u9fff\uff00-\uffef])", "", text)
    return re.sub(r"[ \t]*\n[ \t]*", " ", text)


def _ocr_possible(limits: ParseLimits) -> bool:
    return limits.ocr and tesseract_path() is not None


def _ocr_pages(
    source: Path, scans: list[_Page], limits: ParseLimits, workdir: Path
) -> tuple[list[Element], list[str]]:
    if not scans:
        return [], []
    numbers = ", ".join(str(p.number) for p in scans[:10]) + (" …" if len(scans) > 10 else "")
    if not limits.ocr:
        return [], [f"OCR is switched off: {len(scans)} scanned page(s) not indexed ({numbers})."]
    if tesseract_path() is None:
        return [], [
            f"OCR skipped: Tesseract is not installed; {len(scans)} scanned page(s) "
            f"not indexed ({numbers}). Install tesseract-ocr to index them."
        ]
    languages, missing = usable_ocr_languages(limits.ocr_languages)
    notes = [f"OCR language pack(s) missing: {', '.join(missing)}"] if missing else []
    elements: list[Element] = []
    for page in scans:
        image = render_pdf_page(source, page.number, workdir)
        text = ocr_image(image, languages)
        image.unlink(missing_ok=True)
        elements.extend(plain_text_elements(text, page=page.number))
    return elements, notes


def _merge_in_page_order(text: list[Element], ocr: list[Element]) -> list[Element]:
    if not ocr:
        return text
    return sorted([*text, *ocr], key=lambda e: e.page or 0)  # stable: keeps order within pages


def _no_text(page_count: int, scans: list[_Page], limits: ParseLimits, opened: _Opened) -> Rejected:
    if opened.failure or opened.damage or page_count == 0:
        reason = opened.failure or opened.damage or "it has no pages"
        return Rejected(f"The PDF is damaged and no text could be read: {reason}.", code="corrupt")
    if scans and not limits.ocr:
        return Rejected(
            f"No text layer on {page_count} page(s) and OCR is switched off in the settings.",
            code="no-text",
            hint="Enable OCR for ingestion to index scanned documents.",
        )
    if scans and not _ocr_possible(limits):
        return Rejected(
            f"No text layer on {page_count} page(s); {SCAN_HINT}.",
            code="no-text",
            hint="Install tesseract-ocr (with tesseract-ocr-chi-sim) and retry the file.",
        )
    if scans:
        return Rejected(
            f"No text found: the PDF's {page_count} page(s) have no text layer and OCR found no "
            "text in their images.",
            code="empty",
        )
    return Rejected(f"The PDF has {page_count} page(s) but no text and no images.", code="empty")
