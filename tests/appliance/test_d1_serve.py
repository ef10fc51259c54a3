"""D1 over the whole serve flow, plus D2 and D3 for the serving process.

A child process with every writable location redirected builds a home, imports the canary model's
package, unlocks and loads it through `Runtime`, serves it on a real loopback server, answers 20
questions through the `openai` client (streaming and not) and unloads. Then every writable
location is scanned for the canary. The child also asserts D3 (the process is not dumpable while
serving).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.fixtures import build_tiny, file_contains, find_patterns, redirected_child

CHILD = r"""
import sys, time
from pathlib import Path
from appliance.llm.hardening import disable_core_dumps, is_dumpable, offline_env
offline_env()
disable_core_dumps()
import openai
from appliance.serve.server import build_app
from tests.support.server import running_server
from tests.support.serving import MODEL, NOW, build_world, open_runtime

src, work = Path(sys.argv[1]), Path(sys.argv[2])
world = build_world(work, model_dir=src)
rt = open_runtime(world, clock=lambda: NOW + 10)
assert rt.models.loaded() == [MODEL], rt.models.states()
assert not is_dumpable()
key = rt.app.users.issue_token("bob", now=NOW)
with running_server(build_app(rt, ui=False)) as url:
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    for i in range(20):
        q = [{"role": "user", "content": f"question {i}: what is the travel budget? 合同"}]
        if i % 2:
            out = client.chat.completions.create(model=MODEL, messages=q, max_tokens=12)
            assert out.model_extra["mode"] == "generative"
        else:
            chunks = list(client.chat.completions.create(
                model=MODEL, messages=q, max_tokens=12, stream=True))
            assert chunks[-1].model_extra["mode"] == "generative"
rt.close()
assert rt.models.loaded() == []
print("ok")
"""


@pytest.mark.timeout(600)
def test_d1_serve_flow_leaves_no_canary(tmp_path: Path) -> None:
    model = build_tiny(tmp_path / "vendor-src", with_canary=True)
    child = redirected_child(tmp_path)
    work, fake_home, tmpdir, env = child.work, child.home, child.tmp, child.env
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(model.path), str(work)],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("ok")
    assert find_patterns([model.path], model.patterns), "canary was not planted"
    assert find_patterns([work, fake_home, tmpdir], model.patterns) == []
    fresh = [
        p
        for p in Path(tempfile.gettempdir()).glob("*")
        if p.is_file() and not p.is_symlink() and p.stat().st_mtime >= started
    ]
    assert [p for p in fresh if file_contains(p, model.patterns)] == []
