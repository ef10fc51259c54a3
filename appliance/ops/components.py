"""The component level: CPU, memory, the disks of each data directory, GPUs and processes.

GPUs are read through NVML (`nvidia-ml-py`, imported lazily) only when it is installed and a
GPU exists; otherwise the GPU entry says why there is none.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import psutil

from .runtime_state import Heartbeat

MAX_FILES_COUNTED = 200_000  # a directory's size stops being summed after this many files


def data_dirs(settings: Any) -> dict[str, Path]:
    """The directories the appliance writes: home, drop folder, Milvus Lite files, vault."""
    dirs = {"home": settings.home, "drop": settings.drop_dir, "vault": settings.home / "vault"}
    uri = settings.milvus_uri
    if "://" not in uri:
        dirs["milvus"] = Path(uri).parent
    return dirs


def component_level(
    settings: Any, beats: dict[str, Heartbeat], *, cpu_interval_s: float = 0.1
) -> dict[str, Any]:
    vm = psutil.virtual_memory()
    return {
        "cpu": {
            "percent": psutil.cpu_percent(interval=cpu_interval_s),
            "count": os.cpu_count(),
            "load_avg": [round(x, 2) for x in os.getloadavg()],
        },
        "memory": {"total": vm.total, "available": vm.available, "percent": vm.percent},
        "disks": [disk_entry(name, path) for name, path in data_dirs(settings).items()],
        "gpu": gpu_status(),
        "processes": [process_entry(b) for b in beats.values()],
    }


def disk_entry(name: str, path: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "path": str(path), "exists": path.is_dir()}
    if not entry["exists"]:
        return entry
    usage = psutil.disk_usage(str(path))
    entry.update(
        bytes=dir_bytes(path),
        fs_total=usage.total,
        fs_free=usage.free,
        fs_percent=usage.percent,
    )
    return entry


def dir_bytes(path: Path, *, max_files: int = MAX_FILES_COUNTED) -> int:
    """Bytes of the regular files below ``path`` (links not followed)."""
    total = seen = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
            seen += 1
            if seen >= max_files:
                return total
    return total


def process_entry(beat: Heartbeat) -> dict[str, Any]:
    entry: dict[str, Any] = {"role": beat.role, "running": beat.alive, "pid": beat.pid}
    if not beat.alive or beat.pid is None:
        entry["reason"] = beat.reason
        return entry
    try:
        proc = psutil.Process(beat.pid)
        with proc.oneshot():
            entry.update(rss=proc.memory_info().rss, threads=proc.num_threads())
    except (psutil.NoSuchProcess, psutil.AccessDenied) as exc:
        entry["reason"] = type(exc).__name__
    return entry


def gpu_status() -> dict[str, Any]:
    """NVML devices (memory, utilisation, temperature), or why there are none."""
    try:
        import pynvml
    except ImportError:
        return {"available": False, "reason": "none (NVML library nvidia-ml-py not installed)"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"available": False, "reason": f"none (NVML: {exc})"}
    try:
        count = pynvml.nvmlDeviceGetCount()
        devices = [_gpu_device(pynvml, i) for i in range(count)]
    except pynvml.NVMLError as exc:
        return {"available": False, "reason": f"NVML error: {exc}"}
    finally:
        pynvml.nvmlShutdown()
    if not devices:
        return {"available": False, "reason": "none (no GPU found)"}
    return {"available": True, "devices": devices}


def _gpu_device(nvml: Any, index: int) -> dict[str, Any]:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    mem = nvml.nvmlDeviceGetMemoryInfo(handle)
    util = nvml.nvmlDeviceGetUtilizationRates(handle)
    name = nvml.nvmlDeviceGetName(handle)
    return {
        "index": index,
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "memory_total": int(mem.total),
        "memory_used": int(mem.used),
        "utilisation_percent": int(util.gpu),
        "temperature_c": int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
    }
