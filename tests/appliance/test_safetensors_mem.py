"""The in-memory safetensors parser: zero-copy views, strict validation, fuzzed headers."""

from __future__ import annotations

import contextlib
import ctypes
import json
import struct
from typing import Any

import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.errors import ModelLoadError
from appliance.llm.safetensors_mem import (
    MAX_HEADER_BYTES,
    serialize_state_dict,
    state_dict_from_files,
    tensors_from_buffer,
)

ALL_DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int8,
    torch.uint8,
    torch.bool,
]


def _pack(header: object, data: bytes = b"", *, length: int | None = None) -> bytearray:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    size = len(raw) if length is None else length
    return bytearray(struct.pack("<Q", size) + raw + data)


def _sample() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    out = {}
    for i, dtype in enumerate(ALL_DTYPES):
        if dtype.is_floating_point:
            tensor = torch.randn(3, i + 1, generator=gen).to(dtype)
        elif dtype == torch.bool:
            tensor = torch.rand(5, generator=gen) > 0.5
        else:
            tensor = torch.randint(-100 if dtype != torch.uint8 else 0, 100, (2, 3, i + 1))
            tensor = tensor.to(dtype)
        out[f"t.{dtype}".replace("torch.", "")] = tensor
    out["empty"] = torch.zeros(0, 4)
    return out


def _address(buf: bytearray) -> int:
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


def test_every_dtype_round_trips_as_views_of_the_buffer() -> None:
    expected = _sample()
    buf = bytearray(safetensors.torch.save(expected, metadata={"format": "pt"}))
    tensors = tensors_from_buffer(buf)
    assert set(tensors) == set(expected)
    lo, hi = _address(buf), _address(buf) + len(buf)
    for name, tensor in expected.items():
        assert tensors[name].dtype == tensor.dtype and torch.equal(tensors[name], tensor), name
        if tensor.numel():
            assert lo <= tensors[name].data_ptr() < hi, name
    offset = tensors["t.float32"].data_ptr() - lo
    buf[offset : offset + 4] = struct.pack("<f", 42.0)  # shows through the view: no copy made
    assert tensors["t.float32"].flatten()[0].item() == 42.0


def test_views_see_writes_and_keep_the_buffer_from_resizing() -> None:
    buf = bytearray(safetensors.torch.save({"w": torch.ones(4)}))
    tensor = tensors_from_buffer(buf)["w"]
    buf[-4:] = b"\0\0\0\0"
    assert tensor.tolist() == [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(BufferError):
        buf.extend(b"x")


def _entry(dtype: str, shape: list[Any], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


@pytest.mark.parametrize(
    "buf",
    [
        pytest.param(bytearray(b"\x01\x00"), id="shorter-than-length-field"),
        pytest.param(_pack({}, length=2**63), id="huge-header-length"),
        pytest.param(_pack({}, length=MAX_HEADER_BYTES + 1), id="over-cap"),
        pytest.param(_pack(b"{}", length=3), id="length-past-end"),
        pytest.param(_pack(b"{not json}"), id="not-json"),
        pytest.param(_pack(b"\xff\xfe{}"), id="not-utf8"),
        pytest.param(_pack([1, 2]), id="not-object"),
        pytest.param(_pack(b'{"a": 1, "a": 2}'), id="duplicate-key"),
        pytest.param(_pack(b'{"a": NaN}'), id="nan"),
        pytest.param(_pack(b"[" * 100_000), id="deep-nesting"),
        pytest.param(_pack({"w": _entry("F32", [2], 0, 8)}, b"\0" * 4), id="out-of-range"),
        pytest.param(_pack({"w": _entry("F32", [2], 0, 4)}, b"\0" * 4), id="size-mismatch"),
        pytest.param(_pack({"w": _entry("F32", [2], 8, 0)}, b"\0" * 8), id="reversed"),
        pytest.param(_pack({"w": _entry("F32", [2], -8, 0)}, b"\0" * 8), id="negative"),
        pytest.param(_pack({"w": _entry("F32", [-2], 0, 0)}), id="negative-dim"),
        pytest.param(_pack({"w": _entry("F32", [True], 0, 4)}, b"\0" * 4), id="bool-dim"),
        pytest.param(_pack({"w": _entry("F32", [2.0], 0, 8)}, b"\0" * 8), id="float-dim"),
        pytest.param(_pack({"w": _entry("C64", [1], 0, 8)}, b"\0" * 8), id="unknown-dtype"),
        pytest.param(_pack({"w": _entry("F32", [1] * 17, 0, 4)}, b"\0" * 4), id="rank"),
        pytest.param(_pack({"w": _entry("F32", [2**40, 2**40], 0, 4)}, b"\0" * 4), id="huge-shape"),
        pytest.param(
            _pack({"a": _entry("F32", [2], 0, 8), "b": _entry("F32", [2], 4, 12)}, b"\0" * 12),
            id="overlap",
        ),
        pytest.param(
            _pack({"a": _entry("F32", [1], 0, 4), "b": _entry("F32", [1], 8, 12)}, b"\0" * 12),
            id="gap",
        ),
        pytest.param(_pack({"w": _entry("F32", [1], 0, 4)}, b"\0" * 8), id="trailing-bytes"),
        pytest.param(_pack({"w": {**_entry("F32", [1], 0, 4), "x": 1}}, b"\0" * 4), id="extra"),
        pytest.param(_pack({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), id="no-offsets"),
        pytest.param(_pack({"": _entry("F32", [1], 0, 4)}, b"\0" * 4), id="empty-name"),
        pytest.param(_pack({"__metadata__": {"a": 1}}), id="metadata-not-str"),
        pytest.param(_pack({"w": _entry("BOOL", [1], 0, 1)}, b"\x02"), id="bool-not-0-or-1"),
    ],
)
def test_malformed_layouts_are_refused(buf: bytearray) -> None:
    with pytest.raises(ModelLoadError) as info:
        tensors_from_buffer(buf)
    assert info.value.code == "MODEL_LOAD"


def test_read_only_buffer_is_refused() -> None:
    data = safetensors.torch.save({"w": torch.ones(2)})
    with pytest.raises(ModelLoadError, match="writable"):
        tensors_from_buffer(memoryview(data))


_VALID = bytes(safetensors.torch.save({"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(ModelLoadError):
        tensors_from_buffer(bytearray(data))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=8))
def test_mutated_files_parse_within_bounds_or_are_refused(edits: list[tuple[int, int]]) -> None:
    buf = bytearray(_VALID)
    for position, value in edits:
        buf[position] = value
    try:
        tensors = tensors_from_buffer(buf)
    except ModelLoadError:
        return
    lo, hi = _address(buf), _address(buf) + len(buf)
    for tensor in tensors.values():
        size = tensor.numel() * tensor.element_size()
        assert size == 0 or lo <= tensor.data_ptr() <= tensor.data_ptr() + size <= hi


_dims = st.lists(st.integers(-2, 2**33), max_size=4)
_spec = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "BF16", "U8", "BOOL", "I64", "X"]),
        "shape": _dims,
        "data_offsets": st.lists(st.integers(-4, 2**40), min_size=0, max_size=3),
    }
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _spec, max_size=4), st.integers(0, 64))
def test_fuzzed_headers_never_crash_or_allocate(header: dict, data_len: int) -> None:
    buf = _pack(header, b"\x01" * data_len)
    try:
        tensors = tensors_from_buffer(buf)
    except ModelLoadError:
        return
    assert sum(t.numel() * t.element_size() for t in tensors.values()) == data_len


def _shards() -> dict[str, bytearray]:
    one = safetensors.torch.save({"a": torch.ones(2)})
    two = safetensors.torch.save({"b": torch.zeros(3), "c": torch.arange(4)})
    index = {"metadata": {}, "weight_map": {"a": "s-1.safetensors", "b": "s-2.safetensors"}}
    index["weight_map"]["c"] = "s-2.safetensors"
    return {
        "model.safetensors.index.json": bytearray(json.dumps(index).encode()),
        "s-1.safetensors": bytearray(one),
        "s-2.safetensors": bytearray(two),
    }


def test_sharded_state_dict_merges_shards() -> None:
    state = state_dict_from_files(_shards())
    assert sorted(state) == ["a", "b", "c"]
    assert state["c"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "edit",
    [
        lambda f: f.pop("s-2.safetensors"),
        lambda f: f.update({"model.safetensors.index.json": bytearray(b'{"weight_map": {}}')}),
        lambda f: f.update(
            {"model.safetensors.index.json": bytearray(b'{"weight_map": {"a": "s-2.safetensors"}}')}
        ),
        lambda f: f.update({"s-1.safetensors": bytearray(safetensors.torch.save({}))}),
        lambda f: f.clear(),
    ],
    ids=["missing-shard", "empty-map", "wrong-shard", "tensor-in-no-shard", "no-weights"],
)
def test_inconsistent_shards_are_refused(edit) -> None:
    files = _shards()
    edit(files)
    with pytest.raises(ModelLoadError):
        state_dict_from_files(files)


def test_serialized_state_dict_parses_back_here_and_in_the_reference_library() -> None:
    state = _sample()
    state["scalar"] = torch.tensor(3.5)
    state["strided"] = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # not contiguous
    buf = serialize_state_dict(state, metadata={"format": "pt"})
    assert isinstance(buf, bytearray)
    header_len = int.from_bytes(buf[:8], "little")
    assert (8 + header_len) % 8 == 0  # the data section starts aligned: views need no copy
    ours = tensors_from_buffer(buf)
    reference = safetensors.torch.load(bytes(buf))
    assert set(ours) == set(reference) == set(state)
    for name, tensor in state.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name
        assert torch.equal(reference[name], tensor), name
    assert json.loads(buf[8 : 8 + header_len])["__metadata__"] == {"format": "pt"}


def test_serialize_refuses_a_dtype_safetensors_lacks() -> None:
    with pytest.raises(ValueError, match="complex64"):
        serialize_state_dict({"c": torch.zeros(2, dtype=torch.complex64)})
