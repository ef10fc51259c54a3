"""Fuzzing the container parsers (SECURITY.md): no input crashes with anything but a SecureError,
hangs, or allocates by what a header claims rather than by what is really there."""

from __future__ import annotations

import json
import os
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from secure._encoding import b64e, canonical_json
from secure.container import (
    MAGIC,
    MAX_HEADER_LEN,
    MAX_SIZE,
    Container,
    ContainerHeader,
    encrypt_bytes,
)
from secure.errors import SecureError, TamperedError

KEY = os.urandom(32)
OBJ, NAME = "m", "f.bin"
PLAIN = os.urandom(200)
BLOB = encrypt_bytes(PLAIN, data_key=KEY, object_id=OBJ, name=NAME, key_id="k", chunk_size=64)
FUZZ = settings(max_examples=300, deadline=None)


def decrypt(blob: bytes) -> bytes:
    container = Container.from_bytes(blob)
    return bytes(container.decrypt(KEY, expect_object_id=OBJ, expect_name=NAME, threads=2))


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes_are_refused_cleanly(blob: bytes) -> None:
    with pytest.raises(TamperedError):
        decrypt(blob)


@FUZZ
@given(st.integers(0, 2**32 - 1), st.binary(max_size=400))
def test_arbitrary_bytes_after_a_valid_magic_are_refused_cleanly(hlen: int, rest: bytes) -> None:
    with pytest.raises(TamperedError):
        decrypt(MAGIC + struct.pack(">I", hlen) + rest)


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    blob = bytearray(BLOB)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(blob)))
        kind = draw(st.sampled_from(["set", "insert", "delete"]))
        if kind == "set" and pos < len(blob):
            blob[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            blob[pos:pos] = draw(st.binary(min_size=1, max_size=80))
        else:
            del blob[pos : pos + draw(st.integers(1, 80))]
    return bytes(blob)


@FUZZ
@given(mutations())
def test_mutated_containers_are_refused_or_unchanged(blob: bytes) -> None:
    try:
        assert decrypt(blob) == PLAIN and blob == BLOB
    except TamperedError:
        assert blob != BLOB


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def valid_fields() -> dict[str, Any]:
    return {
        "suite": "AES256GCM-HKDFSHA256-STREAM",
        "object_id": OBJ,
        "name": NAME,
        "key_id": "k",
        "size": 100,
        "chunk_size": 64,
        "chunk_count": 2,
        "salt": b64e(bytes(32)),
        "nonce_prefix": b64e(bytes(7)),
    }


@FUZZ
@given(st.dictionaries(st.sampled_from([*valid_fields(), "x"]), JSON_VALUES, max_size=4))
def test_headers_with_arbitrary_field_values_parse_strictly(changes: dict[str, Any]) -> None:
    obj = {**valid_fields(), **changes}
    try:
        raw = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except (ValueError, UnicodeEncodeError):
        assume(False)
        return
    try:
        header = ContainerHeader.from_bytes(raw)
    except TamperedError:
        return
    assert header.raw == raw == canonical_json(obj)
    assert 0 <= header.size <= MAX_SIZE and header.chunk_count >= 1
    assert len(header.salt) == 32 and len(header.nonce_prefix) == 7


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=100).map(str.encode))
def test_arbitrary_header_bytes_are_refused_cleanly(raw: bytes) -> None:
    with pytest.raises(TamperedError):
        ContainerHeader.from_bytes(raw)


def header_blob(**changes: Any) -> bytes:
    raw = canonical_json({**valid_fields(), **changes})
    return MAGIC + struct.pack(">I", len(raw)) + raw + bytes(32) + bytes(116)


@pytest.mark.parametrize(
    "changes",
    [
        {"size": 2**60, "chunk_count": 2**54},
        {"size": MAX_SIZE + 1, "chunk_count": (MAX_SIZE + 1 + 63) // 64},
        {"size": MAX_SIZE, "chunk_count": MAX_SIZE // 64},  # allowed size, but no such data
        {"size": 2**40, "chunk_size": 16, "chunk_count": 2**36},  # more chunks than a u32
        {"chunk_size": 2**40, "chunk_count": 1},
        {"size": -1, "chunk_count": 1},
    ],
)
def test_huge_claims_are_refused_before_allocating(changes: dict[str, Any]) -> None:
    blob = header_blob(**changes)
    tracemalloc.start()
    try:
        with pytest.raises(TamperedError):
            decrypt(blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a":' + b"9" * 5000 + b"}",  # int-conversion limit: a ValueError inside json
        canonical_json(valid_fields()).replace(b",", b", ", 1),  # not canonical
        canonical_json(valid_fields()).replace(b'"f.bin"', b'"\\ud800"'),  # lone surrogate
        canonical_json(valid_fields()).replace(b'"f.bin"', b'"a\\u0000b"'),  # control char
        canonical_json(valid_fields()).replace(b'"size":100', b'"size":100.0'),
        canonical_json(valid_fields()).replace(b'"size":100', b'"size":true'),
        canonical_json(valid_fields()).replace(b'"chunk_count":2', b'"chunk_count":3'),
        canonical_json(valid_fields()).replace(b'{"', b'{"chunk_count":2,"', 1),  # duplicate key
        canonical_json({**valid_fields(), "salt": b64e(bytes(31))}),
        canonical_json({**valid_fields(), "nonce_prefix": "AAAAAAAAAB"}),  # non-canonical b64
        canonical_json({**valid_fields(), "chunk_size": 8, "chunk_count": 13}),
        b"[]",
        b" " * (MAX_HEADER_LEN + 1),
    ],
)
def test_malformed_headers_are_refused(raw: bytes) -> None:
    with pytest.raises(TamperedError) as info:
        ContainerHeader.from_bytes(raw)
    assert info.value.detail.startswith("header:")


def test_open_refuses_a_huge_header_length_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.kc"
    with path.open("wb") as fh:
        fh.write(MAGIC + struct.pack(">I", 2**32 - 1))
        fh.truncate(2**33)  # sparse: 8 GiB claimed, nothing stored
    tracemalloc.start()
    try:
        with pytest.raises(TamperedError):
            Container.open(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


def test_open_of_a_valid_header_on_a_huge_file_reads_only_the_header(tmp_path: Path) -> None:
    path = tmp_path / "sparse.kc"
    path.write_bytes(BLOB)
    with path.open("r+b") as fh:
        fh.truncate(2**33)  # right header, wrong size: refused from the size equation alone
    tracemalloc.start()
    try:
        with pytest.raises(TamperedError) as info:
            Container.open(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "implies" in info.value.detail
    assert peak < 256 * 1024


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutations())
def test_mutated_files_are_refused_or_unchanged(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "m.kc"
    path.write_bytes(blob)
    try:
        container = Container.open(path)
        got = container.decrypt(KEY, expect_object_id=OBJ, expect_name=NAME, threads=3)
        assert got == PLAIN and blob == BLOB
    except SecureError as exc:
        assert isinstance(exc, TamperedError) and blob != BLOB
