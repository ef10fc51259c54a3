"""The environment of every process we start for parsing: an allow-list, never ``os.environ``.

Parse children, LibreOffice, Tesseract, pdftoppm and pandoc run on hostile files. Whatever the
appliance's own environment holds (a passphrase, tokens, cloud credentials of the host, a proxy
password) must not reach them, so each child gets only what it needs to run: the search path,
locale, time zone, temp directory, a private ``HOME``, what Python needs to import our code,
thread limits and the offline switches. Libraries that start programs themselves (pypandoc,
unstructured's LibreOffice conversion) pass on the environment of the process they run in; the
parse child's own environment is therefore this minimal one too (see ``ingest.isolate``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
from collections.abc import Iterator, Mapping

from ingest.nlp_offline import OFFLINE_ENVIRONMENT

ALLOWED = frozenset(
    {
        "PATH",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        # what the Python of a child needs to find and run our code the same way
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONNOUSERSITE",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        # thread limits (one parse per core) and tokenizer threads
        "OMP_NUM_THREADS",
        "OMP_THREAD_LIMIT",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "TOKENIZERS_PARALLELISM",
        # offline switches and where Tesseract finds its language data
        "HF_HUB_OFFLINE",
        "HF_HUB_DISABLE_TELEMETRY",
        "TRANSFORMERS_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "TESSDATA_PREFIX",
    }
)
ALLOWED_PREFIXES = ("LC_",)


def child_environment(
    base: Mapping[str, str] | None = None, *, home: str | None = None, **extra: str
) -> dict[str, str]:
    """The allowed part of ``base`` (default: this process's environment), the offline
    switches, ``HOME`` set to ``home`` (default: the temp directory, which is a private one in
    a parse child) and ``extra`` on top."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if k in ALLOWED or k.startswith(ALLOWED_PREFIXES)}
    env.update(OFFLINE_ENVIRONMENT)
    env["HOME"] = home if home is not None else tempfile.gettempdir()
    env.update(extra)
    return env


def replace_environ(env: Mapping[str, str]) -> None:
    """Make ``env`` this process's whole environment (``os.environ`` and the C one alike).

    Only for a process of our own that runs no other threads: a parse child, right after fork.
    """
    os.environ.clear()
    os.environ.update(env)
    _set_c_environ(_c_environ(), _encoded(env))  # also what native code set behind os.environ


def _encoded(env: Mapping[str, str]) -> dict[bytes, bytes]:
    return {os.fsencode(k): os.fsencode(v) for k, v in env.items()}


@contextlib.contextmanager
def exec_environment(env: Mapping[str, str]) -> Iterator[None]:
    """While the block runs, programs started by ``exec`` without an explicit environment (as
    ``multiprocessing`` starts its fork server) get exactly ``env``; ``os.environ`` stays as is.

    It changes the C-level environment only (including variables native code set there behind
    ``os.environ``), for as long as the block takes; Python code in other threads keeps reading
    ``os.environ`` unchanged, and native code reading a variable that ``env`` keeps with the
    same value sees no difference.
    """
    saved = _c_environ()
    _set_c_environ(saved, _encoded(env))
    try:
        yield
    finally:
        _set_c_environ(_c_environ(), saved)


def _set_c_environ(current: Mapping[bytes, bytes], wanted: Mapping[bytes, bytes]) -> None:
    for name in current.keys() - wanted.keys():
        os.unsetenv(name)
    for name, value in wanted.items():
        if current.get(name) != value:
            os.putenv(name, value)


def _c_environ() -> dict[bytes, bytes]:
    """The C library's ``environ`` as it is now (``os.environ`` is a copy made at start)."""
    entries = ctypes.POINTER(ctypes.c_char_p).in_dll(ctypes.CDLL(None), "environ")
    found: dict[bytes, bytes] = {}
    index = 0
    while (entry := entries[index]) is not None:
        name, _, value = entry.partition(b"=")
        if name:
            found.setdefault(name, value)
        index += 1
    return found
