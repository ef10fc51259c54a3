"""Text-level helpers shared by the parsers: decoding bytes, language tags, whitespace.

Pure functions, no I/O. Decoding matters most: a Chinese CSV saved by Excel on a Chinese
Windows is GBK without a BOM, and a wrong guess (Big5, CP949 and Shift-JIS all accept most GBK
byte pairs) silently turns it into plausible-looking nonsense that then gets indexed. We therefore
let ``charset_normalizer`` propose an encoding and then compare it with the East Asian codecs by
how many of the decoded characters are *common* in their script (level-1 hanzi/kanji/hangul of
GB2312, Big5, JIS X 0208, KS X 1001, kana, Latin letters): garbage decodes into rare characters.
"""

from __future__ import annotations

import codecs
import re
from functools import lru_cache

# Order matters twice: the BOM table checks UTF-32 before UTF-16 (FF FE 00 00 starts both), and
# among equally plausible East Asian decodings the earlier codec wins (simplified Chinese first).
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
EAST_ASIAN_CODECS: tuple[str, ...] = ("gb18030", "big5", "cp932", "cp949")

_CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA_RE = re.compile(r"[\u3040-\u30ff]")
_HANGUL_RE = re.compile(r"[\uac00-\ud7af\u1100-\u11ff]")
_LATIN_RE = re.compile(r"[A-Za-z\u00c0-\u024f]")
_CJK_GAP_RE = re.compile(
    r"(?<=[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]) "
    r"(?=[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef])"
)


def _double_byte_block(codec: str, leads: range, trails: tuple[range, ...]) -> frozenset[str]:
    chars: set[str] = set()
    for lead in leads:
        for trail_range in trails:
            for trail in trail_range:
                try:
                    chars.add(bytes((lead, trail)).decode(codec))
                except UnicodeDecodeError:
                    continue
    return frozenset(chars)


@lru_cache(maxsize=1)
def _common_east_asian() -> frozenset[str]:
    """Level-1 (most frequent) characters of the four national double-byte standards."""
    high = (range(0xA1, 0xFF),)
    return (
        _double_byte_block("gb2312", range(0xB0, 0xD8), high)
        | _double_byte_block("big5", range(0xA4, 0xC7), (range(0x40, 0x7F), range(0xA1, 0xFF)))
        | _double_byte_block("shift_jis", range(0x88, 0xA0), (range(0x40, 0x7F), range(0x80, 0xFD)))
        | _double_byte_block("euc_kr", range(0xB0, 0xC9), high)
    )


def _is_common(char: str) -> bool:
    code = ord(char)
    if code < 0x80 or 0xC0 <= code <= 0x17F:  # ASCII, Latin-1 and Latin Extended-A letters
        return char.isprintable() or char in "\t\r\n"
    if 0x2000 <= code <= 0x206F or 0x3000 <= code <= 0x30FF or 0xFF01 <= code <= 0xFF5E:
        return True  # general punctuation, CJK punctuation, kana, full-width ASCII
    return char in _common_east_asian()


def plausibility(text: str) -> float:
    """Share of non-ASCII characters that are common in their script (1.0 for pure ASCII).

    Hangul mixed half-and-half with hanzi is penalised: modern Korean rarely uses hanja, but
    GBK bytes read as CP949 produce exactly that mixture.
    """
    non_ascii = [c for c in text if ord(c) >= 0x80]
    if not non_ascii:
        return 1.0
    common = sum(1 for c in non_ascii if _is_common(c)) / len(non_ascii)
    hangul = len(_HANGUL_RE.findall(text))
    han = len(_CJK_RE.findall(text))
    mixing = min(hangul, han) / (hangul + han) if hangul and han else 0.0
    return common - mixing


def _strict(data: bytes, encoding: str) -> str | None:
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None


def _utf16_without_bom(data: bytes) -> str | None:
    """UTF-16 text without a BOM shows NUL bytes in every other position for ASCII-heavy text."""
    sample = data[:4096]
    if len(sample) < 4:
        return None
    even, odd = sample[0::2], sample[1::2]
    if even.count(0) > 0.3 * len(even) and odd.count(0) == 0:
        return _strict(data, "utf-16-be")
    if odd.count(0) > 0.3 * len(odd) and even.count(0) == 0:
        return _strict(data, "utf-16-le")
    return None


def decode_bytes(data: bytes) -> tuple[str, str]:
    """Decode ``data`` to text and name the encoding used; never raises.

    Order: BOM, BOM-less UTF-16, strict UTF-8, then the most plausible of charset_normalizer's
    guess and the East Asian codecs; last resort UTF-8 with replacement characters.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            text = _strict(data, encoding)
            if text is not None:
                return text, encoding
    utf16 = _utf16_without_bom(data)
    if utf16 is not None:
        return utf16, "utf-16"
    text = _strict(data, "utf-8")
    if text is not None:
        return text, "utf-8"
    return _best_guess(data)


def _best_guess(data: bytes) -> tuple[str, str]:
    from charset_normalizer import from_bytes

    candidates: dict[str, str] = {}
    for encoding in EAST_ASIAN_CODECS:
        text = _strict(data, encoding)
        if text is not None:
            candidates[encoding] = text
    best = from_bytes(data).best()
    guessed = best.encoding if best is not None else None
    if guessed is not None and guessed not in candidates:
        text = _strict(data, guessed)
        if text is not None:
            candidates[guessed] = text
    if not candidates:
        return data.decode("utf-8", errors="replace"), "utf-8 (with replacement characters)"
    scores = {encoding: plausibility(text) for encoding, text in candidates.items()}
    top = max(scores.values())
    winners = [encoding for encoding, score in scores.items() if score >= top - 1e-9]
    # Ties (e.g. Korean bytes are also valid, common GB2312 pairs): trust the statistical
    # detector when it is among the winners, else the codec order (simplified Chinese first).
    encoding = guessed if guessed in winners else winners[0]
    return candidates[encoding], encoding


def guess_language(text: str) -> str | None:
    """Cheap per-element language tag from character classes (no model, no statistics).

    Returns "zh", "ja", "ko" or "en" when one script clearly dominates the letters, else None.
    Kana mark Japanese even among many kanji; Latin-script text is tagged "en" (the embedder and
    BM25 analyzer only distinguish CJK from the rest).
    """
    cjk = len(_CJK_RE.findall(text))
    kana = len(_KANA_RE.findall(text))
    hangul = len(_HANGUL_RE.findall(text))
    latin_words = len(re.findall(r"[A-Za-z\u00c0-\u024f]+", text))
    # One CJK character carries about as much as one Latin word.
    total = cjk + kana + hangul + latin_words
    if total == 0:
        return None
    if kana and (kana + cjk) / total >= 0.3 and kana >= 0.1 * (kana + cjk):
        return "ja"
    if hangul / total >= 0.3:
        return "ko"
    if cjk / total >= 0.5:
        return "zh"
    if latin_words / total >= 0.5:
        return "en"
    return None


def join_cjk_spaces(text: str) -> str:
    """Drop the spaces OCR and PDF extraction put between adjacent CJK characters."""
    return _CJK_GAP_RE.sub("", text)


def clean_text(text: str) -> str:
    """Normalise whitespace inside one element: unify newlines, trim, collapse blank runs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    lines = [line.rstrip() for line in text.split("\n")]
    joined = "\n".join(lines).strip()
    return re.sub(r"\n{3,}", "\n\n", joined)


def has_letters(text: str) -> bool:
    """True when ``text`` holds any letter or CJK character (not only digits or punctuation)."""
    return bool(_LATIN_RE.search(text) or _CJK_RE.search(text) or any(c.isalpha() for c in text))
