"""The serving "Done when" as a new user types it: `appliance serve` and `appliance ask`.

Real subprocesses of the real CLI against a home built with the real clock: a streamed, cited
answer through the `openai` client and through `ask`; then, with the package tampered, the same
request is refused with the reason and `ask` falls back to a labelled extractive answer.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.ingest.test_embed import bundled_embedder
from tests.support.fixtures import TinyModel, make_tiny_model_fixture
from tests.support.server import free_port
from tests.support.serving import MODEL, PASSPHRASE, World, build_world
from tests.support.tls import self_signed

tiny_model = make_tiny_model_fixture(scope="module")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model: TinyModel) -> World:
    root = tmp_path_factory.mktemp("cli-serve")
    return build_world(
        root, model_dir=tiny_model.path, embedder=bundled_embedder(), now=int(time.time())
    )


def _env(world: World) -> dict[str, str]:
    return {
        **os.environ,
        **world.env,
        "APPLIANCE_HOME": str(world.home),
        "APPLIANCE_PASSPHRASE": PASSPHRASE,
        "HF_HUB_OFFLINE": "1",
    }


def appliance(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        env=_env(world),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def served(world: World) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--no-ui", "--port", str(port)],
        env=_env(world),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            httpx.get(url + "/v1/models", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.5)
    try:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        yield url
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        assert "model tiny-qwen: loaded" in out, out


def test_openai_client_gets_a_streamed_cited_answer(world: World, served: str) -> None:
    key = appliance(world, "users", "token", "bob").stdout.strip().split()[-1]
    client = openai.OpenAI(base_url=served + "/v1", api_key=key, max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What is the travel budget for 2027?"}],
            max_tokens=16,
            stream=True,
        )
    )
    sources = (chunks[-1].model_extra or {})["sources"]
    assert any("48,000" in s["snippet"] for s in sources)
    assert all(s["group"] in ("finance", "public") for s in sources)
    assert (chunks[-1].model_extra or {})["mode"] == "generative"


def test_ask_answers_generatively_with_sources(world: World) -> None:
    proc = appliance(world, "ask", "What is the travel budget for 2027?", "--user", "bob", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["mode"] == "generative" and out["model"] == MODEL
    assert any("48,000" in s["text"] for s in out["sources"])
    text = appliance(world, "ask", "How many days of annual leave?", "--user", "carol")
    assert text.returncode == 0 and f"[model {MODEL}]" in text.stdout
    assert "hr/leave.md" in text.stdout and "finance/" not in text.stdout


def test_tampered_package_is_refused_and_ask_falls_back(world: World) -> None:
    files = sorted((world.home / "models" / MODEL / "files").glob("*.kpc"))
    blob = bytearray(files[-1].read_bytes())
    blob[len(blob) // 2] ^= 1
    files[-1].write_bytes(bytes(blob))
    refused = appliance(world, "ask", "travel budget", "--user", "bob", "--model", MODEL)
    assert refused.returncode == 1 and "TAMPERED" in refused.stderr
    proc = appliance(world, "ask", "What is the travel budget for 2027?", "--user", "bob", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["mode"] == "extractive" and out["label"].startswith("Extractive")
    assert "48,000" in out["answer"] and out["cited"]


def test_ask_refuses_an_unknown_user(world: World) -> None:
    proc = appliance(world, "ask", "anything", "--user", "nobody")
    assert proc.returncode == 1 and "nobody" in proc.stderr


def test_serve_speaks_tls_from_configured_files(world: World, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    env = {
        **_env(world),
        "APPLIANCE__SERVE__TLS_CERT": str(cert),
        "APPLIANCE__SERVE__TLS_KEY": str(key),
        "APPLIANCE__SERVE__WATCH_DROP": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--no-ui", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        deadline, status = time.monotonic() + 180, None
        while time.monotonic() < deadline and proc.poll() is None and status is None:
            try:
                status = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trust).status_code
            except httpx.TransportError:
                time.sleep(0.5)
        assert status == 200
        with pytest.raises(httpx.TransportError):  # no plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"serving on https://127.0.0.1:{port}/" in out, out


def test_sigterm_stops_the_server_and_removes_its_cached_uploads(
    world: World, tmp_path: Path
) -> None:
    """systemd and `docker stop` send SIGTERM; uvicorn re-raises it after its graceful stop,
    which used to end the process before the cleanup: uploads waiting in the web UI's memory
    folder stayed there until reboot (found by an outside-style review)."""
    from ui.cache import location

    shm = tmp_path / "shm"
    port = free_port()
    env = {
        **_env(world),
        "APPLIANCE__SERVE__UI_CACHE_DIR": str(shm),
        "APPLIANCE__SERVE__WATCH_DROP": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    cache = location(world.home, shm)
    try:
        deadline, status = time.monotonic() + 180, None
        while time.monotonic() < deadline and proc.poll() is None and status is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/healthz").status_code
            except httpx.TransportError:
                time.sleep(0.5)
        assert status == 200 and cache.is_dir()
        (cache / "pending-upload.docx").write_bytes(b"an upload nobody submitted")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out  # a stop that was asked for, done after the cleanup
    assert not cache.exists(), out
