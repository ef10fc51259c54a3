"""Load test (issue 5): 20 simulated staff for 2 minutes per answer mode against `appliance serve`.

A scratch home is built through the library (``tests/support/serving.build_world``: real keys at a
low KDF cost, the tiny Qwen2 test model packaged, installed and unlocked by a signed policy for
role staff), with four groups of documents ingested through the real pipeline: planted per-group
"vault codes" and short policies (``tests/support/load.LOAD_DOCS``), the bundled samples
(``appliance/samples``) and a dozen office files from ``../shared/data/docs``; 20 staff accounts
across the four groups (every fifth in two), each with an API key. The real CLI,
``python -m appliance serve --port P``, runs as a child process; the harness
(``tests/support/load.py``) then drives every staff member at once: web login and page, then
questions (half streamed) and searches with a think time of 0.5–2 s, source views through the
session and probes of foreign chunk ids. Phases: ``extractive`` (model "extractive") and
``generative`` (model "auto", the tiny model, ``max_tokens`` 16). Each phase must end with zero
errors, zero access-control violations and the /metrics question counter equal to the questions
asked; the exit status says whether it did.

    python bench/bench_load.py [--duration 120] [--users 20] [--quick]
                               [--modes extractive,generative] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.load import (  # noqa: E402
    GROUPS,
    LOAD_DOCS,
    Phase,
    Staff,
    add_staff,
    run_phase,
    scrape,
    summary,
)
from tests.support.serving import PASSPHRASE, PASSWORD, World, build_world  # noqa: E402

DOCS = REPO.parent / "shared" / "data" / "docs"
SAMPLES = REPO / "appliance" / "samples"
OFFICE = {  # group -> office files of the shared corpus (all parse without OCR)
    "finance": (
        "markitdown/REPAIR-2022-INV-001_multipage.pdf",
        "markitdown/RECEIPT-2024-TXN-98765_retail_purchase.pdf",
        "unstructured/2023-half-year-analyses-by-segment.xlsx",
    ),
    "hr": (
        "python-docx/tests/test_files/test.docx",
        "unstructured/duplicate-paragraphs.docx",
        "markitdown/test_with_comment.docx",
    ),
    "legal": (
        "markitdown/test.pdf",
        "py-pdf-sample-files/026-latex-multicolumn/multicolumn.pdf",
        "markitdown/SPARSE-2024-INV-1234_borderless_table.pdf",
    ),
    "engineering": ("markitdown/test.docx", "markitdown/test.pptx", "markitdown/test.xlsx"),
}
PHASES = {
    "extractive": {"model": "extractive", "expect_mode": "extractive", "max_tokens": None},
    "generative": {"model": "auto", "expect_mode": "generative", "max_tokens": 16},
}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def build(root: Path, users: int, policy_s: int) -> tuple[World, list[Staff], dict[str, Any]]:
    """The scratch home: model, documents of four groups, staff with keys."""
    from ingest.embed import Embedder
    from tests.support.serving import knowledge_for
    from tests.support.tiny_model import build_tiny_model

    now = int(time.time())
    embedder = Embedder.load("bundled")
    model = build_tiny_model(root / "tiny-model")
    world = build_world(
        root, model_dir=model, policy_s=policy_s, docs=LOAD_DOCS, embedder=embedder, now=now
    )
    app = world.appliance(now)
    copied = copy_documents(app.settings.drop_dir)
    started = time.monotonic()
    kb = knowledge_for(app, embedder)
    report = kb.pipeline().run_once(settle=False)
    kb.store.close()  # Milvus Lite: the server process must be the only one holding the file
    staff = add_staff(app, users, password=PASSWORD, now=now)
    docs = {
        "markdown": len(LOAD_DOCS),
        "files_copied": copied,
        "ingest": report.totals,
        "ingest_s": round(time.monotonic() - started, 1),
    }
    return world, staff, docs


def copy_documents(drop: Path) -> int:
    """The bundled samples and the office files, into ``drop/<group>/``."""
    pairs = [(p, p.relative_to(SAMPLES)) for p in SAMPLES.rglob("*") if p.is_file()]
    for group, files in OFFICE.items():
        pairs += [(DOCS / f, Path(group) / f.replace("/", "__")) for f in files]
    for src, rel in pairs:
        if not src.is_file():
            raise SystemExit(f"missing document {src} (is ../shared/data present?)")
        (drop / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, drop / rel)
    return len(pairs)


def serve(world: World, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **OFFLINE, **world.env}
    env.update(APPLIANCE_HOME=str(world.home), APPLIANCE_PASSPHRASE=PASSPHRASE)
    command = [sys.executable, "-m", "appliance", "serve", "--port", str(port)]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float = 600) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise SystemExit(f"`appliance serve` exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("`appliance serve` did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def run_phases(url: str, staff: list[Staff], modes: list[str], duration: float) -> dict[str, Any]:
    results = {}
    for i, mode in enumerate(modes):
        phase = Phase(mode, duration_s=duration, seed=i, **PHASES[mode])
        before, load_before = scrape(url), os.getloadavg()
        started = time.monotonic()
        tally = asyncio.run(run_phase(url, staff, phase))
        wall = time.monotonic() - started
        record = summary(tally, phase, wall, scrape(url) - before)
        record["loadavg_before"] = [round(x, 2) for x in load_before]
        record["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        results[mode] = record
        print_phase(mode, record)
    return results


def print_phase(mode: str, r: dict[str, Any]) -> None:
    q, lat = r["questions_latency"], r["latency"]
    print(
        f"{mode}: {r['requests']} requests, {r['errors']} errors, {r['acl_violations']} ACL "
        f"violations; all p50/p95/p99 {lat['p50_ms']}/{lat['p95_ms']}/{lat['p99_ms']} ms; "
        f"questions {r['questions']} p50/p95 {q['p50_ms']}/{q['p95_ms']} ms; "
        f"{r['throughput_rps']} req/s; metrics match {r['metrics_match']}; server {r['server']}; "
        f"load {r['loadavg_after']}",
        flush=True,
    )


def passed(results: dict[str, Any]) -> bool:
    return all(
        r["errors"] == 0
        and r["acl_violations"] == 0
        and r["metrics_match"]
        and r["metrics_completed_match"]
        for r in results.values()
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=120.0, help="seconds per mode")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="20 s per mode")
    ap.add_argument("--modes", default="extractive,generative")
    ap.add_argument("--workdir", type=Path, help="keep the scratch home here")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "load.json")
    args = ap.parse_args()
    os.environ.update(OFFLINE)
    duration = 20.0 if args.quick else args.duration
    modes = [m for m in args.modes.split(",") if m]
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-load-"))
    from tests.support.server import free_port

    t0 = time.monotonic()
    world, staff, docs = build(root, args.users, policy_s=int(duration * len(modes)) + 3600)
    setup_s = time.monotonic() - t0
    port, log = free_port(), root / "serve.log"
    proc = serve(world, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        ready_s = wait_ready(proc, url)
        results = run_phases(url, staff, modes, duration)
    finally:
        status = stop(proc)
    server_log = log.read_text(encoding="utf-8", errors="replace")
    out = {
        "command": "python bench/bench_load.py" + (" --quick" if args.quick else ""),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "users": args.users,
        "groups": list(GROUPS),
        "users_per_group": {g: sum(g in s.groups for s in staff) for g in GROUPS},
        "documents": docs,
        "setup_s": round(setup_s, 1),
        "server_ready_s": round(ready_s, 1),
        "server_exit_status": status,
        "server_log_tracebacks": server_log.count("Traceback"),
        "server_log_tail": server_log.splitlines()[-15:],
        "phases": results,
        "passed": passed(results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}; passed: {out['passed']}")
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if out["passed"] and not out["server_log_tracebacks"] else 1


if __name__ == "__main__":
    sys.exit(main())
