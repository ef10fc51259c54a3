"""The bundled model (SmolLM2-135M-Instruct GGUF) for `bench_serve.py --model smollm2`.

The plaintext side needs the model as a Hugging Face directory: it is converted once here by the
product's own GGUF import (`appliance.llm.gguf_import`, in memory) and its files written to
``workdir/model`` (a benchmark scratch directory; the product never writes them). The encrypted
side is a package of exactly those files, so both sides load the same bytes, the same dtype and
the same tokenizer; only decryption and the loader differ, as for the Qwen2-shaped model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

MODEL_NAME = "bench-smollm2"


def write_model_dir(model_dir: Path) -> dict[str, Any]:
    """The bundled GGUF imported (default dtype) and written as a model directory."""
    from appliance.llm.bundled import bundled_gguf
    from appliance.llm.gguf_import import import_gguf

    source = bundled_gguf()
    started = time.perf_counter()
    imported = import_gguf(source)
    import_s = time.perf_counter() - started
    model_dir.mkdir(parents=True)
    try:
        for name, buf in imported.files.items():
            (model_dir / name).write_bytes(buf)
        weights = len(imported.files["model.safetensors"])
    finally:
        imported.wipe()
    return {
        "gguf": source.name,
        "gguf_bytes": source.stat().st_size,
        "gguf_sha256": imported.source.sha256,
        "dtype": imported.dtype,
        "parameters": imported.parameters,
        "weight_bytes": weights,
        "gguf_import_s": import_s,
    }
