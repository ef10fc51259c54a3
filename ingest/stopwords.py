"""English stop-word lists for the keyed BM25 analyzer, as constants (nothing is downloaded).

Two classic lists are kept so the choice stays a measured one (``bench/bench_sparse.py``):

* :data:`LUCENE_ENGLISH` is Lucene's ``EnglishAnalyzer`` default set (33 words). Milvus'
  ``english`` analyzer uses the same list as ``_english_``, so it is what our reference numbers
  were measured with.
* :data:`SNOWBALL_ENGLISH` is the Snowball project's English list (Porter, BSD licence), plus
  the pieces a word tokenizer leaves of its contractions (``isn't`` -> ``isn``, ``t``).

The analyzer uses :data:`ENGLISH_STOP_WORDS`; `ingest/sparse.py` says why that one.
"""

from __future__ import annotations

_LUCENE_WORDS = """
a an and are as at be but by for if in into is it no not of on or such that the their then
there these they this to was will with
"""

LUCENE_ENGLISH: frozenset[str] = frozenset(_LUCENE_WORDS.split())

_SNOWBALL_WORDS = """
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself
she her hers herself it its itself they them their theirs themselves what which who whom this
that these those am is are was were be been being have has had having do does did doing would
should could ought i'm you're he's she's it's we're they're i've you've we've they've i'd
you'd he'd she'd we'd they'd i'll you'll he'll she'll we'll they'll isn't aren't wasn't
weren't hasn't haven't hadn't doesn't don't didn't won't wouldn't shan't shouldn't can't
cannot couldn't mustn't let's that's who's what's here's there's when's where's why's how's a
an the and but if or because as until while of at by for with about against between into
through during before after above below to from up down in out on off over under again
further then once here there when where why how all any both each few more most other some
such no nor not only own same so than too very
"""

# What a word tokenizer leaves of the contractions above ("isn't" -> "isn", "t"). Pieces that
# are also content words ("won", "can", "let", "don") are deliberately left out.
_CONTRACTION_PIECES = """
s t m d ll re ve isn aren wasn weren hasn haven hadn doesn didn wouldn shan shouldn couldn
mustn
"""

SNOWBALL_ENGLISH: frozenset[str] = frozenset(_SNOWBALL_WORDS.split() + _CONTRACTION_PIECES.split())

ENGLISH_STOP_WORDS: frozenset[str] = LUCENE_ENGLISH
