"""Decide which parser a file needs from its bytes first and its name second.

Names lie (a PDF saved as ``.doc``, an encrypted workbook that is really an OLE2 container), so
the magic bytes decide whenever they identify a format; the extension only chooses among the
text formats, which have no magic. Every refusal is a :class:`Rejected` with a code and a
message that tells the operator what is wrong with *this* file.
"""

from __future__ import annotations

import codecs
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ingest.errors import Rejected

OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_UNICODE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)

# Extensions of each format we parse; the keys of FORMAT_EXTENSIONS are the parser names.
FORMAT_EXTENSIONS: dict[str, frozenset[str]] = {
    "pdf": frozenset({".pdf"}),
    "docx": frozenset({".docx"}),
    "doc": frozenset({".doc"}),
    "xlsx": frozenset({".xlsx", ".xlsm", ".xltx", ".xltm"}),
    "xls": frozenset({".xls"}),
    "pptx": frozenset({".pptx"}),
    "ppt": frozenset({".ppt"}),
    "eml": frozenset({".eml"}),
    "msg": frozenset({".msg"}),
    "html": frozenset({".html", ".htm", ".xhtml"}),
    "md": frozenset({".md", ".markdown"}),
    "txt": frozenset({".txt", ".text", ".log"}),
    "csv": frozenset({".csv", ".tsv"}),
    "epub": frozenset({".epub"}),
    "odt": frozenset({".odt"}),
    "rtf": frozenset({".rtf"}),
    "image": frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}),
}
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset().union(*FORMAT_EXTENSIONS.values())
_ZIP_EXTENSIONS = (
    FORMAT_EXTENSIONS["docx"] | FORMAT_EXTENSIONS["xlsx"] | FORMAT_EXTENSIONS["pptx"]
) | frozenset({".epub", ".odt"})
# BOF records of BIFF2-4 worksheets, which predate the OLE2 container (xlrd still reads them).
_BIFF_BOFS = (b"\x09\x00", b"\x09\x02", b"\x09\x04")
TEXT_FORMATS = frozenset({"eml", "html", "md", "txt", "csv"})

_IMAGE_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"II*\x00", "TIFF image"),
    (b"MM\x00*", "TIFF image"),
    (b"BM", "BMP image"),
)
_UNSUPPORTED_MAGICS: tuple[tuple[bytes, int, str], ...] = (
    (b"GIF8", 0, "GIF image (convert it to PNG to index it)"),
    (b"ftypheic", 4, "HEIC image (convert it to JPEG or PNG to index it)"),
    (b"ftypmif1", 4, "HEIF image (convert it to JPEG or PNG to index it)"),
    (b"\x7fELF", 0, "ELF executable"),
    (b"MZ", 0, "Windows executable"),
    (b"\x1f\x8b", 0, "gzip archive"),
    (b"Rar!", 0, "RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", 0, "7-Zip archive"),
)
_OPENDOCUMENT = {
    "application/vnd.oasis.opendocument.text": "odt",
    "application/epub+zip": "epub",
}


@dataclass(frozen=True)
class Detected:
    """The parser to use for a file, and what the sniffing noticed on the way."""

    format: str
    description: str
    warnings: tuple[str, ...] = ()


def detect_format(path: Path, *, max_bytes: int) -> Detected:
    """Check size limits and identify the format of ``path``; raises :class:`Rejected`."""
    size = _checked_size(path, max_bytes)
    with path.open("rb") as handle:
        head = handle.read(8192)
    extension = path.suffix.lower()
    detected = _from_magic(path, head, extension)
    if detected is None:
        return _from_extension(path, head, extension, size)
    expected = FORMAT_EXTENSIONS.get(detected.format, frozenset())
    if extension in expected:
        return detected
    note = f"file is named {extension or '(no extension)'} but contains a {detected.description}"
    return Detected(detected.format, detected.description, (*detected.warnings, note))


def _checked_size(path: Path, max_bytes: int) -> int:
    if not path.is_file():
        raise Rejected(f"{path.name} is not a regular file.", code="unsupported")
    size = path.stat().st_size
    if size == 0:
        raise Rejected("The file is empty (0 bytes).", code="empty")
    if size > max_bytes:
        raise Rejected(
            f"The file is {size / 2**20:.1f} MiB, over the limit of {max_bytes / 2**20:.1f} MiB.",
            code="oversized",
            hint="Split it, or raise the maximum file size in the ingest settings.",
        )
    return size


def _from_magic(path: Path, head: bytes, extension: str) -> Detected | None:
    if b"%PDF-" in head[:1024]:
        return Detected("pdf", "PDF document")
    if head.startswith(ZIP_MAGICS):
        return _from_zip(path, extension)
    if head.startswith(OLE2_MAGIC):
        return _from_ole2(path)
    if head.lstrip()[:5] == b"{\\rtf":
        return Detected("rtf", "RTF document")
    for magic, description in _IMAGE_MAGICS:
        if head.startswith(magic):
            return Detected("image", description)
    for magic, offset, description in _UNSUPPORTED_MAGICS:
        if head[offset : offset + len(magic)] == magic:
            raise Rejected(f"Unsupported file type: {description}.", code="unsupported")
    return None


def _from_zip(path: Path, extension: str) -> Detected:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            mimetype = _zip_mimetype(archive, names)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise Rejected(
            f"The file is not a valid ZIP container, which Office and OpenDocument files are "
            f"({exc}). It is damaged or truncated: save or export it again.",
            code="corrupt",
        ) from exc
    if "word/document.xml" in names:
        return Detected("docx", "Word document (OOXML)")
    if any(name.startswith("xl/") for name in names):
        return Detected("xlsx", "Excel workbook (OOXML)")
    if "ppt/presentation.xml" in names:
        return Detected("pptx", "PowerPoint presentation (OOXML)")
    if mimetype in _OPENDOCUMENT:
        fmt = _OPENDOCUMENT[mimetype]
        return Detected(fmt, "EPUB book" if fmt == "epub" else "OpenDocument text")
    if mimetype:
        raise Rejected(
            f"Unsupported file type: ZIP package of type {mimetype}.", code="unsupported"
        )
    if "[Content_Types].xml" in names or extension in _ZIP_EXTENSIONS:
        listed = ", ".join(sorted(names)[:5]) or "nothing"
        raise Rejected(
            f"The file is named {extension} but its ZIP container holds no document part (no "
            f"word/, xl/ or ppt/ folder; it contains {listed}): it is damaged or not an Office "
            "document.",
            code="corrupt",
        )
    raise Rejected(
        "Unsupported file type: a ZIP archive, not an office document.", code="unsupported"
    )


def _zip_mimetype(archive: zipfile.ZipFile, names: set[str]) -> str:
    if "mimetype" not in names or archive.getinfo("mimetype").file_size > 200:
        return ""
    return archive.read("mimetype").decode("ascii", errors="replace").strip()


def _from_ole2(path: Path) -> Detected:
    import olefile

    try:
        with olefile.OleFileIO(str(path)) as ole:
            streams = {"/".join(entry) for entry in ole.listdir(streams=True, storages=True)}
    except (OSError, ValueError, IndexError, RecursionError) as exc:
        raise Rejected(
            f"The file starts like an OLE2 (legacy Office) file but its structure is broken: {exc}",
            code="corrupt",
        ) from exc
    if "EncryptedPackage" in streams or "EncryptionInfo" in streams:
        raise _password_protected("an encrypted Office (OOXML) document")
    fmt = _ole2_format(streams)
    if fmt is None:
        raise Rejected(
            "Unsupported file type: an OLE2 compound file that is not a Word, Excel, PowerPoint "
            "or Outlook document.",
            code="unsupported",
        )
    if fmt in {"doc", "xls", "ppt"} and _legacy_encrypted(path):
        raise _password_protected(f"a password-protected legacy .{fmt} file")
    names = {"doc": "Word 97-2003 document", "xls": "Excel 97-2003 workbook"}
    names |= {"ppt": "PowerPoint 97-2003 presentation", "msg": "Outlook message"}
    return Detected(fmt, names[fmt])


def _ole2_format(streams: set[str]) -> str | None:
    if "WordDocument" in streams:
        return "doc"
    if "Workbook" in streams or "Book" in streams:
        return "xls"
    if "PowerPoint Document" in streams:
        return "ppt"
    if any(name.startswith("__substg1.0_") for name in streams):
        return "msg"
    return None


def _legacy_encrypted(path: Path) -> bool:
    """msoffcrypto reads the encryption flags of .doc/.xls/.ppt; unreadable means not known."""
    try:
        import msoffcrypto

        with path.open("rb") as handle:
            return bool(msoffcrypto.OfficeFile(handle).is_encrypted())
    except Exception:  # noqa: BLE001 - msoffcrypto raises bare Exceptions on odd files
        return False


def _password_protected(what: str) -> Rejected:
    return Rejected(
        f"The file is {what}; it cannot be read without its password.",
        code="password-protected",
        hint="Remove the password (save an unprotected copy) and drop that copy instead.",
    )


def _from_extension(path: Path, head: bytes, extension: str, size: int) -> Detected:
    fmt = next((f for f, exts in FORMAT_EXTENSIONS.items() if extension in exts), None)
    if fmt in TEXT_FORMATS:
        if size <= len(head) and not head.strip(b" \t\r\n\x0b\x0c\x00\xef\xbb\xbf\xfe\xff"):
            raise Rejected(f"The file contains only whitespace ({size} bytes).", code="empty")
        if _looks_binary(head):
            raise Rejected(
                f"The file is named {extension} but contains binary data ({describe_bytes(path)}).",
                code="corrupt",
            )
        return Detected(fmt, f"{extension} text")
    if fmt == "xls" and head[:2] in _BIFF_BOFS:
        return Detected("xls", "Excel 2.x-4.0 worksheet (BIFF2-4)")
    if fmt == "pdf":
        # qpdf and pdfminer recover files with junk before the header; let them say what is wrong.
        return Detected("pdf", "PDF document", ("the file has no %PDF header",))
    if fmt is not None:
        start = head[:16].hex(" ") if _looks_binary(head) else repr(head[:16].decode("latin-1"))
        raise Rejected(
            f"The file is named {extension} but has no {fmt.upper()} signature (it starts with "
            f"{start}, {size} bytes): it is damaged, truncated or mislabelled.",
            code="corrupt",
        )
    raise Rejected(
        f"Unsupported file type {extension or '(no extension)'}: {describe_bytes(path)}. "
        f"Supported: {', '.join(sorted(SUPPORTED_EXTENSIONS))}.",
        code="unsupported",
    )


def _looks_binary(head: bytes) -> bool:
    """NUL bytes mean binary, except in UTF-16/32 text (with or without a BOM)."""
    if b"\x00" not in head:
        return False
    if head.startswith(_UNICODE_BOMS):
        return False
    even, odd = head[0::2], head[1::2]
    utf16_le = odd.count(0) > 0.3 * len(odd) and even.count(0) == 0
    utf16_be = even.count(0) > 0.3 * len(even) and odd.count(0) == 0
    return not (utf16_le or utf16_be)


def describe_bytes(path: Path) -> str:
    """libmagic's description when available (the operator sees what the file really is)."""
    try:
        import magic

        return str(magic.from_file(str(path)))[:120]
    except Exception:  # noqa: BLE001 - libmagic missing or failing is not an error here
        return "unknown content"
