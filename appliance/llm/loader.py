"""Build a Hugging Face causal LM from decrypted in-memory files, never touching the disk.

``from_pretrained`` wants a directory (plaintext on disk, T7) and copies the weights at least once.
Here the model is built on the ``meta`` device (no memory), and the state dict parsed from the
decrypted safetensors buffers is *assigned* into it, so on CPU, with the stored dtype, every
parameter is a view of the decrypted buffer: one plaintext copy in total. A dtype conversion or a
GPU copies once, then zeroes the plaintext buffer. A memory budget that is too small raises
instead of offloading to disk (D2): nothing here passes ``device_map`` or ``offload_folder``.

This is the only module that imports ``transformers``; it does so lazily, after forcing offline
mode, so that importing `appliance` stays cheap and nothing can reach a model hub. Other modules
that need it (the GGUF import, `appliance.llm.gguf_import`) get it from :func:`import_transformers`.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch

from appliance.errors import ModelLoadError
from appliance.llm.hardening import offline_env
from appliance.llm.safetensors_mem import INDEX_NAME, parse_json, state_dict_from_files

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
TOKENIZER_NAME = "tokenizer.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SPECIAL_TOKENS_NAME = "special_tokens_map.json"
CHAT_TEMPLATE_NAME = "chat_template.jinja"

DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
}
#: Keys in tokenizer_config.json that name files or code; we never open files or run code.
_TOKENIZER_KEYS_DROPPED = ("tokenizer_class", "init_inputs", "auto_map", "name_or_path")
_TOKENIZER_KEYS_DROPPED_WITH_JSON = ("add_bos_token", "add_eos_token")
_REIMPORT = "Re-import the model from the customer's original directory."


@dataclass(frozen=True)
class LoadOptions:
    """How to place the weights. ``dtype`` None keeps the stored dtype (zero-copy on CPU)."""

    device: str = "cpu"
    dtype: str | None = None
    max_memory_bytes: int | None = None


@dataclass
class LoadedModel:
    """A loaded model and the plaintext buffers its weights still alias (wiped on expiry)."""

    name: str
    model: Any
    tokenizer: Any
    buffers: list[bytearray] = field(default_factory=list)

    def wipe(self) -> None:
        """Zero every weight and plaintext buffer, then drop them (policy expiry, unload)."""
        if self.model is not None:
            with torch.no_grad():
                for tensor in itertools.chain(self.model.parameters(), self.model.buffers()):
                    tensor.zero_()
        for buf in self.buffers:
            zero_buffer(buf)
        self.model = None
        self.tokenizer = None
        self.buffers = []
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def zero_buffer(buf: bytearray) -> None:
    """Overwrite ``buf`` in place without allocating (works while tensors still view it)."""
    if len(buf):
        ctypes.memset((ctypes.c_char * len(buf)).from_buffer(buf), 0, len(buf))


def load_causal_lm(
    name: str, files: Mapping[str, bytearray], *, options: LoadOptions
) -> LoadedModel:
    """Build model and tokenizer from the in-memory files of one model directory.

    The loader takes ownership of ``files``: on success the returned model aliases (or has
    already zeroed) them; on failure every buffer is zeroed before the error propagates, so a
    refused load leaves no plaintext behind. Callers should drop their own references.
    """
    try:
        return _load(name, files, options)
    except BaseException:
        for buf in files.values():
            with contextlib.suppress(TypeError):  # a read-only buffer cannot hold our copy
                zero_buffer(buf)
        raise


def _load(name: str, files: Mapping[str, bytearray], options: LoadOptions) -> LoadedModel:
    device, dtype = _resolve(options)
    config_dict = _config_dict(files)
    weight_names = _weight_file_names(files)
    state = state_dict_from_files({k: files[k] for k in weight_names})
    _check_budget(name, state, dtype, options.max_memory_bytes)
    transformers = import_transformers()
    state, copied = _place(state, dtype, device)
    if copied:
        for weight_name in weight_names:
            zero_buffer(files[weight_name])
    model = _build_model(transformers, config_dict, state, device)
    model.generation_config = _generation_config(transformers, files, model.config)
    tokenizer = _build_tokenizer(transformers, name, files)
    kept = [buf for key, buf in files.items() if not (copied and key in weight_names)]
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, buffers=kept)


def _resolve(options: LoadOptions) -> tuple[torch.device, torch.dtype | None]:
    if options.dtype is not None and options.dtype not in DTYPES:
        raise ModelLoadError(
            f"Unknown model dtype {options.dtype!r}.", hint=f"Use one of {sorted(DTYPES)}."
        )
    try:
        device = torch.device(options.device)
    except (RuntimeError, ValueError):
        raise ModelLoadError(
            f"Unknown device {options.device!r}.", hint="Use 'cpu' or 'cuda:N'."
        ) from None
    if device.type not in ("cpu", "cuda") or (
        device.type == "cuda" and not torch.cuda.is_available()
    ):
        raise ModelLoadError(
            f"Device {options.device!r} is not available on this host.",
            hint="Set the model device to 'cpu' or install the GPU driver.",
        )
    return device, None if options.dtype is None else DTYPES[options.dtype]


def _config_dict(files: Mapping[str, bytearray]) -> dict[str, Any]:
    if CONFIG_NAME not in files:
        raise ModelLoadError(f"The model has no {CONFIG_NAME}.", hint=_REIMPORT)
    config = parse_json(files[CONFIG_NAME], CONFIG_NAME)
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelLoadError(f"{CONFIG_NAME} does not name a model_type.", hint=_REIMPORT)
    return config


def _weight_file_names(files: Mapping[str, bytearray]) -> list[str]:
    return [k for k in files if k.endswith(".safetensors") or k == INDEX_NAME]


def _target_dtype(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """Only floating-point tensors are converted, as ``from_pretrained`` does."""
    return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype


def _check_budget(
    name: str, state: Mapping[str, torch.Tensor], dtype: torch.dtype | None, budget: int | None
) -> None:
    """D2: refuse a model that does not fit; offloading to disk would leak plaintext (T7)."""
    needed = sum(t.numel() * _target_dtype(t, dtype).itemsize for t in state.values())
    if budget is not None and needed > budget:
        raise ModelLoadError(
            f"Model {name} needs {needed / 2**30:.2f} GiB for its weights but the memory "
            f"budget is {budget / 2**30:.2f} GiB; weights are never offloaded to disk.",
            hint="Raise the model memory budget, choose a smaller dtype or a smaller model.",
        )


def _place(
    state: dict[str, torch.Tensor], dtype: torch.dtype | None, device: torch.device
) -> tuple[dict[str, torch.Tensor], bool]:
    """Views as they are, or one copy of *every* tensor so the plaintext buffers can be zeroed."""
    needs_copy = device.type != "cpu" or any(
        _target_dtype(t, dtype) != t.dtype for t in state.values()
    )
    if not needs_copy:
        return state, False
    placed = {
        key: t.to(device=device, dtype=_target_dtype(t, dtype), copy=True)
        for key, t in state.items()
    }
    return placed, True


def import_transformers() -> ModuleType:
    """``transformers``, imported lazily in offline mode (the one place that imports it)."""
    offline_env()
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ModelLoadError(
            f"The transformers library is not installed ({exc}).",
            hint="Reinstall the appliance with its locked requirements.",
        ) from None
    transformers.utils.logging.disable_progress_bar()  # no per-tensor bars in a server's output
    return transformers


def gguf_architectures() -> list[str]:
    """Architectures the installed transformers converts from GGUF (for the GGUF import)."""
    import_transformers()
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(GGUF_SUPPORTED_ARCHITECTURES)


def _build_config(transformers: ModuleType, config_dict: dict[str, Any]) -> Any:
    """The config class for a built-in ``model_type``; remote code is never executed."""
    model_type = config_dict["model_type"]
    if model_type not in transformers.CONFIG_MAPPING:
        raise ModelLoadError(
            f"Model type {model_type!r} is not supported by the installed transformers.",
            hint="Only architectures built into transformers can be served (no remote code).",
        )
    try:
        return transformers.CONFIG_MAPPING[model_type].from_dict(dict(config_dict))
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{CONFIG_NAME} is invalid: {exc}", hint=_REIMPORT) from None


def _build_model(
    transformers: ModuleType,
    config_dict: dict[str, Any],
    state: dict[str, torch.Tensor],
    device: torch.device,
) -> Any:
    config = _build_config(transformers, config_dict)
    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    try:
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(
                config, dtype=floats[0] if floats else None
            )
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(f"Cannot build a causal LM from {CONFIG_NAME}: {exc}") from None
    _assign_weights(model, state)
    _materialize_buffers(model, device)
    # Parameters keep requires_grad=True, as from_pretrained leaves them: generation runs under
    # no_grad anyway, and with requires_grad off the first forward pass of a prompt was measured
    # 0.6 s slower on the Qwen2-0.5B shape (bench/bench_serve.py, "requires_grad" rows).
    model.eval()
    return model


def _assign_weights(model: Any, state: dict[str, torch.Tensor]) -> None:
    """Assign (not copy) the tensors, tie embeddings, and refuse anything left unloaded."""
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"The weights do not fit the model in {CONFIG_NAME}: {str(exc)[:500]}",
            hint=_REIMPORT,
        ) from None
    model.tie_weights()
    ignored = {key for key in result.unexpected_keys if key.endswith("rotary_emb.inv_freq")}
    unexpected = sorted(set(result.unexpected_keys) - ignored)
    buffers = dict(model.named_buffers())  # persistent ones missing from the checkpoint
    missing = sorted(
        [k for k, t in model.named_parameters(remove_duplicate=False) if t.is_meta]
        + [k for k in result.missing_keys if k in buffers and buffers[k].is_meta]
    )
    if unexpected or missing:
        raise ModelLoadError(
            f"The weights do not match {CONFIG_NAME}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}.",
            hint=_REIMPORT,
        )


def _materialize_buffers(model: Any, device: torch.device) -> None:
    """Non-persistent buffers (e.g. RoPE frequencies) are not in checkpoints: recompute them.

    Mirrors ``from_pretrained``: allocate them on the device and let the model's own
    ``_init_weights`` fill them. Loaded parameters are flagged ``_is_hf_initialized`` so the
    guarded init functions of transformers leave them untouched.
    """
    for param in model.parameters():
        param._is_hf_initialized = True
    owners: dict[int, Any] = {}
    for module in model.modules():
        for buf_name, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and buf.is_meta:
                module._buffers[buf_name] = torch.empty_like(buf, device=device)
                owners[id(module)] = module
    for module in owners.values():
        model._init_weights(module)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        raise ModelLoadError("Some model tensors could not be materialised.", hint=_REIMPORT)


def _generation_config(
    transformers: ModuleType, files: Mapping[str, bytearray], config: Any
) -> Any:
    if GENERATION_CONFIG_NAME not in files:
        return transformers.GenerationConfig.from_model_config(config)
    data = parse_json(files[GENERATION_CONFIG_NAME], GENERATION_CONFIG_NAME)
    if not isinstance(data, dict):
        raise ModelLoadError(f"{GENERATION_CONFIG_NAME} is not a JSON object.", hint=_REIMPORT)
    return transformers.GenerationConfig.from_dict(data)


def _json_object(files: Mapping[str, bytearray], file_name: str) -> dict[str, Any]:
    if file_name not in files:
        return {}
    data = parse_json(files[file_name], file_name)
    if not isinstance(data, dict):
        raise ModelLoadError(f"{file_name} is not a JSON object.", hint=_REIMPORT)
    return data


def _text(files: Mapping[str, bytearray], file_name: str) -> str:
    try:
        return bytes(files[file_name]).decode("utf-8")
    except UnicodeDecodeError:
        raise ModelLoadError(f"{file_name} is not UTF-8 text.", hint=_REIMPORT) from None


def _build_tokenizer(transformers: ModuleType, name: str, files: Mapping[str, bytearray]) -> Any:
    """A fast tokenizer from tokenizer.json text plus the kwargs ``from_pretrained`` derives."""
    from tokenizers import Tokenizer

    if TOKENIZER_NAME not in files:
        raise ModelLoadError(f"The model has no {TOKENIZER_NAME}.", hint=_REIMPORT)
    try:
        backend = Tokenizer.from_str(_text(files, TOKENIZER_NAME))
    except Exception as exc:  # noqa: BLE001 - the Rust parser raises a bare Exception
        raise ModelLoadError(f"{TOKENIZER_NAME} is invalid: {exc}", hint=_REIMPORT) from None
    kwargs = _tokenizer_kwargs(transformers, files)
    try:
        return transformers.PreTrainedTokenizerFast(
            tokenizer_object=backend, name_or_path=name, **kwargs
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{TOKENIZER_CONFIG_NAME} is invalid: {exc}", hint=_REIMPORT) from None


def _tokenizer_kwargs(transformers: ModuleType, files: Mapping[str, bytearray]) -> dict[str, Any]:
    """The subset of ``PreTrainedTokenizerBase._from_pretrained`` that applies without files."""
    cls = transformers.PreTrainedTokenizerFast
    kwargs = _json_object(files, TOKENIZER_CONFIG_NAME)
    for key in (*_TOKENIZER_KEYS_DROPPED, *_TOKENIZER_KEYS_DROPPED_WITH_JSON):
        kwargs.pop(key, None)
    for key in [k for k in kwargs if k.endswith(("_file", "_files"))]:
        del kwargs[key]  # a path from an untrusted config: never opened
    if CHAT_TEMPLATE_NAME in files:
        kwargs["chat_template"] = _text(files, CHAT_TEMPLATE_NAME)
    if "additional_special_tokens" in kwargs and not kwargs.get("extra_special_tokens"):
        kwargs["extra_special_tokens"] = kwargs.pop("additional_special_tokens")
    _collect_model_specific_tokens(cls, kwargs)
    added = _added_tokens(transformers, files, kwargs)
    kwargs["added_tokens_decoder"] = added
    kwargs = cls.convert_added_tokens(kwargs, save=False)
    by_text = {str(token): token for token in added.values()}
    for key in cls.SPECIAL_TOKENS_ATTRIBUTES:
        if kwargs.get(key) is not None and by_text:
            kwargs[key] = by_text.get(str(kwargs[key]), kwargs[key])
    return dict(kwargs)


def _collect_model_specific_tokens(cls: Any, kwargs: dict[str, Any]) -> None:
    standard = set(cls.SPECIAL_TOKENS_ATTRIBUTES)
    specific = {
        key: kwargs.pop(key)
        for key in list(kwargs)
        if key not in standard and key.endswith("_token") and isinstance(kwargs[key], str)
    }
    if isinstance(kwargs.get("extra_special_tokens"), dict):
        specific.update(kwargs.pop("extra_special_tokens"))
    if specific:
        kwargs["model_specific_special_tokens"] = specific


def _added_tokens(
    transformers: ModuleType, files: Mapping[str, bytearray], kwargs: dict[str, Any]
) -> dict[int, Any]:
    """``added_tokens_decoder`` as AddedTokens; legacy configs take special_tokens_map.json."""
    added_token = transformers.AddedToken
    decoder = kwargs.pop("added_tokens_decoder", None)
    if isinstance(decoder, dict):
        try:
            return {
                int(idx): tok if isinstance(tok, added_token) else added_token(**tok)
                for idx, tok in decoder.items()
            }
        except (TypeError, ValueError):
            raise ModelLoadError(
                f"{TOKENIZER_CONFIG_NAME} has an invalid added_tokens_decoder.", hint=_REIMPORT
            ) from None
    for key, value in _json_object(files, SPECIAL_TOKENS_NAME).items():
        if isinstance(value, dict) and key != "extra_special_tokens":
            value = {k: v for k, v in value.items() if k != "special"}
            kwargs[key] = added_token(**value, special=True)
        elif key == "extra_special_tokens" and isinstance(value, list):
            existing = list(kwargs.get("extra_special_tokens") or [])
            kwargs[key] = existing + [t for t in value if t not in existing]
        else:
            kwargs[key] = value
    return {}
