"""Model-load benchmark: encrypted package -> resident state dict, versus plaintext safetensors.

Builds a ~1 GB model from a Qwen2-0.5B-shaped config (random bf16 weights, tied embeddings) and
packages it with `secure.package`. Each round then runs every side in a fresh subprocess, first
with a warm page cache (every file just read) and then a cold one (every file evicted with
``posix_fadvise(DONTNEED)`` after ``fsync``, checked with ``cachestat``), rotating the order of
the sides from round to round so that background load hits all of them alike:

* encrypted: read the manifest, open the sealed data key, ``decrypt_package`` (anonymous maps,
  batched prefaulting, direct reads of cold files), zero-copy tensor views, touch every page;
* encrypted_before: the same with the previous buffers and reads (zero-filled bytearrays,
  reads always through the page cache), for a before/after under the same load;
* plaintext: ``safetensors.torch.load_file`` (maps the file lazily, as ``from_pretrained`` does
  on CPU), then touch every page. The honest baseline: what a plaintext load really costs;
* plaintext_copy: ``load_file``, then every tensor cloned into private memory and the map
  dropped. Not what a plaintext load does, but the least that any loader pays once the weights
  must live in the process's own memory, which an encrypted load cannot avoid.

"Touch" reads one byte per 4 KiB page of every tensor (and its last byte), the same on all
sides, so no clock stops before every byte is resident. Each child reports its wall and CPU
seconds (user + system, all threads) for the timed part, its VmHWM (peak RSS) and its RSS
before the timed part; the parent reports medians, ratios of medians and the load average.

    python bench/bench_model_load.py [--rounds 5] [--cache both|warm|cold] [--workdir DIR]

Goal (issue): ratio of medians <= 1.10, peak RSS <= 1.3x the model size.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PAGE = 4096
SIDES = ("encrypted", "encrypted_before", "plaintext", "plaintext_copy")
CACHES = ("warm", "cold")
MODEL_NAME = "bench-qwen2-0_5b"
SEED_FILE = "issuer.seed"  # a throw-away bench issuer, kept so that --workdir can be reused
QWEN2_05B: dict[str, Any] = {
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-6,
}


# -- setup (parent) -------------------------------------------------------------------------------


def build_model(model_dir: Path, seed: int = 0) -> int:
    """Random bf16 weights for every tensor of the config (no init pass); returns weight bytes."""
    import safetensors.torch
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(**QWEN2_05B, dtype="bfloat16")
    with torch.device("meta"):
        shapes = {
            k: v.shape for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()
        }
    shapes.pop("lm_head.weight", None)  # tied: save_pretrained does not store it either
    gen = torch.Generator().manual_seed(seed)
    state = {
        name: torch.empty(shape, dtype=torch.bfloat16).normal_(0, 0.02, generator=gen)
        for name, shape in shapes.items()
    }
    model_dir.mkdir(parents=True)
    safetensors.torch.save_file(
        state, str(model_dir / "model.safetensors"), metadata={"format": "pt"}
    )
    config.save_pretrained(model_dir)
    return sum(t.numel() * t.element_size() for t in state.values())


def package(model_dir: Path, pkg_dir: Path) -> bytes:
    """Encrypt the model with `secure.package`; returns the issuer seed that opens its key."""
    from secure.issuer import IssuerKey
    from secure.package import package_model

    seed = os.urandom(32)
    issuer = IssuerKey(seed, "bench")
    package_model(model_dir, pkg_dir, name=MODEL_NAME, issuer=issuer.public(), now=int(time.time()))
    return seed


def prepare(workdir: Path) -> tuple[bytes, int, dict[str, float]]:
    """Build and package the model, or reuse a workdir that a previous run prepared."""
    seed_path = workdir / SEED_FILE
    if seed_path.exists():
        weights = _weight_bytes(workdir / "model" / "model.safetensors")
        return bytes.fromhex(seed_path.read_text()), weights, {"reused": 1.0}
    t0 = time.perf_counter()
    weights = build_model(workdir / "model")
    t1 = time.perf_counter()
    seed = package(workdir / "model", workdir / "package")
    seed_path.write_text(seed.hex())
    return seed, weights, {"build": t1 - t0, "package": time.perf_counter() - t1}


def _weight_bytes(path: Path) -> int:
    with path.open("rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
    return sum(
        v["data_offsets"][1] - v["data_offsets"][0]
        for k, v in header.items()
        if k != "__metadata__"
    )


def make_warm(paths: list[Path]) -> None:
    for path in paths:
        with path.open("rb") as fh:
            while fh.read(8 << 20):
                pass


def make_cold(paths: list[Path]) -> None:
    """Evict these files' clean pages (no root needed), so a read really hits the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class _Range(ctypes.Structure):
    _fields_ = (("off", ctypes.c_uint64), ("len", ctypes.c_uint64))


class _Stat(ctypes.Structure):
    _fields_ = tuple((name, ctypes.c_uint64) for name in ("cache", "dirty", "wb", "ev", "rev"))


def cached_bytes(paths: list[Path]) -> int | None:
    """Bytes of these files in the page cache (Linux >= 6.5 ``cachestat``), None if unknown."""
    total = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            span, stat = _Range(0, 0), _Stat()
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.syscall(451, fd, ctypes.byref(span), ctypes.byref(stat), 0) != 0:
                return None
            total += stat.cache * PAGE
        finally:
            os.close(fd)
    return total


# -- children -------------------------------------------------------------------------------------


def touch(state: dict[str, Any]) -> int:
    """Read one byte of every page of every tensor (and its last byte); returns a checksum."""
    import torch

    total = 0
    for tensor in state.values():
        raw = tensor.reshape(-1).view(torch.uint8)
        if raw.numel():
            total += int(raw[::PAGE].sum()) + int(raw[-1])
    return total


def _decrypt_before(pkg: Path, manifest: Any, data_key: bytes, threads: int) -> dict[str, Any]:
    """The previous ``decrypt_package``: zero-filled bytearrays, reads always buffered."""
    from secure import _membuf
    from secure.container import Container
    from secure.package import verify_manifest_mac

    _membuf.bypass_cache_if_cold = lambda fd, size: False
    verify_manifest_mac(pkg, manifest, data_key)
    out: dict[str, Any] = {}
    for entry in manifest.files:
        buf = bytearray(entry.size)
        out[entry.name] = buf
        Container.open(pkg / entry.container).decrypt_into(
            data_key,
            buf,
            expect_object_id=manifest.package_id,
            expect_name=entry.name,
            threads=threads if entry.size > 8 << 20 else 1,
        )
    return out


def child_encrypted(workdir: Path, seed: bytes, threads: int, before: bool) -> dict[str, Any]:
    from appliance.llm.safetensors_mem import state_dict_from_files
    from secure.issuer import IssuerKey
    from secure.package import decrypt_package, read_manifest, unseal_package_key

    pkg = workdir / "package"
    issuer = IssuerKey(seed, "bench")
    clock = _Clock()
    manifest = read_manifest(pkg)
    _manifest, data_key = unseal_package_key(pkg, issuer)
    decrypt = _decrypt_before if before else decrypt_package
    files: Any = decrypt(pkg, manifest, data_key, threads=threads)
    decrypted = clock.wall()
    checksum = touch(state_dict_from_files(files))
    return {**clock.read(), "decrypt_seconds": decrypted, "checksum": checksum}


def child_plaintext(workdir: Path, copy: bool) -> dict[str, Any]:
    import safetensors.torch

    clock = _Clock()
    state = safetensors.torch.load_file(workdir / "model" / "model.safetensors")
    if copy:
        state = {name: tensor.clone() for name, tensor in state.items()}  # drops the map
    checksum = touch(state)
    return {**clock.read(), "checksum": checksum}


class _Clock:
    """Wall and CPU (user + system, every thread) seconds since creation, plus RSS then."""

    def __init__(self) -> None:
        self.baseline_rss = _rss("VmRSS")
        self.loadavg = os.getloadavg()[0]
        self._wall = time.perf_counter()
        self._cpu = _cpu()

    def wall(self) -> float:
        return time.perf_counter() - self._wall

    def read(self) -> dict[str, Any]:
        return {
            "seconds": self.wall(),
            "cpu_seconds": _cpu() - self._cpu,
            "baseline_rss": self.baseline_rss,
            "loadavg_1min": self.loadavg,
        }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, in bytes.

    Not ``ru_maxrss``: Linux carries it over from the parent across fork and exec, so a child of a
    parent that once held the model would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_child(args: argparse.Namespace) -> None:
    import torch  # noqa: F401  - imported before the clock on every side

    workdir = Path(args.workdir)
    if args.child.startswith("plaintext"):
        result = child_plaintext(workdir, copy=args.child == "plaintext_copy")
    else:
        seed = bytes.fromhex(sys.stdin.readline().strip())
        result = child_encrypted(workdir, seed, args.threads, args.child == "encrypted_before")
    result["peak_rss"] = _rss("VmHWM")
    print(json.dumps(result))


# -- parent ---------------------------------------------------------------------------------------


def _spawn(side: str, workdir: Path, seed: bytes, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", side, "--workdir", str(workdir)]
    cmd += ["--threads", str(threads)]
    proc = subprocess.run(
        cmd, input=seed.hex() + "\n", capture_output=True, text=True, check=False, timeout=900
    )
    if proc.returncode != 0:
        raise SystemExit(f"{side} child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _environment(workdir: Path) -> dict[str, Any]:
    import cryptography
    import safetensors
    import torch
    import transformers

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "transparent_hugepage": thp.read_text().strip() if thp.exists() else "?",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "cryptography": cryptography.__version__,
        "workdir_filesystem": _filesystem(workdir),
    }


def _filesystem(path: Path) -> str:
    best = ("", "?")
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if (
            len(parts) > 2
            and str(path.resolve()).startswith(parts[1])
            and len(parts[1]) > len(best[0])
        ):
            best = (parts[1], parts[2])
    return best[1]


def _side_stats(runs: list[dict[str, Any]], model_bytes: int) -> dict[str, Any]:
    return {
        "seconds": [round(r["seconds"], 4) for r in runs],
        "median_s": statistics.median(r["seconds"] for r in runs),
        "median_cpu_s": statistics.median(r["cpu_seconds"] for r in runs),
        "peak_rss_multiple": max(r["peak_rss"] for r in runs) / model_bytes,
        "peak_rss_above_baseline_multiple": max(r["peak_rss"] - r["baseline_rss"] for r in runs)
        / model_bytes,
    }


def _cache_summary(rounds: list[dict[str, Any]], cache: str, model_bytes: int) -> dict[str, Any]:
    runs = [r[cache] for r in rounds if cache in r]
    stats = {s: _side_stats([r[s] for r in runs], model_bytes) for s in SIDES if s in runs[0]}

    def ratio(a: str, b: str, key: str = "median_s") -> float | None:
        return stats[a][key] / stats[b][key] if a in stats and b in stats else None

    loads = [r[s]["loadavg_1min"] for r in runs for s in stats]
    return {
        "ratio_encrypted_over_plaintext": ratio("encrypted", "plaintext"),
        "ratio_encrypted_over_plaintext_copy": ratio("encrypted", "plaintext_copy"),
        "ratio_encrypted_before_over_plaintext": ratio("encrypted_before", "plaintext"),
        "speedup_encrypted_over_before": ratio("encrypted_before", "encrypted"),
        "cpu_ratio_encrypted_over_plaintext": ratio("encrypted", "plaintext", "median_cpu_s"),
        "cpu_ratio_encrypted_over_plaintext_copy": ratio(
            "encrypted", "plaintext_copy", "median_cpu_s"
        ),
        "page_cache_bytes_before_children": sorted(
            {r[s]["cached_bytes"] for r in runs for s in stats}, key=str
        ),
        "loadavg_1min_range": [min(loads), max(loads)],
        "sides": stats,
    }


def _summary(rounds: list[dict[str, Any]], model_bytes: int) -> dict[str, Any]:
    caches = [c for c in CACHES if c in rounds[0]]
    checksums = {r[c][s]["checksum"] for r in rounds for c in caches for s in SIDES if s in r[c]}
    return {
        "goal_ratio": 1.10,
        "goal_peak_rss_multiple": 1.3,
        **{cache: _cache_summary(rounds, cache, model_bytes) for cache in caches},
        "checksums_equal": len(checksums) == 1,
        "rss_note": "peak = the child's VmHWM, including the interpreter and torch (baseline) "
        "and, on the plaintext side, the file pages it maps",
    }


def _round(i: int, args: argparse.Namespace, workdir: Path, seed: bytes) -> dict[str, Any]:
    files = [p for d in ("model", "package") for p in (workdir / d).rglob("*") if p.is_file()]
    shift = i % len(SIDES)
    order = list(SIDES[shift:] + SIDES[:shift])
    result: dict[str, Any] = {}
    for cache in CACHES if args.cache == "both" else (args.cache,):
        runs: dict[str, Any] = {"order": order}
        for side in order:
            (make_warm if cache == "warm" else make_cold)(files)
            cached = cached_bytes(files)
            runs[side] = {**_spawn(side, workdir, seed, args.threads), "cached_bytes": cached}
        result[cache] = runs
    return result


def run_bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    load_before = os.getloadavg()
    seed, model_bytes, setup = prepare(workdir)
    rounds = []
    for i in range(args.rounds):
        rounds.append(_round(i, args, workdir, seed))
        print(f"round {i + 1}: {json.dumps(rounds[-1])}", file=sys.stderr)
    return {
        "benchmark": "model_load",
        "model": {"config": QWEN2_05B, "dtype": "bfloat16", "weight_bytes": model_bytes},
        "setup_seconds": setup,
        "summary": _summary(rounds, model_bytes),
        "rounds": rounds,
        "settings": {"rounds": args.rounds, "threads": args.threads, "cache": args.cache},
        "method": __doc__.split("\n\n")[1].strip() if __doc__ else "",
        "environment": {
            **_environment(workdir),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
    }


def run_in_workdir(
    args: argparse.Namespace,
    prefix: str,
    run: Callable[[argparse.Namespace, Path], dict[str, Any]],
) -> dict[str, Any]:
    """``run(args, workdir)`` in ``--workdir`` (kept for reuse) or in a scratch directory that
    is removed afterwards."""
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workdir", help="scratch dir, reused if prepared (default: a temp dir)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "model_load.json"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", choices=("both", *CACHES), default="both")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return
    report = run_in_workdir(args, "bench-load-", run_bench)
    write_report(Path(args.out), report)
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
