"""docker/Dockerfile, .dockerignore and docker/healthcheck.py, checked without a Docker engine.

The Dockerfile is parsed (stages, user, health check, what is copied in); its RUN steps are
syntax-checked by bash; the build context is computed from .dockerignore the way Docker reads it;
the health check script runs for real against servers on loopback and real processes.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import re
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.tls import self_signed

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
Instruction = tuple[str, str]


def instructions(text: str) -> list[Instruction]:
    """(KEYWORD, arguments) with continuation lines joined and comments dropped."""
    found: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1]  # Docker drops the backslash-newline
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        found.append((keyword.upper(), args.strip()))
        pending = ""
    return found


def stages(text: str) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def dockerignore_keeps(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    keep = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _glob_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            keep = negated
    return keep


def _glob_regex(glob: str) -> re.Pattern[str]:
    out = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", glob):
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
            token, re.escape(token)
        )
    return re.compile(out)


@pytest.fixture(scope="module")
def final_stage() -> list[Instruction]:
    return stages(DOCKERFILE.read_text(encoding="utf-8"))[-1]


def _one(stage: list[Instruction], keyword: str) -> str:
    values = [args for kw, args in stage if kw == keyword]
    assert len(values) == 1, f"expected one {keyword}, found {values}"
    return values[0]


# -- the Dockerfile ------------------------------------------------------------------------------


def test_the_image_is_built_in_stages_from_python_311_slim_bookworm() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    all_stages = stages(text)
    assert len(all_stages) >= 2
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text
    assert [s[0][1] for s in all_stages] == [
        "${PYTHON_IMAGE} AS builder",
        "${PYTHON_IMAGE} AS runtime",
    ]
    builder_runs = " ".join(args for kw, args in all_stages[0] if kw == "RUN")
    assert "--index-url" in builder_runs and "requirements.lock" in builder_runs
    lock = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    assert "torch==2.13.0+cpu" in lock.splitlines()  # what the sed in the builder reads


def test_the_final_stage_runs_as_a_non_root_user(final_stage: list[Instruction]) -> None:
    user = _one(final_stage, "USER").split(":")[0]
    assert user not in {"root", "0", ""}
    users = [args for kw, args in final_stage if kw == "USER"]
    assert final_stage.index(("USER", users[-1])) > max(
        i for i, (kw, _) in enumerate(final_stage) if kw == "RUN"
    ), "USER must come after every RUN of the final stage"


def test_the_final_stage_serves_on_8080_with_a_health_check_and_volumes(
    final_stage: list[Instruction],
) -> None:
    assert _one(final_stage, "EXPOSE") == "8080"
    assert "/usr/local/lib/appliance/healthcheck.py" in _one(final_stage, "HEALTHCHECK")
    volumes = _one(final_stage, "VOLUME")
    assert "/var/lib/appliance" in volumes and "/srv/drop" in volumes
    entry = _one(final_stage, "ENTRYPOINT")
    cmd = _one(final_stage, "CMD")
    assert entry.endswith('"appliance"]') and cmd == '["serve", "--host", "0.0.0.0"]'
    assert "APPLIANCE_HOME=/var/lib/appliance" in _one(final_stage, "ENV")


def test_run_steps_are_valid_shell() -> None:
    for keyword, args in instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if keyword == "RUN":
            done = subprocess.run(["bash", "-n", "-c", args], capture_output=True, text=True)
            assert done.returncode == 0, f"{args}\n{done.stderr}"


def test_the_build_context_holds_the_product_and_no_home_model_or_secret() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for keyword, args in instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if keyword in {"COPY", "ADD"} and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert dockerignore_keeps(source, patterns), f"{source} is ignored but copied"
                assert (ROOT / source).exists(), source
    for sensitive in (
        ".home/appliance/keys/root.sealed",
        ".home/secrets/passphrase",
        "docker/secrets/passphrase",
        "docker/.env",
        "models/qwen/model.safetensors",
        "appliance/weights/model.safetensors",
        "appliance/samples/hr/leave.md",
        ".venv/bin/python",
        ".git/config",
        "appliance/__pycache__/config.cpython-311.pyc",
        "bench/results/latency.json",
        "tests/ops/test_compose.py",
    ):
        assert not dockerignore_keeps(sensitive, patterns), sensitive
    assert dockerignore_keeps("appliance/config.py", patterns)
    assert dockerignore_keeps("appliance/defaults/appliance.toml", patterns)


# -- docker/healthcheck.py -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_healthcheck", HEALTHCHECK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(context: ssl.SSLContext | None = None) -> Iterator[http.server.HTTPServer]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    if context is not None:
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        _Health.status = 200


def _run_check(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {"APPLIANCE_HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=ROOT,
        timeout=60,
    )


def test_http_check_passes_on_200_and_fails_on_503_or_no_server(tmp_path: Path) -> None:
    with serving() as server:
        port = str(server.server_address[1])
        ok = _run_check(tmp_path, APPLIANCE__SERVE__PORT=port)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert f"127.0.0.1:{port}/healthz: HTTP 200" in ok.stdout
        _Health.status = 503
        assert _run_check(tmp_path, APPLIANCE__SERVE__PORT=port).returncode == 1
    gone = _run_check(tmp_path, APPLIANCE__SERVE__PORT=port)
    assert gone.returncode == 1 and "healthz" in gone.stdout


def test_http_check_reports_invalid_settings(tmp_path: Path) -> None:
    bad = _run_check(tmp_path, APPLIANCE__SERVE__PORT="99999")
    assert bad.returncode == 1 and bad.stdout.startswith("settings: Invalid settings")


def test_https_check_follows_the_tls_settings(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    tls = {"APPLIANCE__SERVE__TLS_CERT": str(cert), "APPLIANCE__SERVE__TLS_KEY": str(key)}
    with serving(context) as server:
        port = str(server.server_address[1])
        ok = _run_check(tmp_path, APPLIANCE__SERVE__PORT=port, **tls)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert ok.stdout.startswith(f"https://127.0.0.1:{port}/healthz: HTTP 200")
        plain = _run_check(tmp_path, APPLIANCE__SERVE__PORT=port)
        assert plain.returncode == 1  # plain http against the TLS port is not healthy


def test_process_check_sees_a_live_watcher_but_not_a_zombie_or_a_dead_one(
    healthcheck: ModuleType, tmp_path: Path
) -> None:
    words = ["ingest", "--watch", f"marker-{tmp_path.name}"]
    assert not healthcheck.process_running(words)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *words])
    try:
        _wait_for_exec(child.pid, words[-1])  # until exec, /proc shows pytest's own command line
        assert healthcheck.process_running(words)
        assert _run_check(tmp_path, "--process", *words).returncode == 0
        child.send_signal(signal.SIGKILL)
        _wait_for_state(child.pid, "Z")
        assert not healthcheck.process_running(words)  # a zombie is not a running watcher
    finally:
        child.kill()
        child.wait()
    assert _run_check(tmp_path, "--process", *words).returncode == 1


def _wait_for_exec(pid: int, marker: str) -> None:
    cmdline = Path(f"/proc/{pid}/cmdline")
    for _ in range(500):
        if marker.encode() in cmdline.read_bytes():
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"process {pid} never ran its command")


def _wait_for_state(pid: int, state: str) -> None:
    stat = Path(f"/proc/{pid}/stat")
    for _ in range(200):
        if stat.read_text().rsplit(")", 1)[1].split()[0] == state:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"process {pid} never reached state {state}")
