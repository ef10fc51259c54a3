"""The child-process boundary: hard timeout, crashes, memory, cleanup, faithful results.

The `parser=` hooks below run *inside* the child (they are module-level so the forkserver can
import them); they stand in for a parser that hangs, crashes or balloons on a hostile file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from ingest.elements import ParsedDocument
from ingest.errors import DependencyMissing, Rejected
from ingest.isolate import parse_isolated, system_capabilities
from ingest.parse import ParseLimits, parse_file
from tests.ingest.conftest import corpus_file


def _hang_with_grandchild(path: Path, *, limits: ParseLimits) -> ParsedDocument:
    sleeper = subprocess.Popen(["sleep", "300"])
    scratch = tempfile.gettempdir()
    (Path(scratch) / "partial-output").write_text("left behind by a killed parser")
    facts = {"pid": sleeper.pid, "scratch": scratch, "mode": os.stat(scratch).st_mode & 0o777}
    path.write_text(json.dumps(facts))
    time.sleep(300)  # a parser stuck in native code
    raise AssertionError("unreachable")


def _exit_abruptly(path: Path, *, limits: ParseLimits) -> ParsedDocument:
    os._exit(3)


def _segfault(path: Path, *, limits: ParseLimits) -> ParsedDocument:
    os.kill(os.getpid(), signal.SIGSEGV)
    raise AssertionError("unreachable")


def _balloon(path: Path, *, limits: ParseLimits) -> ParsedDocument:
    bytearray(limits.max_memory_bytes + 2**30)
    raise AssertionError("unreachable")


def _needs_a_tool(path: Path, *, limits: ParseLimits) -> ParsedDocument:
    raise DependencyMissing("Tesseract is not installed.", hint="apt-get install tesseract-ocr")


def _report_priority(path: Path, *, limits: ParseLimits) -> ParsedDocument:
    facts = {"nice": os.nice(0), "sid": os.getsid(0), "pgid": os.getpgid(0), "pid": os.getpid()}
    return ParsedDocument(title=json.dumps(facts), pages=1, elements=())


def test_child_runs_at_lower_priority_in_the_callers_session(tmp_path: Path) -> None:
    """Parsing takes the CPU that embedding and answering leave: a lower priority, and the
    caller's session, since a session of its own (an autogroup) would make the nice void."""
    source = tmp_path / "x.txt"
    source.write_text("x")
    facts = json.loads(
        parse_isolated(source, limits=ParseLimits(nice=7), parser=_report_priority).title
    )
    assert facts["nice"] == min(19, os.nice(0) + 7)
    assert facts["sid"] == os.getsid(0)
    assert facts["pgid"] == facts["pid"]  # its own group: a kill takes its converters too


def test_child_result_equals_in_process_parse() -> None:
    source = corpus_file("unstructured/fake-power-point-table.pptx")
    isolated = parse_isolated(source, limits=ParseLimits())
    assert isolated == parse_file(source, limits=ParseLimits())
    assert isolated.elements[1].table is not None


def test_rejection_in_child_keeps_code_message_and_hint() -> None:
    with pytest.raises(Rejected) as info:
        parse_isolated(corpus_file("unstructured/pdf/password.pdf"), limits=ParseLimits())
    assert info.value.code == "password-protected"
    assert "qpdf --decrypt" in info.value.hint


def test_real_file_over_the_time_limit_is_stopped() -> None:
    started = time.monotonic()
    with pytest.raises(Rejected) as info:
        parse_isolated(  # 872 pages of Word: tens of seconds, far over 0.5 s
            corpus_file("unstructured/handbook-872p.docx"), limits=ParseLimits(timeout_s=0.5)
        )
    assert info.value.code == "timeout" and "0.5 s" in info.value.message
    assert time.monotonic() - started < 30


def test_timeout_kills_grandchildren_and_removes_scratch(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text("{}")
    with pytest.raises(Rejected) as info:
        parse_isolated(report, limits=ParseLimits(timeout_s=3), parser=_hang_with_grandchild)
    assert info.value.code == "timeout"
    facts = json.loads(report.read_text())
    assert facts["mode"] == 0o700
    assert not Path(facts["scratch"]).exists()
    with contextlib.suppress(psutil.NoSuchProcess):  # gone: killed and reaped
        assert psutil.Process(facts["pid"]).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize(
    ("parser", "words"),
    [(_exit_abruptly, "exited (code 3)"), (_segfault, "crashed (SIGSEGV)")],
)
def test_crash_in_child_is_a_parse_error(parser: object, words: str, tmp_path: Path) -> None:
    with pytest.raises(Rejected) as info:
        parse_isolated(tmp_path, limits=ParseLimits(), parser=parser)  # type: ignore[arg-type]
    assert info.value.code == "parse-error" and words in info.value.message


def test_memory_limit_turns_into_oversized(tmp_path: Path) -> None:
    limits = ParseLimits(max_memory_bytes=3 * 2**30)
    with pytest.raises(Rejected) as info:
        parse_isolated(tmp_path, limits=limits, parser=_balloon)
    assert info.value.code == "oversized" and "3 GiB" in info.value.message


def test_missing_dependency_is_not_a_file_problem(tmp_path: Path) -> None:
    with pytest.raises(DependencyMissing) as info:
        parse_isolated(tmp_path, limits=ParseLimits(), parser=_needs_a_tool)
    assert "tesseract-ocr" in info.value.hint


def test_system_capabilities_report_the_tools() -> None:
    capabilities = system_capabilities()
    assert set(capabilities) >= {"tesseract", "tesseract_languages", "libreoffice", "pandoc"}
    assert capabilities["pandoc"] is True  # pypandoc-binary ships pandoc
    if capabilities["tesseract"]:
        assert "eng" in str(capabilities["tesseract_languages"])
