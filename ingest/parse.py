"""Parse one file of any supported office format into a :class:`ParsedDocument`.

This is the only module that imports `unstructured` (lazily, after `nlp_offline` has switched
off its telemetry and pointed its spaCy model at the installed copy). `unstructured` handles the
formats where its structure recovery is good: docx, pptx, html, markdown, epub, odt, rtf.
Spreadsheets, PDFs, CSV, plain text, e-mail envelopes and images have dedicated modules because
`unstructured` is slow or lossy on them (see each module's docstring).

`parse_file` runs in the calling process and raises :class:`Rejected` for every file that cannot
be indexed; `ingest.isolate.parse_isolated` wraps it in a child process with hard limits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ingest.elements import Element, ElementKind, ParsedDocument, Table
from ingest.errors import DependencyMissing, IngestError, Rejected
from ingest.nlp_offline import prepare_offline_nlp
from ingest.parse_email import EmailContent, read_eml, read_msg
from ingest.parse_limits import ParseLimits
from ingest.parse_pdf import SCAN_HINT, parse_pdf
from ingest.parse_plain import paged_text_elements, plain_text_elements
from ingest.parse_sheet_layout import SheetGrid, sheet_elements
from ingest.parse_sheets import parse_xls, parse_xlsx
from ingest.parse_tables import csv_rows, table_element, table_from_html
from ingest.parse_text import decode_bytes, guess_language
from ingest.parse_tools import (
    convert_with_libreoffice,
    ocr_image,
    tesseract_path,
    usable_ocr_languages,
)
from ingest.sniff import SUPPORTED_EXTENSIONS, Detected, detect_format

__all__ = ["SUPPORTED_EXTENSIONS", "ParseLimits", "parse_file"]

Handler = Callable[[Path, ParseLimits, Path], ParsedDocument]
MAX_ERROR_CHARS = 300

# unstructured element category → our kind; None drops the element (no text of its own).
_KINDS: dict[str, ElementKind | None] = {
    "Title": "title",
    "NarrativeText": "text",
    "Text": "text",
    "UncategorizedText": "text",
    "Address": "text",
    "EmailAddress": "text",
    "Formula": "text",
    "ListItem": "list_item",
    "List": "list_item",
    "Table": "table",
    "CodeSnippet": "code",
    "FigureCaption": "caption",
    "Header": "other",
    "Footer": "other",
    "Image": "other",
    "PageBreak": None,
    "PageNumber": None,
}


def parse_file(path: Path, *, limits: ParseLimits) -> ParsedDocument:
    """Parse ``path`` in this process; raises :class:`Rejected` (or `DependencyMissing`)."""
    detected = detect_format(path, max_bytes=limits.max_bytes)
    with tempfile.TemporaryDirectory(prefix="ingest-parse-") as scratch:  # created with mode 0700
        try:
            document = _HANDLERS[detected.format](path, limits, Path(scratch))
        except IngestError:
            raise
        except MemoryError as exc:
            raise Rejected(
                "Parsing the file needed more memory than allowed.", code="oversized"
            ) from exc
        except RecursionError as exc:
            raise Rejected(
                f"The {detected.description} is nested too deeply to parse (damaged?).",
                code="corrupt",
            ) from exc
        except Exception as exc:  # any library failure quarantines this one file
            raise Rejected(
                f"The {detected.description} could not be parsed: {_trim(exc)}",
                code="parse-error",
            ) from exc
    return _finalize(document, detected)


def _trim(exc: BaseException) -> str:
    message = " ".join(str(exc).split()) or "no details"
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + " …"
    return f"{type(exc).__name__}: {message}"


def _finalize(document: ParsedDocument, detected: Detected) -> ParsedDocument:
    """Drop empty elements, tag languages, add the sniffing warnings; reject empty documents."""
    elements = [e for e in document.elements if e.text.strip() or e.table is not None]
    if not elements:
        raise Rejected(f"No text found in this {detected.description}.", code="empty")
    tagged = tuple(
        e if e.language else dataclasses.replace(e, language=guess_language(e.text[:2000]))
        for e in elements
    )
    warnings = (*detected.warnings, *document.warnings)
    return dataclasses.replace(document, elements=tagged, warnings=warnings)


def _document(
    elements: list[Element],
    path: Path,
    *,
    title: str = "",
    pages: int | None = None,
    warnings: Iterable[str] = (),
    ocr_pages: int = 0,
) -> ParsedDocument:
    page_numbers = [e.page for e in elements if e.page is not None]
    return ParsedDocument(
        elements=tuple(elements),
        title=title or _first_title(elements) or path.stem,
        pages=pages or max(page_numbers, default=1),
        warnings=tuple(warnings),
        ocr_pages=ocr_pages,
    )


def _first_title(elements: list[Element]) -> str:
    titles = [e for e in elements[:50] if e.kind == "title" and len(e.text) <= 200]
    return min(titles, key=lambda e: e.level).text if titles else ""


# -- unstructured adapter ---------------------------------------------------------------------


def _unstructured(module: str) -> Any:
    """Import ``unstructured.partition.<module>`` offline, or say how to install it."""
    prepare_offline_nlp()
    try:
        return importlib.import_module(f"unstructured.partition.{module}")
    except ImportError as exc:
        raise DependencyMissing(
            f"The document parser library is missing ({exc}).",
            hint="Install the product's dependencies: pip install 'unstructured>=0.27,<0.28'.",
        ) from exc


_WARM_MODULES = ("docx", "pptx", "html", "md", "epub", "odt", "rtf")


def warm_up() -> None:
    """Import the partitioners and load unstructured's spaCy pipeline once (forkserver preload).

    Children forked afterwards share it: parsing a small file then takes milliseconds, not the
    seconds of imports and model loading a cold process pays.
    """
    for module in _WARM_MODULES:
        _unstructured(module)
    # One tiny partition loads the sentence classifier's spaCy pipeline (public API only).
    _partition("html", "partition_html", text="<p>The parser is warming up its classifier.</p>")
    for name in ("pdfminer.high_level", "pikepdf", "openpyxl", "xlrd", "pypdfium2"):
        with contextlib.suppress(ImportError):  # a missing one is reported when a file needs it
            importlib.import_module(name)


def _convert(items: Iterable[Any]) -> list[Element]:
    elements: list[Element] = []
    for item in items:
        category = str(getattr(item, "category", type(item).__name__))
        kind = _KINDS.get(category, "text")
        text = str(getattr(item, "text", "") or "").strip()
        if kind is None or (not text and kind != "table"):
            continue
        meta = getattr(item, "metadata", None)
        page = getattr(meta, "page_number", None)
        depth = getattr(meta, "category_depth", None) or 0
        if kind == "table":
            elements.append(_table(text, getattr(meta, "text_as_html", None), page))
        elif kind == "title":
            elements.append(Element(kind="title", text=text, page=page, level=min(depth + 1, 6)))
        else:
            extra = {"category": category} if kind == "other" else {}
            elements.append(Element(kind=kind, text=text, page=page, extra=extra))
    return elements


def _table(text: str, html: str | None, page: int | None) -> Element:
    table = table_from_html(html) if html else None
    if table is None:
        table = Table(header=(), rows=((text,),))
    return table_element(table, page=page)


def _partition(module: str, function: str, **kwargs: Any) -> list[Element]:
    partition = getattr(_unstructured(module), function)
    return _convert(partition(languages=[""], **kwargs))


def _parse_docx(path: Path, limits: ParseLimits, workdir: Path) -> ParsedDocument:
    return _document(_partition("docx", "partition_docx", filename=str(path)), path)


def _parse_pptx(path: Path, limits: ParseLimits, workdir: Path) -> ParsedDocument:
    elements = _partition("pptx", "partition_pptx", filename=str(path), include_slide_notes=True)
    return _document(elements, path)


def _parse_legacy(target: str) -> Handler:
    """.doc/.ppt: LibreOffice converts to docx/pptx in the private work dir, then as above."""

    def handler(path: Path, limits: ParseLimits, workdir: Path) -> ParsedDocument:
        converted = convert_with_libreoffice(path, target, workdir)
        document = _HANDLERS[target](converted, limits, workdir)
        note = f"converted from {path.suffix or 'legacy format'} to {target} with LibreOffice"
        title = document.title if document.title != converted.stem else path.stem
        return dataclasses.replace(document, title=title, warnings=(note, *document.warnings))

    return handler


def _parse_pandoc_format(module: str) -> Handler:
    """epub, odt, rtf: unstructured converts them with pandoc (pypandoc-binary ships it)."""

    def handler(path: Path, limits: ParseLimits, workdir: Path) -> ParsedDocument:
        return _document(_partition(module, f"partition_{module}", filename=str(path)), path)

    return handler


def _html_elements(html: str) -> list[Element]:
    if not html.strip():
        return []
    return _partition("html", "partition_html", text=html)


def _parse_html(path: Path, limits: ParseLimits, workdir: Path) -> ParsedDocument:
    return _document(_html_elements(decode_html(path.read_bytes())), path)


def decode_html(data: bytes) -> str:
    """HTML text: BOM, then valid UTF-8, then the declared ``<meta charset>``, then a guess."""
    text, encoding = decode_bytes(data)
    if encoding in {"utf-8", "utf-8-sig", "utf-16", "utf-32"}:
        return text
    declared = re.search(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_.:-]+)""", data[:4096], re.I)
    if declared:
        try:
            return data.decode(declared.group(1).decode("ascii"))
        except (LookupError, UnicodeDecodeError):
            pass
    return text


def _parse_markdown(path: Path, limits: ParseLimits, workdir: Path) -> ParsedDocument:
    text = decode_bytes(path.read_bytes())[0]
    return _document(_partition("md", "partition_md", text=text), path)


# -- formats without unstructured -------------------------------------------------------------


def _parse_text(path: Path, limits: ParseLimits, workdir: Path) -> ParsedDocument:
    return _document(plain_text_elements(decode_bytes(path.read_bytes())[0]), path)


def _parse_csv(path: Path, limits: ParseLimits, workdir: Path) -> ParsedDocument:
    """A CSV is laid out like one sheet: captions above, one table per block of rows."""
    rows = csv_rows(decode_bytes(path.read_bytes())[0])
    elements = sheet_elements(SheetGrid(path.stem, 1, rows))[1:]  # no sheet-name title
    if not elements:
        raise Rejected("The CSV file has no values.", code="empty")
    return _document(elements, path, title=path.stem, pages=1)


def _parse_email(read: Callable[[Path], EmailContent]) -> Handler:
    def handler(path: Path, limits: ParseLimits, workdir: Path) -> ParsedDocument:
        content = read(path)
        if not (content.subject or content.headers or content.body.strip()):
            raise Rejected("The e-mail has no headers and no body.", code="empty")
        if content.body_is_html:
            body = _html_elements(content.body)
        else:
            body = plain_text_elements(content.body)
        return _document(
            _email_elements(content, body),
            path,
            title=content.subject,
            pages=1,
            warnings=_attachment_warning(content.attachments),
        )

    return handler


def _email_elements(content: EmailContent, body: list[Element]) -> list[Element]:
    extra = {name.lower(): value for name, value in content.headers}
    if content.attachments:
        extra["attachments"] = "; ".join(content.attachments)
    subject = Element(kind="title", text=content.subject or "(no subject)", level=1, extra=extra)
    envelope = "\n".join(f"{name}: {value}" for name, value in content.headers)
    head = [Element(kind="text", text=envelope, extra={"part": "headers"})] if envelope else []
    return [subject, *head, *body]


def _attachment_warning(names: tuple[str, ...]) -> list[str]:
    if not names:
        return []
    return [f"{len(names)} attachment(s) listed but not indexed: {', '.join(names)[:300]}"]


def _parse_image(path: Path, limits: ParseLimits, workdir: Path) -> ParsedDocument:
    _check_image(path)
    if not limits.ocr:
        raise Rejected("The image has no text layer and OCR is switched off.", code="no-text")
    if tesseract_path() is None:
        raise Rejected(f"Image without text layer; {SCAN_HINT}.", code="no-text")
    languages, missing = usable_ocr_languages(limits.ocr_languages)
    text = ocr_image(path, languages, timeout_s=limits.timeout_s)
    pages = text.rstrip("\f").count("\f") + 1
    elements = paged_text_elements(text)
    if not elements:
        raise Rejected("OCR found no text in the image.", code="empty")
    warnings = [f"OCR language pack(s) missing: {', '.join(missing)}"] if missing else []
    return _document(
        elements, path, title=path.stem, pages=pages, warnings=warnings, ocr_pages=pages
    )


def _check_image(path: Path) -> None:
    """Pillow reads the header: truncated files and decompression bombs are refused early."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Image.DecompressionBombError as exc:
        raise Rejected(f"The image is too large to OCR safely ({exc}).", code="oversized") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise Rejected(f"The image is damaged or truncated: {exc}", code="corrupt") from exc


def _parse_pdf(path: Path, limits: ParseLimits, workdir: Path) -> ParsedDocument:
    return parse_pdf(path, limits=limits, workdir=workdir)


def _parse_xlsx(path: Path, limits: ParseLimits, workdir: Path) -> ParsedDocument:
    return parse_xlsx(path)


def _parse_xls(path: Path, limits: ParseLimits, workdir: Path) -> ParsedDocument:
    return parse_xls(path)


_HANDLERS: dict[str, Handler] = {
    "pdf": _parse_pdf,
    "docx": _parse_docx,
    "doc": _parse_legacy("docx"),
    "xlsx": _parse_xlsx,
    "xls": _parse_xls,
    "pptx": _parse_pptx,
    "ppt": _parse_legacy("pptx"),
    "eml": _parse_email(read_eml),
    "msg": _parse_email(read_msg),
    "html": _parse_html,
    "md": _parse_markdown,
    "txt": _parse_text,
    "csv": _parse_csv,
    "epub": _parse_pandoc_format("epub"),
    "odt": _parse_pandoc_format("odt"),
    "rtf": _parse_pandoc_format("rtf"),
    "image": _parse_image,
}
