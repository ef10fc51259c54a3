"""Files whose parser errors leak: a workbook whose error quotes a cell of the document, and an
image whose error names its server path. Built from real libraries (openpyxl, the PNG magic);
each fails in the real parser with that leaking message (checked in tests/ingest)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

CANARY = "CANARY-7f3a Ostrava payroll 4471"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def canary_workbook(path: Path, canary: str = CANARY) -> Path:
    """An .xlsx whose numeric cell holds ``canary``: openpyxl fails with
    ``could not convert string to float: '<canary>'``."""
    import openpyxl

    book = openpyxl.Workbook()
    book.active["A1"] = 1.5
    book.active["A2"] = "total"
    raw = io.BytesIO()
    book.save(raw)
    source = zipfile.ZipFile(io.BytesIO(raw.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                data = data.replace(b"<v>1.5</v>", f"<v>{canary}</v>".encode())
            target.writestr(item, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out.getvalue())
    return path


def truncated_png(path: Path) -> Path:
    """A PNG signature and nothing valid after it: Pillow fails with
    ``cannot identify image file '<the absolute path>'``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PNG_MAGIC + b"this is not really a png at all")
    return path


def stored_bytes(*roots: Path, patterns: tuple[str, ...] = ("registry.db*",)) -> bytes:
    """Every byte of the files matching ``patterns`` below ``roots`` (the registry and its WAL)."""
    found = b""
    for root in roots:
        for pattern in patterns:
            for path in sorted(root.rglob(pattern)):
                if path.is_file():
                    found += path.read_bytes()
    return found
