"""Model-load benchmark: encrypted package -> resident state dict, versus plaintext safetensors.

Builds a ~1 GB model from a Qwen2-0.5B-shaped config (random bf16 weights, tied embeddings),
packages it with `secure.package`, then alternates N rounds, each side in a fresh subprocess:

* encrypted: read the installed package's manifest, open its sealed data key, decrypt every
  container straight into preallocated bytearrays (`decrypt_package`), build the state dict as
  zero-copy views (`appliance.llm.safetensors_mem`), touch every page;
* plaintext: `safetensors.torch.load_file` (which maps the file lazily and returns in
  milliseconds), then touch every page, so both clocks stop only once every byte is resident.

"Touch" reads one byte per 4 KiB page of every tensor (and its last byte): the smallest work that
makes every page resident, the same on both sides. Peak RSS is each child's own ``ru_maxrss``.

    python bench/bench_model_load.py [--rounds 3] [--cache warm|cold] [--workdir DIR] [--out F]

Goal (issue): ratio of medians <= 1.10, peak RSS <= 1.3x the model size.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PAGE = 4096
SIDES = ("encrypted", "plaintext", "encrypted_mmap")
MODEL_NAME = "bench-qwen2-0_5b"
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


def drop_page_cache(paths: list[Path]) -> None:
    """Evict these files' clean pages (no root needed), so a read really hits the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


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


def child_encrypted(workdir: Path, seed: bytes, threads: int) -> dict[str, Any]:
    from appliance.llm.safetensors_mem import state_dict_from_files
    from secure.issuer import IssuerKey
    from secure.package import decrypt_package, read_manifest, unseal_package_key

    pkg = workdir / "package"
    issuer = IssuerKey(seed, "bench")
    baseline = _rss("VmRSS")
    start = time.perf_counter()
    manifest = read_manifest(pkg)
    _manifest, data_key = unseal_package_key(pkg, issuer)
    files = decrypt_package(pkg, manifest, data_key, threads=threads)
    state = state_dict_from_files(files)
    checksum = touch(state)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "checksum": checksum, "baseline_rss": baseline}


def _decrypt_to_mmap(pkg: Path, manifest: Any, data_key: bytes, threads: int) -> dict[str, Any]:
    """What-if: like `decrypt_package`, but into MAP_POPULATE anonymous maps, not bytearrays.

    ``bytearray(n)`` memsets its n bytes (a full extra write pass, page fault by page fault);
    MAP_POPULATE faults the whole range in one kernel call and needs no memset.
    """
    from secure.container import Container
    from secure.package import verify_manifest_mac

    verify_manifest_mac(pkg, manifest, data_key)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
    out: dict[str, Any] = {}
    for entry in manifest.files:
        buf: Any = mmap.mmap(-1, entry.size, flags=flags) if entry.size else bytearray()
        out[entry.name] = buf
        Container.open(pkg / entry.container).decrypt_into(
            data_key,
            buf,
            expect_object_id=manifest.package_id,
            expect_name=entry.name,
            threads=threads if entry.size > 8 << 20 else 1,
        )
    return out


def child_encrypted_mmap(workdir: Path, seed: bytes, threads: int) -> dict[str, Any]:
    from appliance.llm.safetensors_mem import state_dict_from_files
    from secure.issuer import IssuerKey
    from secure.package import read_manifest, unseal_package_key

    pkg = workdir / "package"
    issuer = IssuerKey(seed, "bench")
    baseline = _rss("VmRSS")
    start = time.perf_counter()
    manifest = read_manifest(pkg)
    _manifest, data_key = unseal_package_key(pkg, issuer)
    files = _decrypt_to_mmap(pkg, manifest, data_key, threads)
    state = state_dict_from_files(files)
    checksum = touch(state)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "checksum": checksum, "baseline_rss": baseline}


def child_plaintext(workdir: Path) -> dict[str, Any]:
    import safetensors.torch

    baseline = _rss("VmRSS")
    start = time.perf_counter()
    state = safetensors.torch.load_file(workdir / "model" / "model.safetensors")
    checksum = touch(state)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "checksum": checksum, "baseline_rss": baseline}


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
    import torch  # noqa: F401  - imported before the baseline so both sides pay it outside

    workdir = Path(args.workdir)
    if args.child == "plaintext":
        result = child_plaintext(workdir)
    else:
        seed = bytes.fromhex(sys.stdin.readline().strip())
        child = child_encrypted if args.child == "encrypted" else child_encrypted_mmap
        result = child(workdir, seed, args.threads)
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
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": mem,
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


def _side_stats(rounds: list[dict[str, Any]], side: str, model_bytes: int) -> dict[str, Any]:
    runs = [r[side] for r in rounds]
    return {
        "seconds": [r["seconds"] for r in runs],
        "median_s": statistics.median(r["seconds"] for r in runs),
        "peak_rss_multiple": max(r["peak_rss"] for r in runs) / model_bytes,
        "peak_rss_above_baseline_multiple": max(r["peak_rss"] - r["baseline_rss"] for r in runs)
        / model_bytes,
    }


def _summary(rounds: list[dict[str, Any]], model_bytes: int, cache: str) -> dict[str, Any]:
    sides = [s for s in SIDES if s in rounds[0]]
    stats = {side: _side_stats(rounds, side, model_bytes) for side in sides}
    plain = stats["plaintext"]["median_s"]
    return {
        "ratio_median_encrypted_over_plaintext": stats["encrypted"]["median_s"] / plain,
        "goal_ratio": 1.10,
        "peak_rss_multiple_encrypted": stats["encrypted"]["peak_rss_multiple"],
        "goal_peak_rss_multiple": 1.3,
        **(
            {
                "ratio_median_encrypted_mmap_over_plaintext": stats["encrypted_mmap"]["median_s"]
                / plain
            }
            if "encrypted_mmap" in stats
            else {}
        ),
        "sides": stats,
        "checksums_equal": len({r[s]["checksum"] for r in rounds for s in sides}) == 1,
        "page_cache": (
            "warm for both sides: the files were just written and are re-read every round"
            if cache == "warm"
            else "cold for both sides: posix_fadvise(DONTNEED) on every file before every child"
        ),
        "rss_note": "peak = the child's VmHWM, including the interpreter and torch (baseline)",
    }


def run_bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    model_bytes = build_model(workdir / "model")
    t1 = time.perf_counter()
    seed = package(workdir / "model", workdir / "package")
    t2 = time.perf_counter()
    files = [p for d in ("model", "package") for p in (workdir / d).rglob("*") if p.is_file()]
    rounds = []
    for i in range(args.rounds):
        sides = SIDES if args.mmap_variant else SIDES[:2]
        sides = sides if i % 2 == 0 else sides[::-1]
        result: dict[str, Any] = {"order": list(sides)}
        for side in sides:
            if args.cache == "cold":
                drop_page_cache(files)
            result[side] = _spawn(side, workdir, seed, args.threads)
        rounds.append(result)
        print(f"round {i + 1}: {json.dumps(result)}", file=sys.stderr)
    return {
        "benchmark": "model_load",
        "model": {"config": QWEN2_05B, "dtype": "bfloat16", "weight_bytes": model_bytes},
        "setup_seconds": {"build": t1 - t0, "package": t2 - t1},
        "rounds": rounds,
        "summary": _summary(rounds, model_bytes, args.cache),
        "settings": {"rounds": args.rounds, "threads": args.threads, "cache": args.cache},
        "method": __doc__.split("\n\n")[1].strip() if __doc__ else "",
        "environment": {
            **_environment(workdir),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workdir", help="scratch dir (default: a temp dir deleted afterwards)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "model_load.json"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", choices=("warm", "cold"), default="warm")
    parser.add_argument(
        "--mmap-variant",
        action="store_true",
        help="also time a what-if encrypted side that decrypts into MAP_POPULATE maps",
    )
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-load-"))
    try:
        report = run_bench(args, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
