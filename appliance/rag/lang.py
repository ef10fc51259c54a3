"""Which language a query is in, cheaply enough to run on every search.

Fusion needs one fact per query: *can the embedder read it?* The bundled embedder is English-only
(on Chinese it ranks barely above chance), so the answer mostly depends on the script, which a
character count settles without a model or ``langdetect`` (slow, non-deterministic, and one more
download-prone dependency):

* letters are counted per script group: Han ideographs, kana, hangul, Latin, any other letter;
  a CJK character carries about as much meaning as a short Latin word, so it weighs
  :data:`CJK_WEIGHT` letters;
* the heaviest group decides: hangul -> ``ko``; Han or kana -> ``ja`` when kana are a noticeable
  part of it (Chinese never uses kana, Japanese nearly always does), else ``zh``; another script
  -> ``other``;
* Latin -> ``en``, unless the words hit more function words of other Latin-script languages
  (French, German, Spanish, Italian, Portuguese, Dutch) than English ones -> ``other``;
* text without letters (only digits or punctuation) -> ``other``: no evidence the embedder reads it.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

__all__ = ["CJK_WEIGHT", "detect_language"]

CJK_WEIGHT = 3  # one ideograph / syllable block ~ one short word ~ three Latin letters
_KANA_SHARE_FOR_JA = 0.1  # of the Han + kana characters


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


_WORD = re.compile(r"[^\W\d_]+")
_ENGLISH = _wordset(
    "the of and to in is are was were for on with as by at from that this what which who how why "
    "when where does do did an be it its or not can"
)
_OTHER_LATIN = (
    _wordset(
        "le la les des du une est et dans pour qui que sur avec "  # French
        "der die das und ist nicht ein eine mit den dem zu auf wie "  # German
        "el los las del y es por con una para como qué "  # Spanish
        "il di che della per sono gli "  # Italian
        "os da não em uma com são "  # Portuguese
        "het een van en op niet zijn wat"  # Dutch
    )
    - _ENGLISH
)


def detect_language(text: str) -> str:
    """``"zh"``, ``"ja"``, ``"ko"``, ``"en"`` or ``"other"`` for ``text`` (see module doc)."""
    counts = _script_counts(text)
    if not counts:
        return "other"
    weighted = {
        "cjk": CJK_WEIGHT * (counts["han"] + counts["kana"]),
        "hangul": CJK_WEIGHT * counts["hangul"],
        "latin": counts["latin"],
        "other": counts["other"],
    }
    top = max(weighted, key=lambda g: (weighted[g], g == "latin"))
    if top == "cjk":
        kana_share = counts["kana"] / (counts["han"] + counts["kana"])
        return "ja" if kana_share >= _KANA_SHARE_FOR_JA else "zh"
    if top == "hangul":
        return "ko"
    if top == "latin":
        return _latin_language(text)
    return "other"


def _script_counts(text: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for ch in text:
        group = _script(ch)
        if group:
            counts[group] += 1
    return counts


def _script(ch: str) -> str:
    code = ord(ch)
    if 0x3040 <= code <= 0x30FF or 0x31F0 <= code <= 0x31FF or 0xFF66 <= code <= 0xFF9D:
        return "kana"
    if 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F:
        return "hangul"
    if (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0xF900 <= code <= 0xFAFF
        or 0x20000 <= code <= 0x3134F
    ):
        return "han"
    if not ch.isalpha():
        return ""
    if code < 0x250 or 0x1E00 <= code <= 0x1EFF or 0xFF21 <= code <= 0xFF5A:
        return "latin"  # Basic Latin, Latin-1, Extended-A/B, Extended Additional, full-width
    return "other" if unicodedata.category(ch).startswith("L") else ""


def _latin_language(text: str) -> str:
    words = [w.lower() for w in _WORD.findall(unicodedata.normalize("NFKC", text))]
    english = sum(1 for w in words if w in _ENGLISH)
    foreign = sum(1 for w in words if w in _OTHER_LATIN)
    return "other" if foreign > english else "en"
