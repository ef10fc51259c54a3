"""Parse a file in a child process with a hard time limit and a memory limit.

Parsers are large native-code stacks (qpdf, pdfminer on hostile input, LibreOffice, Tesseract)
that can hang, crash or balloon on one bad file. The child runs in its own process group, so on
timeout the parent kills it *and* the converters it started; whatever the child wrote to its
scratch directory is deleted by the parent, even after a SIGKILL. Every failure comes back as a
:class:`Rejected` with a code, never as a crash of the caller.

Children come from a ``forkserver`` that has imported the parsers once (``ingest._parse_preload``):
forking a clean single-threaded server costs milliseconds, where a fresh interpreter would pay
seconds of imports per file, and forking the (threaded) caller itself would be unsafe.

Neither the fork server nor a child inherits the caller's environment: the server starts with
the minimal one of ``ingest.child_env`` (and a private ``HOME``), and each child replaces its
environment again with a ``HOME`` and ``TMPDIR`` in its scratch directory, so LibreOffice,
Tesseract and pandoc started from it see no secret of the appliance.

:func:`parse_and_chunk_isolated` also chunks the document in the child (``ingest.prechunk``),
so that the caller's process is left with embedding; the chunking gets a time limit of its own
(the parse limit again, counted from the end of the parse).

A file from the drop folder is handed over *open* (an :class:`ingest.safefs.OpenedFile`): the
descriptor travels to the child, which parses ``scratch/source/<name>``, a link to
``/proc/<child>/fd/<n>``: that path reaches the opened file itself (for the child's libraries
and for the converters it starts), whatever the name in the drop folder points to by then.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import multiprocessing
import multiprocessing.forkserver
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ingest.child_env import child_environment, exec_environment, replace_environ
from ingest.elements import ParsedDocument
from ingest.errors import DependencyMissing, IngestError, Rejected
from ingest.parse import ParseLimits, parse_file
from ingest.parse_tools import (
    pandoc_path,
    pdftoppm_path,
    soffice_path,
    tesseract_languages,
    tesseract_path,
)
from ingest.prechunk import ChunkedDocument, ChunkSpec, chunk_and_count
from ingest.safefs import OpenedFile
from ingest.scratch import private_scratch

Parser = Callable[..., ParsedDocument]
# "__main__" first: the server imports the caller's main module once, so forked children do not
# re-run it (multiprocessing re-imports the main script in every child otherwise). As with any
# multiprocessing program, a main *script* must guard its entry point with
# ``if __name__ == "__main__":``.
_PRELOAD = ["__main__", "ingest._parse_preload"]
KILL_GRACE_S = 5.0
STARTUP_TIMEOUT_S = 300.0  # a cold forkserver imports the parser stacks once (seconds)
_SERVER_LOCK = threading.Lock()
_server_started_by: int | None = None  # the process that started the fork server


def parse_isolated(
    path: Path | OpenedFile, *, limits: ParseLimits, parser: Parser = parse_file
) -> ParsedDocument:
    """Run ``parser(path, limits=limits)`` in a child process; raises :class:`Rejected`.

    ``parser`` must be a module-level function (it is sent to the child by reference); tests
    use it to simulate hangs and crashes. `DependencyMissing` is re-raised as such: it is a
    problem of the installation, not of the file.
    """
    document: ParsedDocument = _run(path, limits, parser, None)
    return document


def parse_and_chunk_isolated(
    path: Path | OpenedFile,
    *,
    limits: ParseLimits,
    chunking: ChunkSpec,
    parser: Parser = parse_file,
) -> ChunkedDocument:
    """As :func:`parse_isolated`, then chunk and count BM25 terms in the same child, so that
    only the chunks come back (exactly what `ingest.prechunk.chunk_and_count` gives)."""
    chunked: ChunkedDocument = _run(path, limits, parser, chunking)
    return chunked


def _run(
    path: Path | OpenedFile, limits: ParseLimits, parser: Parser, chunking: ChunkSpec | None
) -> Any:
    context = _context()
    scratch = private_scratch("ingest-child-")  # 0700, on /dev/shm when available
    receiver, sender = context.Pipe(duplex=False)
    source = _PassedFile(path.fd, path.name) if isinstance(path, OpenedFile) else str(path)
    process = context.Process(
        target=_child_main,
        args=(sender, parser, source, limits, str(scratch), chunking),
        daemon=True,
    )
    phase = "parse"
    try:
        process.start()
        sender.close()
        # The clock starts when the child runs: a cold forkserver's imports do not count.
        started = _wait(receiver, STARTUP_TIMEOUT_S)
        outcome = _wait(receiver, limits.timeout_s) if started == ("started",) else started
        if outcome == ("parsed",):  # chunking: a time limit of its own
            phase = "chunk"
            outcome = _wait(receiver, limits.timeout_s)
    finally:
        _stop(process)
        receiver.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return _unpack(outcome, process.exitcode, limits, phase)


class _PassedFile:
    """An open file for the child: pickled while the child starts, its descriptor is sent
    along (``multiprocessing.reduction.DupFd``) and arrives as (descriptor, name)."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd, self.name = fd, name

    def __reduce__(self) -> tuple[Any, ...]:
        from multiprocessing.reduction import DupFd

        return (_received, (DupFd(self.fd), self.name))


def _received(dup: Any, name: str) -> tuple[int, str]:
    return dup.detach(), name


def _source_path(source: str | tuple[int, str], scratch: str) -> Path:
    """The path the parser opens: the given path, or for a passed file a link (named like the
    original, for its suffix and title) to this process's descriptor of it."""
    if isinstance(source, str):
        return Path(source)
    fd, name = source
    folder = Path(scratch) / "source"
    folder.mkdir(mode=0o700)
    link = folder / name
    link.symlink_to(f"/proc/{os.getpid()}/fd/{fd}")
    return link


def _context() -> Any:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    _start_server()
    return context


def _start_server() -> None:
    """Start the fork server (and multiprocessing's resource tracker) once per process, with
    a minimal environment and a private ``HOME``, so that neither holds the caller's secrets.

    Should the server die, multiprocessing restarts it with this process's own environment;
    the children still replace theirs (:func:`_child_main`), so what they start stays minimal.
    """
    global _server_started_by
    with _SERVER_LOCK:
        if _server_started_by == os.getpid():
            return
        home = str(private_scratch("kapp-parse-home-"))
        atexit.register(shutil.rmtree, home, ignore_errors=True)
        with exec_environment(child_environment(home=home, TMPDIR=home)):
            multiprocessing.forkserver.ensure_running()
        _server_started_by = os.getpid()


def _wait(receiver: Connection, timeout_s: float) -> tuple[Any, ...] | None:
    """The child's message; None on timeout; ("died",) when it exited without one."""
    if not receiver.poll(timeout_s):
        return None
    try:
        return tuple(receiver.recv())
    except (EOFError, OSError):
        return ("died",)


def _stop(process: Any) -> None:
    """Kill the child's whole process group (converters, OCR) and reap the child."""
    if process.pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.join(KILL_GRACE_S)


def _unpack(
    outcome: tuple[Any, ...] | None, exitcode: int | None, limits: ParseLimits, phase: str
) -> Any:
    if outcome is None:
        doing = "Parsing" if phase == "parse" else "Chunking the parsed text"
        raise Rejected(
            f"{doing} took longer than {limits.timeout_s:g} s and was stopped.",
            code="timeout",
            hint="Split the file, or raise the parse timeout in the ingest settings.",
        )
    if outcome[0] == "ok":
        return outcome[1]
    if outcome[0] == "error":
        _, kind, code, message, hint = outcome
        if kind == "DependencyMissing":
            raise DependencyMissing(message, hint=hint)
        raise Rejected(message, code=code, hint=hint)
    raise Rejected(_death_message(exitcode, limits), code="parse-error")


def _death_message(exitcode: int | None, limits: ParseLimits) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else "?"
        if -exitcode == signal.SIGKILL:
            memory = limits.max_memory_bytes / 2**30
            return (
                f"The parser process was killed ({name}); most likely it ran out of memory "
                f"(limit {memory:g} GiB)."
            )
        return f"The parser process crashed ({name}) inside a native library on this file."
    return f"The parser process exited (code {exitcode}) without returning a result."


def _child_main(
    sender: Connection,
    parser: Parser,
    source: str | tuple[int, str],
    limits: ParseLimits,
    scratch: str,
    chunking: ChunkSpec | None = None,
) -> None:
    """Entry point of the child: own process group, memory cap, private temp dir, one parse
    (and, with ``chunking``, the chunks of its result)."""
    # A process group of its own (for the kill), but not a session of its own: with the
    # kernel's session autogroups, a new session would compete with the caller as an equal
    # whatever its nice value (measured: the embedder waited 40 % of the time for the CPU).
    os.setpgid(0, 0)
    _limit_memory(limits.max_memory_bytes)
    if limits.nice > 0:
        os.nice(limits.nice)  # converters and OCR started from here inherit it
    tempfile.tempdir = scratch
    # for LibreOffice, Tesseract and pandoc too: no secret, HOME and TMPDIR in the scratch
    replace_environ(child_environment(home=scratch, TMPDIR=scratch))
    sender.send(("started",))
    message = _guarded(
        lambda: parser(_source_path(source, scratch), limits=limits), limits, "Parsing"
    )
    if chunking is not None and message[0] == "ok":
        sender.send(("parsed",))
        document: ParsedDocument = message[1]
        message = _guarded(lambda: _chunk(document, chunking), limits, "Chunking")
    try:
        sender.send(message)
    except MemoryError:
        sender.send(("error", "Rejected", "oversized", "The parsed document is too large.", ""))
    finally:
        sender.close()


def _chunk(document: ParsedDocument, chunking: ChunkSpec) -> ChunkedDocument:
    started = time.perf_counter()
    chunked = chunk_and_count(
        document, params=chunking.params, count_tokens=chunking.count_tokens()
    )
    return dataclasses.replace(chunked, chunk_s=time.perf_counter() - started)


def _guarded(step: Callable[[], Any], limits: ParseLimits, doing: str) -> tuple[Any, ...]:
    """("ok", result) or the error message for the parent. An unexpected error is a
    ``parse-error`` of the file while parsing, an ``index-error`` (a bug of ours) after."""
    code = "parse-error" if doing == "Parsing" else "index-error"
    try:
        return ("ok", step())
    except IngestError as exc:
        return ("error", type(exc).__name__, exc.code, exc.message, exc.hint)
    except MemoryError:
        memory = f"{limits.max_memory_bytes / 2**30:g} GiB"
        return ("error", "Rejected", "oversized", f"{doing} needed more than {memory}.", "")
    except BaseException as exc:  # noqa: BLE001 - the parent must get an answer, whatever happened
        detail = " ".join(str(exc).split())[:300]
        return ("error", "Rejected", code, f"{type(exc).__name__}: {detail}", "")


def _limit_memory(limit: int) -> None:
    import resource

    if limit > 0:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def system_capabilities() -> dict[str, bool | str]:
    """Which optional tools this host has, for `appliance status` and operator warnings."""
    languages = tesseract_languages()
    return {
        "tesseract": tesseract_path() is not None,
        "tesseract_version": _tesseract_version(),
        "tesseract_languages": ",".join(sorted(languages)),
        "ocr_english": "eng" in languages,
        "ocr_chinese": "chi_sim" in languages,
        "libreoffice": soffice_path() is not None,
        "pdftoppm": pdftoppm_path() is not None,
        "pandoc": pandoc_path() is not None,
    }


def _tesseract_version() -> str:
    exe = tesseract_path()
    if exe is None:
        return ""
    try:
        done = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=30, env=child_environment()
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    first = (done.stdout or done.stderr).splitlines()
    return first[0].strip() if first else ""
