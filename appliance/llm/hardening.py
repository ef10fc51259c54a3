"""Process hardening for a process that holds keys or decrypted weights (D3, T7).

Core dumps would write the plaintext weights and keys in RAM to disk, and a dumpable process can be
read by any process of the same user through ``/proc/PID/mem`` or ptrace. Both are switched off
before any secret is loaded. ``offline_env`` makes the Hugging Face libraries refuse network access
(the appliance runs offline and must never download anything at run time); it has to run before
``transformers`` / ``huggingface_hub`` are imported because they read these variables at import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
from collections.abc import MutableMapping

from appliance.errors import ApplianceError

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3

#: Variables that keep Hugging Face libraries off the network and quiet.
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def _libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise ApplianceError(
            f"Cannot load the C library to harden this process ({exc}).",
            code="HARDENING",
            hint="Run the appliance on Linux with glibc or musl.",
        ) from None


def _prctl(option: int, arg: int = 0) -> int:
    libc = _libc()
    libc.prctl.restype = ctypes.c_int
    result = int(libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), 0, 0, 0))
    if result < 0:
        errno = ctypes.get_errno()
        raise ApplianceError(
            f"prctl({option}) failed: {os.strerror(errno)}.",
            code="HARDENING",
            hint="Check that no seccomp profile blocks prctl for the appliance.",
        )
    return result


def disable_core_dumps() -> None:
    """No core file, no ptrace attach by same-user processes, for the rest of this process."""
    _prctl(PR_SET_DUMPABLE, 0)
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError) as exc:
        raise ApplianceError(
            f"Cannot set the core-file size limit to 0 ({exc}).",
            code="HARDENING",
            hint="Start the appliance from a shell or unit that allows lowering RLIMIT_CORE.",
        ) from None


def is_dumpable() -> bool:
    """Whether this process could still write a core dump or be ptraced (for status output)."""
    return _prctl(PR_GET_DUMPABLE) != 0


def offline_env(environ: MutableMapping[str, str] | None = None) -> None:
    """Force Hugging Face offline mode in ``environ`` (default: this process's environment)."""
    target = os.environ if environ is None else environ
    target.update(OFFLINE_ENV)
