"""LoRA adapters: serialised to bytes for the adapter package, merged into a base model in memory.

An adapter package holds two files: ``adapter.safetensors`` (for every adapted linear layer
``<module>.lora_A.weight`` of shape ``[r, in]`` and ``<module>.lora_B.weight`` of ``[out, r]``)
and ``adapter_config.json`` (``format``, ``r``, ``lora_alpha``, the module names). At load the
base model is built from its own decrypted buffers (:func:`appliance.llm.loader.load_causal_lm`)
and every adapted weight is updated in place, ``W += (lora_alpha / r) · B @ A`` (what
``peft``'s ``merge_and_unload`` computes for a plain LoRA layer), so the served model is an
ordinary model with no adapter code on the request path, and the merged weights live only in
the base's private decrypted buffers: never a merged model, an adapter or a plaintext file on
disk. The adapter's plaintext buffers are zeroed once merged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ModelLoadError
from .loader import LoadedModel, LoadOptions, load_causal_lm, zero_buffer
from .safetensors_mem import parse_json, tensors_from_buffer

WEIGHTS = "adapter.safetensors"
CONFIG = "adapter_config.json"
FORMAT = "kapp-lora/1"
_A, _B = ".lora_A.weight", ".lora_B.weight"


def adapter_files(
    tensors: Mapping[str, torch.Tensor], *, rank: int, alpha: float
) -> dict[str, bytes]:
    """The two files of an adapter package, as bytes in memory (never a file)."""
    from safetensors.torch import save

    modules = sorted(k[: -len(_A)] for k in tensors if k.endswith(_A))
    for module in modules:
        if module + _B not in tensors:
            raise ValueError(f"{module} has lora_A without lora_B")
    weights = save({k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()})
    config = {"format": FORMAT, "r": rank, "lora_alpha": alpha, "modules": modules}
    return {WEIGHTS: weights, CONFIG: json.dumps(config, sort_keys=True).encode()}


def _config(files: Mapping[str, Any]) -> dict[str, Any]:
    if CONFIG not in files or WEIGHTS not in files:
        raise ModelLoadError(
            "The adapter package lacks its weights or its configuration.",
            hint="Train the adapter again.",
        )
    config = parse_json(files[CONFIG], CONFIG)
    ok = (
        isinstance(config, dict)
        and config.get("format") == FORMAT
        and isinstance(config.get("r"), int)
        and config["r"] > 0
        and isinstance(config.get("lora_alpha"), int | float)
        and isinstance(config.get("modules"), list)
    )
    if not ok:
        raise ModelLoadError(f"{CONFIG} is not a LoRA configuration of this appliance.")
    return config


def merge_lora(model: Any, files: Mapping[str, Any]) -> int:
    """Add the adapter in ``files`` into ``model``'s weights in place; returns layers merged."""
    config = _config(files)
    tensors = tensors_from_buffer(files[WEIGHTS])
    scaling = float(config["lora_alpha"]) / int(config["r"])
    modules = dict(model.named_modules())
    merged = 0
    with torch.no_grad():
        for name in config["modules"]:
            layer = modules.get(name)
            a, b = tensors.get(name + _A), tensors.get(name + _B)
            weight = getattr(layer, "weight", None)
            if weight is None or a is None or b is None:
                raise ModelLoadError(
                    f"The adapter does not fit its base model (no layer {name!r}).",
                    hint="The adapter belongs to another base model; train it again.",
                )
            if (b.shape[0], a.shape[1]) != tuple(weight.shape) or a.shape[0] != b.shape[1]:
                raise ModelLoadError(f"The adapter's shapes do not fit layer {name}.")
            delta = (b.to(torch.float32) @ a.to(torch.float32)) * scaling
            weight.add_(delta.to(weight.dtype))
            merged += 1
    return merged


def load_with_adapter(
    name: str,
    base_files: Mapping[str, bytearray],
    adapter: Mapping[str, bytearray],
    *,
    options: LoadOptions,
) -> LoadedModel:
    """The base model built from its buffers with the adapter merged; adapter buffers zeroed.

    Takes ownership of both sets of buffers, like :func:`load_causal_lm`: on failure every
    buffer is zeroed before the error propagates.
    """
    try:
        loaded = load_causal_lm(name, base_files, options=options)
        try:
            merge_lora(loaded.model, adapter)
        except BaseException:
            loaded.wipe()
            raise
        return loaded
    finally:
        for buf in adapter.values():
            zero_buffer(buf)


def load_served(
    name: str,
    files: Mapping[str, bytearray],
    adapter: Mapping[str, bytearray],
    *,
    options: LoadOptions,
) -> LoadedModel:
    """A model as served: with its adapter merged when ``adapter`` holds one."""
    if adapter:
        return load_with_adapter(name, files, adapter, options=options)
    return load_causal_lm(name, files, options=options)
