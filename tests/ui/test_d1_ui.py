"""D1 over the web UI (issue 12): canaries planted in a document, in questions and in uploaded
files go through the staff UI as a browser page drives it (login form, Gradio queue events,
the upload route, one upload never submitted, history), in a child process whose every
writable location is redirected here. After shutdown, the home, the temp and cache folders,
the UI's upload cache under /dev/shm and every new file in /dev/shm and the system temp
directory are scanned: no canary anywhere (documents, history and chunks are stored encrypted).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.fixtures import file_contains, find_patterns, iter_files, redirected_child

pytestmark = pytest.mark.slow
SHM = Path("/dev/shm")
CHILD = r"""
import sys, tempfile, time
from pathlib import Path
from appliance.serve.server import build_app
from tests.ingest.test_embed import bundled_embedder
from tests.support.server import running_server
from tests.support.webui import Page, browser, login
from tests.ui.kit import DOCS, PASSWORD, build

work, doc, asked, sent, left = Path(sys.argv[1]), *sys.argv[2:6]
docs = {**DOCS, "finance/canary.md": f"# Canary procedure\n\nThe canary procedure code is {doc}. "
        "Staff read the canary procedure code aloud at the start of every audit.\n"}
world = build(work, bundled_embedder(), docs=docs)
with running_server(build_app(world.runtime, ui=True)) as url:
    client = browser(url)
    assert login(client, "fred", PASSWORD).status_code == 303
    page = Page(client)
    for fn in page.load_fns():
        page.call(fn, [])
    question = f"What is the canary procedure code? Ref {asked}"
    answer = page.call(page.fn("ask"), [question, [], None])
    assert doc in answer.raw and asked in answer.raw, answer.raw[-2000:]
    files = []
    for name, canary in (("sent.md", sent), ("left.md", left)):
        path = Path(tempfile.mkdtemp()) / name
        path.write_text(f"# Upload {name}\n\nThe uploaded phrase is {canary}. It names the "
                        "uploaded parking procedure for visitors.\n")
        files.append(page.upload(path))
        path.unlink()
    assert page.call(page.fn("upload-submit"), ["finance", files[:1]]).completed["success"]
    tick = next(int(d["id"]) for d in page.config["dependencies"]
                if any(t[1] == "tick" for t in d["targets"]))
    deadline = time.monotonic() + 180
    while "indexed" not in page.call(tick, []).raw:
        assert time.monotonic() < deadline, "the upload was not indexed"
        time.sleep(1)
    answer = page.call(page.fn("ask"), ["What is the uploaded phrase for visitors?", [], None])
    assert sent in answer.raw, answer.raw[-2000:]
    assert page.call(page.fn("history-refresh"), []).completed["success"]
    cache = world.runtime.extras["ui"].cache.path
    assert Path(files[1]["path"]).is_relative_to(cache) and Path(files[1]["path"]).exists()
world.close()
assert not cache.exists()
print("cache", cache)
print("ok")
"""


@pytest.mark.timeout(900)
def test_d1_web_ui_flow_leaves_no_canary(tmp_path: Path) -> None:
    canaries = [f"KAPPCANARY{secrets.token_hex(10).upper()}" for _ in range(4)]
    patterns = {c.encode() for c in canaries} | {c.encode("utf-16-le") for c in canaries}
    child = redirected_child(tmp_path)
    work, fake_home, tmpdir, env = child.work, child.home, child.tmp, child.env
    env.pop("GRADIO_TEMP_DIR", None)
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(work), *canaries],
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "ok", proc.stdout[-2000:]
    cache = Path(lines[-2].removeprefix("cache "))
    assert cache.parent == SHM and not cache.exists()
    assert find_patterns([work, fake_home, tmpdir], patterns) == []
    fresh = [SHM, Path(tempfile.gettempdir())]
    new = [p for p in iter_files(fresh) if _newer(p, started)]
    assert [p for p in new if _contains(p, patterns)] == []


def _newer(path: Path, started: float) -> bool:
    try:
        return path.stat().st_mtime >= started
    except OSError:
        return False


def _contains(path: Path, patterns: set[bytes]) -> bool:
    try:
        return file_contains(path, patterns)
    except OSError:
        return False  # another process's file that vanished or is not readable
