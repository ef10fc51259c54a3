"""Imported once by the parse forkserver (see `ingest.isolate`) so forked children start warm.

Importing this module has a side effect on purpose, and only the forkserver imports it: it runs
:func:`ingest.parse.warm_up`, so each child parses its file without paying seconds of imports.
Nothing else may import it. A failure here must not kill the forkserver (it only tolerates
ImportError): the child that needs the missing part reports it with a clear message instead.
"""

from __future__ import annotations

import logging

from ingest.parse import warm_up
from ingest.prechunk import warm_up as warm_up_chunking

# the children chunk too (ingest.isolate.parse_and_chunk_isolated): stemmer and jieba, once
for _warm in (warm_up, warm_up_chunking):
    try:
        _warm()
    except Exception as exc:  # noqa: BLE001 - see the docstring
        logging.getLogger(__name__).warning("parser warm-up incomplete: %s", exc)
