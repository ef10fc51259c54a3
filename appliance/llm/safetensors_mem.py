"""Parse safetensors from decrypted in-memory buffers into zero-copy tensor views.

Why not ``safetensors.torch.load(bytes)``: it copies every tensor (a second plaintext copy of the
weights, 2.4 s per GB here), and ``load_file`` needs a plaintext file on disk, which the security
design forbids (T7). The format is simple enough to parse ourselves: an 8-byte little-endian header
length, a JSON header mapping tensor names to ``dtype`` / ``shape`` / ``data_offsets`` (plus an
optional ``__metadata__`` string map), then the raw little-endian tensor bytes.

The buffer is untrusted until this module has validated it: the header length is capped, every
offset is checked against the buffer, tensors must tile the data section exactly (sorted, no
overlap, no gap, no trailing bytes), and each byte range must equal ``prod(shape) * itemsize``.
Nothing is allocated from a size the header claims; every error is a :class:`ModelLoadError`.

:func:`serialize_state_dict` is the inverse, for models built in memory (a dequantised GGUF
import): one bytearray holding the file, so the plaintext can be encrypted and then zeroed
without ever being written to disk.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from appliance.errors import ModelLoadError

#: Same cap as the reference implementation (safetensors' ``MAX_HEADER_SIZE``).
MAX_HEADER_BYTES = 100_000_000
#: More tensors than any real checkpoint has; bounds the work a hostile header can cause.
MAX_TENSORS = 1_000_000
#: Deepest tensor rank we accept (real models use <= 5).
MAX_RANK = 16
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

_CODES: dict[torch.dtype, str] = {dtype: code for code, dtype in _DTYPES.items()}
#: Where the data section starts is padded to this, so every tensor view is aligned.
_ALIGN = 8

_HINT = "Re-import the model from the customer's original directory with `appliance model import`."


@dataclass(frozen=True)
class TensorEntry:
    """One validated header entry: where a tensor's bytes lie inside the data section."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def _fail(message: str) -> ModelLoadError:
    return ModelLoadError(f"Model weights are malformed: {message}.", hint=_HINT)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON object hook: a duplicated key would let two parsers disagree about a tensor."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _fail(f"duplicate key {key[:80]!r} in a JSON header")
        out[key] = value
    return out


def parse_json(raw: bytes | bytearray | memoryview, what: str) -> Any:
    """Strict JSON (UTF-8, no duplicate keys, no NaN) with every failure as ModelLoadError."""
    try:
        text = bytes(raw).decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except ModelLoadError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(f"{what} is not valid JSON ({type(exc).__name__})") from None


def _reject_constant(name: str) -> Any:
    raise _fail(f"non-standard JSON constant {name}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(name: str, spec: Any, data_len: int) -> TensorEntry:
    """Validate one header entry against the data section length."""
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise _fail(f"tensor {name[:80]!r} needs exactly dtype, shape and data_offsets")
    dtype = _DTYPES.get(spec["dtype"]) if isinstance(spec["dtype"], str) else None
    if dtype is None:
        raise _fail(f"tensor {name[:80]!r} has an unsupported dtype")
    shape, offsets = spec["shape"], spec["data_offsets"]
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise _fail(f"tensor {name[:80]!r} has an invalid shape")
    if not all(_is_int(d) and d >= 0 for d in shape):
        raise _fail(f"tensor {name[:80]!r} has an invalid shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
        raise _fail(f"tensor {name[:80]!r} has invalid data_offsets")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise _fail(f"tensor {name[:80]!r} lies outside the buffer")
    if math.prod(shape) * dtype.itemsize != end - begin:
        raise _fail(f"tensor {name[:80]!r} size does not match its shape and dtype")
    return TensorEntry(name, dtype, tuple(shape), begin, end)


def _check_metadata(meta: Any) -> None:
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _fail("__metadata__ must map strings to strings")


def _check_tiling(entries: list[TensorEntry], data_len: int) -> None:
    """Tensors must cover the data section exactly: sorted, no overlap, no gap, no tail."""
    position = 0
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if entry.begin != position:
            raise _fail("tensors overlap or leave gaps in the data section")
        position = entry.end
    if position != data_len:
        raise _fail("the data section has bytes that belong to no tensor")


def parse_header(buf: bytearray | memoryview) -> tuple[int, list[TensorEntry], dict[str, str]]:
    """Validate the layout; returns (data start, entries, metadata). Touches only the header."""
    view = memoryview(buf).cast("B")
    if len(view) < 8:
        raise _fail("the buffer is shorter than the 8-byte header length")
    header_len = int.from_bytes(view[:8], "little")
    if header_len < 2 or header_len > MAX_HEADER_BYTES or 8 + header_len > len(view):
        raise _fail("the header length is out of range")
    header = parse_json(view[8 : 8 + header_len], "the safetensors header")
    if not isinstance(header, dict):
        raise _fail("the header is not a JSON object")
    if len(header) > MAX_TENSORS + 1:
        raise _fail("the header lists too many tensors")
    metadata = header.pop("__metadata__", {})
    _check_metadata(metadata)
    if any(not name for name in header):
        raise _fail("a tensor has an empty name")
    data_len = len(view) - 8 - header_len
    entries = [_entry(name, spec, data_len) for name, spec in header.items()]
    _check_tiling(entries, data_len)
    return 8 + header_len, entries, metadata


def _view(buf: bytearray | memoryview, start: int, entry: TensorEntry) -> torch.Tensor:
    """A tensor aliasing ``buf`` (no copy), cloned only in the rare misaligned case."""
    count = entry.end - entry.begin
    if count == 0:
        return torch.empty(entry.shape, dtype=entry.dtype)
    raw = torch.frombuffer(buf, dtype=torch.uint8, count=count, offset=start + entry.begin)
    if entry.dtype == torch.bool and bool((raw > 1).any()):
        raise _fail(f"tensor {entry.name[:80]!r} holds a BOOL byte other than 0 or 1")
    tensor = raw.view(entry.dtype).reshape(entry.shape)
    if tensor.data_ptr() % tensor.element_size():
        # Unaligned element access is slow or unsupported on some devices; pay one copy here.
        tensor = tensor.clone()
    return tensor


def tensors_from_buffer(buf: bytearray | memoryview) -> dict[str, torch.Tensor]:
    """Tensors of one safetensors file held in ``buf``, as zero-copy views of ``buf``.

    The views see every later write to ``buf``, which is what lets :meth:`LoadedModel.wipe` zero
    weights through the buffer, and they keep ``buf`` from being resized while they live.
    """
    # torch.frombuffer keeps a reference to the object it is given, not a buffer export; handing
    # it a memoryview pins the bytearray, so resizing it (which would free the memory under the
    # tensors) raises BufferError for as long as any view lives.
    pinned = memoryview(buf).cast("B")
    if pinned.readonly:
        raise ModelLoadError(
            "Model weights must be in a writable buffer so they can be wiped after use.",
            hint="Decrypt into a bytearray.",
        )
    start, entries, _metadata = parse_header(pinned)
    return {entry.name: _view(pinned, start, entry) for entry in entries}


def _weight_map(files: Mapping[str, bytearray]) -> dict[str, str]:
    index = parse_json(files[INDEX_NAME], INDEX_NAME)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise _fail(f"{INDEX_NAME} has no weight_map")
    if not all(isinstance(v, str) for v in weight_map.values()):
        raise _fail(f"{INDEX_NAME} maps a tensor to something that is not a file name")
    return weight_map


def _sharded(files: Mapping[str, bytearray]) -> dict[str, torch.Tensor]:
    weight_map = _weight_map(files)
    shard_names = sorted(set(weight_map.values()))
    missing = [name for name in shard_names if name not in files]
    if missing:
        raise _fail(f"shard {missing[0][:80]!r} named by {INDEX_NAME} is missing")
    state: dict[str, torch.Tensor] = {}
    for shard in shard_names:
        for name, tensor in tensors_from_buffer(files[shard]).items():
            if weight_map.get(name) != shard:
                raise _fail(f"tensor {name[:80]!r} is not where {INDEX_NAME} says it is")
            state[name] = tensor
    if len(state) != len(weight_map):
        raise _fail(f"some tensors listed in {INDEX_NAME} are in no shard")
    return state


def state_dict_from_files(files: Mapping[str, bytearray]) -> dict[str, torch.Tensor]:
    """The model's state dict from its in-memory files: one ``model.safetensors`` or shards."""
    if INDEX_NAME in files:
        return _sharded(files)
    if SINGLE_NAME in files:
        return tensors_from_buffer(files[SINGLE_NAME])
    raise ModelLoadError(
        f"The model has neither {SINGLE_NAME} nor {INDEX_NAME}.",
        hint="Only safetensors checkpoints are supported; convert the model and import it again.",
    )


def serialize_state_dict(
    state: Mapping[str, torch.Tensor], *, metadata: Mapping[str, str] | None = None
) -> bytearray:
    """The safetensors file of ``state`` as one new bytearray (one copy of every tensor).

    Tensors are laid out by name, the header is padded with spaces so that the data section
    starts 8-byte aligned (as the reference writer does), and the result parses with
    :func:`tensors_from_buffer` back into equal tensors. Shared storage is written once per name:
    drop tied duplicates before calling (the loader ties them again).
    """
    header: dict[str, Any] = {}
    spans: list[tuple[str, int, int]] = []
    offset = 0
    for name in sorted(state):
        tensor = state[name]
        if tensor.dtype not in _CODES:
            raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}, which safetensors lacks")
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        spans.append((name, offset, size))
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % _ALIGN)
    start = 8 + len(raw)
    out = bytearray(start + offset)
    out[:8] = len(raw).to_bytes(8, "little")
    out[8:start] = raw
    for name, begin, size in spans:
        if size:
            target = torch.frombuffer(out, dtype=torch.uint8, count=size, offset=start + begin)
            source = state[name].detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            target.copy_(source)
    return out
