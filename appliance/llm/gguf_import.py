"""Import a GGUF checkpoint as the files of a Hugging Face model directory, in memory only.

``transformers`` reads GGUF (``from_pretrained(dir, gguf_file=…)``, through the ``gguf`` package)
and dequantises every tensor to float. This module turns that model into what
``appliance model package`` encrypts for a Hugging Face directory: ``model.safetensors``
(serialised into one bytearray, tied duplicates dropped as ``save_pretrained`` does),
``config.json``, ``generation_config.json``, ``tokenizer.json``, ``tokenizer_config.json`` and
``chat_template.jinja``. Nothing is written: no temp directory, no cache, no offload folder (no
``device_map`` is passed); :func:`secure.package.package_files` encrypts the buffers and
:meth:`ImportedModel.wipe` zeroes them. The served model is then built by the same loader as
every other package (`appliance.llm.loader`), and gives token-for-token the same greedy output as
``transformers`` loading the GGUF itself (``tests/appliance/test_gguf_import.py``).

The dtype the tensors are dequantised to is a packaging choice: ``fp32`` (default) keeps the
dequantised values exactly, and on the CPUs measured here it decoded the bundled 135M model
faster than ``bf16`` (docs/benchmarks.md, "Bundled model"); ``bf16`` halves the package and the
memory.

The bundled model's file is found by :func:`appliance.llm.bundled.bundled_gguf`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from secure.issuer import IssuerPublic
from secure.package import Manifest, package_files
from secure.provenance import PackageSource, SourceFile, sha256_stream

from ..errors import ModelImportError
from .loader import (
    CHAT_TEMPLATE_NAME,
    CONFIG_NAME,
    DTYPES,
    GENERATION_CONFIG_NAME,
    TOKENIZER_CONFIG_NAME,
    TOKENIZER_NAME,
    gguf_architectures,
    import_transformers,
    zero_buffer,
)
from .safetensors_mem import SINGLE_NAME, serialize_state_dict

GGUF_MAGIC = b"GGUF"
DEFAULT_DTYPE = "fp32"
#: Config entries that describe the GGUF file rather than the model (they would make the loader
#: look for a GGUF, or leak the packager's paths).
_CONFIG_DROPPED = ("quantization_config", "_name_or_path", "transformers_version")
#: tokenizer_config.json entries ``save_pretrained`` removes (paths, loader state).
_TOKENIZER_DROPPED = (
    "add_bos_token",
    "add_eos_token",
    "name_or_path",
    "is_local",
    "local_files_only",
    "vocab_file",
    "tokenizer_file",
    "special_tokens_map_file",
    "files_loaded",
    "device_map",
    "slow_tokenizer_class",
    "chat_template",
)
_DAMAGED_HINT = (
    "Copy or download the file again and compare its SHA-256 (sha256sum) with the one its "
    "publisher gives."
)
_CONVERT_HINT = (
    "Convert the model to a Hugging Face directory (config.json, model.safetensors, "
    "tokenizer.json) and package that directory instead."
)


@dataclass
class ImportedModel:
    """The in-memory files of a converted GGUF and where they came from. Call :meth:`wipe`."""

    files: dict[str, bytearray]
    source: SourceFile
    dtype: str
    model_type: str
    parameters: int

    def package_source(self) -> PackageSource:
        """The provenance record for the package manifest."""
        return PackageSource("gguf", (self.source,), dtype=self.dtype)

    def wipe(self) -> None:
        """Zero every plaintext buffer (the weights above all), then drop them."""
        for buf in self.files.values():
            zero_buffer(buf)
        self.files.clear()


def is_gguf(path: Path) -> bool:
    """Whether ``path`` is a regular file that starts with the GGUF magic."""
    try:
        with path.open("rb") as handle:
            return path.is_file() and handle.read(4) == GGUF_MAGIC
    except OSError:
        return False


def import_gguf(path: Path, *, dtype: str = DEFAULT_DTYPE) -> ImportedModel:
    """Dequantise the GGUF at ``path`` to ``dtype`` and convert it to in-memory model files.

    Raises :class:`ModelImportError` (nothing written, nothing kept) for a file that is not GGUF,
    is truncated or damaged, has an architecture transformers cannot load, or changes while it
    is read.
    """
    torch_dtype = _check_dtype(dtype)
    if not is_gguf(path):
        raise ModelImportError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic).",
            hint="Package a .gguf file or a Hugging Face model directory.",
        )
    source = _digest(path)
    transformers = import_transformers()
    with _quiet(transformers):
        model, tokenizer = _load(transformers, path, torch_dtype)
    try:
        files = _model_files(model, tokenizer, dtype)
        parameters = sum(p.numel() for p in model.parameters())
    finally:
        _zero_model(model)
    if _digest(path) != source:
        for buf in files.values():
            zero_buffer(buf)
        raise ModelImportError(
            f"{path} changed while it was imported.", hint="Package it again once it is complete."
        )
    return ImportedModel(files, source, dtype, str(model.config.model_type), parameters)


@contextlib.contextmanager
def _quiet(transformers: ModuleType) -> Iterator[None]:
    """No per-tensor progress bars and no advice about GGUF kernels from transformers (it warns
    that bf16 is slow for *packed* GGUF weights; ours are dequantised, plain tensors)."""
    logs = transformers.utils.logging
    bars, verbosity = logs.is_progress_bar_enabled(), logs.get_verbosity()
    logs.disable_progress_bar()
    logs.set_verbosity_error()
    # the GGUF reader's bar is tqdm's own, which disable_progress_bar() does not reach
    reader: Any = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    bar = reader.tqdm
    reader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        reader.tqdm = bar
        logs.set_verbosity(verbosity)
        if bars:
            logs.enable_progress_bar()


def _check_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ModelImportError(
            f"Unknown import dtype {dtype!r}.", hint=f"Use one of {sorted(DTYPES)}."
        )
    return DTYPES[dtype]


def _digest(path: Path) -> SourceFile:
    try:
        with path.open("rb") as handle:
            size, digest = sha256_stream(handle)
    except OSError as exc:
        raise ModelImportError(
            f"Cannot read {path}: {exc.strerror}.", hint="Check the path and its permissions."
        ) from None
    return SourceFile(path.name, size, digest)


def _diagnose(path: Path, supported: list[str]) -> None:
    """Why transformers could not load ``path``, when ``gguf``'s own reader can tell: a truncated
    or damaged file, or an architecture transformers does not convert. Run only after a failure
    (reading the whole tokenizer table this way costs seconds on a real file)."""
    try:
        import gguf
    except ImportError as exc:
        raise ModelImportError(
            f"Reading GGUF needs the gguf package ({exc}).",
            hint="Reinstall the appliance with its locked requirements (`make setup`).",
        ) from None
    try:
        reader = gguf.GGUFReader(str(path))
        field = reader.fields.get("general.architecture")
        architecture = field.contents() if field is not None else None
    except Exception as exc:  # noqa: BLE001 - the reader raises many types on a damaged file
        raise ModelImportError(
            f"{path.name} is truncated or damaged (the GGUF reader failed: {_reason(exc)}).",
            hint=_DAMAGED_HINT,
        ) from None
    if not isinstance(architecture, str):
        raise ModelImportError(
            f"{path.name} does not name its architecture (general.architecture).",
            hint=_CONVERT_HINT,
        )
    if architecture not in supported:
        raise ModelImportError(
            f"{path.name} holds a {architecture!r} model, an architecture transformers cannot "
            f"load from GGUF. Supported GGUF architectures: {', '.join(supported)}.",
            hint=_CONVERT_HINT,
        )


def _load(transformers: ModuleType, path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """Model and tokenizer through ``from_pretrained``, every failure as one clear error."""
    directory, name = str(path.parent), path.name
    options: dict[str, Any] = {"gguf_file": name, "local_files_only": True}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, **options)
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **options)
    except ImportError as exc:  # transformers' message when accelerate or gguf is missing
        raise ModelImportError(
            f"Reading GGUF needs the gguf and accelerate packages ({exc}).",
            hint="Reinstall the appliance with its locked requirements (`make setup`).",
        ) from None
    except Exception as exc:  # noqa: BLE001 - the GGUF loaders raise many types on bad input
        _diagnose(path, gguf_architectures())
        raise ModelImportError(
            f"{path.name} cannot be loaded as a GGUF model: {_reason(exc)}.",
            hint=f"{_DAMAGED_HINT} If the file is intact, transformers cannot convert this "
            f"model. {_CONVERT_HINT}",
        ) from None
    model.eval()
    return model, tokenizer


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300].rstrip(".") or type(exc).__name__


def _model_files(model: Any, tokenizer: Any, dtype: str) -> dict[str, bytearray]:
    files: dict[str, bytearray] = {}
    try:
        files[SINGLE_NAME] = serialize_state_dict(_untied_state(model), metadata={"format": "pt"})
        files[CONFIG_NAME] = _json_bytes(_config_dict(model, dtype))
        files[GENERATION_CONFIG_NAME] = _json_bytes(model.generation_config.to_diff_dict())
        files.update(_tokenizer_files(tokenizer))
    except BaseException:
        for buf in files.values():
            zero_buffer(buf)
        raise
    return files


def _untied_state(model: Any) -> dict[str, torch.Tensor]:
    """The state dict without tied duplicates (same storage, shape and strides): the first name
    of each is kept, as ``save_pretrained`` keeps the input embedding of tied embeddings."""
    kept: dict[str, torch.Tensor] = {}
    seen: set[tuple[Any, ...]] = set()
    for name, tensor in model.state_dict().items():
        key = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
        )
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        kept[name] = tensor
    return kept


def _config_dict(model: Any, dtype: str) -> dict[str, Any]:
    data = model.config.to_dict()
    for key in _CONFIG_DROPPED:
        data.pop(key, None)
    data["dtype"] = str(DTYPES[dtype]).removeprefix("torch.")
    data["architectures"] = [type(model).__name__]  # as save_pretrained writes it
    return dict(data)


def _tokenizer_files(tokenizer: Any) -> dict[str, bytearray]:
    """What ``save_pretrained`` writes for a fast tokenizer, built in memory."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelImportError(
            "The GGUF's tokenizer has no fast (tokenizers) form.", hint=_CONVERT_HINT
        )
    files = {TOKENIZER_NAME: bytearray(backend.to_str().encode("utf-8"))}
    config = {k: v for k, v in tokenizer.init_kwargs.items() if k not in _TOKENIZER_DROPPED}
    config["model_max_length"] = tokenizer.model_max_length
    config.update(tokenizer.special_tokens_map)
    config = tokenizer.convert_added_tokens(config, add_type_field=True, save=True)
    config["added_tokens_decoder"] = {
        str(idx): token.__getstate__() for idx, token in tokenizer.added_tokens_decoder.items()
    }
    # As save_pretrained writes it, so that the decrypted files also load with from_pretrained
    # (the appliance's loader ignores it and never picks a class from a file).
    config["tokenizer_class"] = type(tokenizer).__name__
    files[TOKENIZER_CONFIG_NAME] = _json_bytes(config)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        files[CHAT_TEMPLATE_NAME] = bytearray(template.encode("utf-8"))
    return files


def _json_bytes(data: dict[str, Any]) -> bytearray:
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return bytearray((text + "\n").encode("utf-8"))


def package_gguf(
    src: Path,
    out_dir: Path,
    *,
    name: str,
    issuer: IssuerPublic,
    now: int,
    dtype: str = DEFAULT_DTYPE,
) -> Manifest:
    """Dequantise ``src`` in memory, encrypt it from memory into a package in ``out_dir``, zero
    the plaintext (no core dump meanwhile): what `appliance model package FILE.gguf` does."""
    from .hardening import disable_core_dumps

    disable_core_dumps()
    imported = import_gguf(src, dtype=dtype)
    try:
        return package_files(
            imported.files,
            out_dir,
            name=name,
            issuer=issuer,
            now=now,
            source=imported.package_source(),
        )
    finally:
        imported.wipe()


def _zero_model(model: Any) -> None:
    """Zero the dequantised weights the converted files were copied from."""
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.zero_()
