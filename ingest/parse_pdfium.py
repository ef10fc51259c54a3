"""PDFium (pypdfium2) text extraction: the fast path for long PDFs and the last resort.

pdfminer is pure Python: on this 2-core machine it needs ~0.1-0.3 s per page, so a 600-page
manual approaches the default 120 s limit. PDFium (Chrome's PDF engine) extracts the same text
in well under a second, but without pdfminer's paragraph boxes and font sizes, so headings are
only found by the plain-text rules. It also reads some files pdfminer rejects.
"""

from __future__ import annotations

from pathlib import Path

from ingest.errors import Rejected

LARGE_PDF_PAGES = 150  # from this many pages on, speed beats font-size headings


def pdfium_available() -> bool:
    try:
        import pypdfium2  # noqa: F401
    except ImportError:
        return False
    return True


def extract_pages_pdfium(source: Path, max_pages: int) -> list[tuple[int, str, bool]]:
    """(page number, text, page has an image) for each page, via PDFium."""
    import pypdfium2
    import pypdfium2.raw as pdfium_c

    try:
        document = pypdfium2.PdfDocument(str(source))
    except pypdfium2.PdfiumError as exc:
        raise Rejected(f"The PDF cannot be opened: {exc}", code="corrupt") from exc
    pages: list[tuple[int, str, bool]] = []
    try:
        for index in range(min(len(document), max_pages)):
            page = document[index]
            textpage = page.get_textpage()
            text = textpage.get_text_range().replace("\r\n", "\n")
            images = page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,), max_depth=3)
            has_image = next(iter(images), None) is not None
            textpage.close()
            page.close()
            pages.append((index + 1, text, has_image))
    finally:
        document.close()
    return pages


def render_page_pdfium(source: Path, number: int, png: Path, dpi: int) -> Path:
    """Render one page to a grayscale PNG (used when poppler's pdftoppm is absent)."""
    import pypdfium2

    document = pypdfium2.PdfDocument(str(source))
    try:
        bitmap = document[number - 1].render(scale=dpi / 72, grayscale=True)
        bitmap.to_pil().save(png)
    finally:
        document.close()
    return png
