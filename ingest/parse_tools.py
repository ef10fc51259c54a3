"""External programs the parsers use: Tesseract (OCR), LibreOffice (legacy Office), pandoc.

Each is optional. Finding them is cheap and cached; running them always has a timeout and runs
in the caller's process group, so the isolation layer can kill a stuck converter together with
the parse that started it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from ingest.child_env import child_environment
from ingest.errors import DependencyMissing, Rejected
from ingest.parse_pdfium import pdfium_available, render_page_pdfium
from ingest.parse_text import join_cjk_spaces

OCR_TIMEOUT_S = 120.0
CONVERT_TIMEOUT_S = 180.0
OCR_DPI = 300


@lru_cache(maxsize=1)
def tesseract_path() -> str | None:
    return shutil.which("tesseract")


@lru_cache(maxsize=1)
def tesseract_languages() -> frozenset[str]:
    """Language packs Tesseract can load (``tesseract --list-langs``); empty when absent."""
    exe = tesseract_path()
    if exe is None:
        return frozenset()
    try:
        done = subprocess.run(
            [exe, "--list-langs"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=child_environment(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    lines = (done.stdout + done.stderr).splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and " " not in line.strip())


@lru_cache(maxsize=1)
def soffice_path() -> str | None:
    return shutil.which("soffice") or shutil.which("libreoffice")


@lru_cache(maxsize=1)
def pdftoppm_path() -> str | None:
    return shutil.which("pdftoppm")


@lru_cache(maxsize=1)
def pandoc_path() -> str | None:
    """pypandoc-binary ships its own pandoc; a system pandoc works too."""
    try:
        import pypandoc

        return str(pypandoc.get_pandoc_path())
    except (ImportError, OSError, RuntimeError):
        return shutil.which("pandoc")


def usable_ocr_languages(requested: str) -> tuple[str, list[str]]:
    """The installed subset of ``requested`` ("eng+chi_sim") and the names that are missing."""
    installed = tesseract_languages()
    wanted = [lang for lang in requested.split("+") if lang]
    present = [lang for lang in wanted if lang in installed]
    missing = [lang for lang in wanted if lang not in installed]
    return "+".join(present), missing


def ocr_image(image: Path, languages: str, *, timeout_s: float = OCR_TIMEOUT_S) -> str:
    """Run Tesseract on one image file (multi-page TIFFs give all pages) and return its text.

    Raises :class:`DependencyMissing` when Tesseract is absent and :class:`Rejected`
    (``parse-error``) when it fails on this image.
    """
    exe = tesseract_path()
    if exe is None:
        raise DependencyMissing(
            "Tesseract is not installed.", hint="Install tesseract-ocr to index scans and images."
        )
    cmd = [exe, str(image), "stdout", "-l", languages or "eng", "--psm", "3"]
    env = child_environment(OMP_THREAD_LIMIT="1")  # one parse per core; no oversubscription
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False, env=env)
    except subprocess.TimeoutExpired as exc:
        raise Rejected(
            f"OCR took longer than {timeout_s:.0f} s on one page.", code="timeout"
        ) from exc
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
        raise Rejected(
            f"Tesseract could not read the image: {' '.join(message[-2:])[:300]}",
            code="parse-error",
        )
    # Form feeds separate the pages of a multi-page TIFF; callers split on them.
    return join_cjk_spaces(done.stdout.decode("utf-8", errors="replace"))


def convert_with_libreoffice(source: Path, target_ext: str, workdir: Path) -> Path:
    """Convert a legacy Office file (``doc`` → ``docx``, ``ppt`` → ``pptx``) with LibreOffice.

    Runs headless with a private profile inside ``workdir`` (a fresh 0700 directory), so parallel
    conversions never share LibreOffice's user profile lock and nothing lands in $HOME.
    """
    exe = soffice_path()
    if exe is None:
        raise Rejected(
            f"Legacy {source.suffix or 'Office'} files need LibreOffice to be converted first, "
            "and it is not installed.",
            code="unsupported",
            hint="Install libreoffice-writer-nogui and libreoffice-impress-nogui, or save the "
            f"file as {target_ext} and drop it again.",
        )
    out = Path(tempfile.mkdtemp(prefix="lo-", dir=workdir))  # mkdtemp: mode 0700
    profile = (out / "profile").as_uri()
    cmd = [exe, f"-env:UserInstallation={profile}", "--headless", "--norestore", "--nolockcheck"]
    cmd += ["--convert-to", target_ext, "--outdir", str(out), str(source)]
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            timeout=CONVERT_TIMEOUT_S,
            check=False,
            cwd=out,
            env=child_environment(home=str(out)),
        )
    except subprocess.TimeoutExpired as exc:
        raise Rejected("LibreOffice took too long to convert the file.", code="timeout") from exc
    produced = out / f"{source.stem}.{target_ext}"
    if done.returncode != 0 or not produced.is_file():
        detail = done.stderr.decode("utf-8", errors="replace").strip()[-300:]
        raise Rejected(
            f"LibreOffice could not convert the file to {target_ext}: the file is damaged or not "
            f"a real {source.suffix} file. {detail}".strip(),
            code="corrupt",
        )
    return produced


def render_pdf_page(source: Path, number: int, workdir: Path) -> Path:
    """Render one page to a grayscale PNG at OCR resolution (poppler, else PDFium)."""
    target = workdir / f"page-{number}"
    exe = pdftoppm_path()
    if exe is not None:
        cmd = [exe, "-r", str(OCR_DPI), "-gray", "-png", "-singlefile"]
        cmd += ["-f", str(number), "-l", str(number), str(source), str(target)]
        done = subprocess.run(
            cmd, capture_output=True, timeout=120, check=False, env=child_environment()
        )
        png = target.with_suffix(".png")
        if done.returncode == 0 and png.is_file():
            return png
    if not pdfium_available():
        raise DependencyMissing("No PDF renderer for OCR.", hint="Install poppler-utils.")
    return render_page_pdfium(source, number, target.with_suffix(".png"), OCR_DPI)
