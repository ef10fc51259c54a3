"""SECURITY.md C6: round trips at every size edge, from bytes and from real files, on one and many
threads, plus random-access reads; and loud ValueErrors for misuse."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secure.container import (
    CHUNK_SIZE,
    SUITE,
    Container,
    container_size,
    decrypt_bytes,
    encrypt_bytes,
    encrypt_stream,
)

KEY = os.urandom(32)
OBJ, NAME, KID = "qwen-ft", "model-00001-of-00002.safetensors", "kek:3/dk:1"


def seal(plain: bytes, cs: int, key: bytes = KEY) -> bytes:
    return encrypt_bytes(plain, data_key=key, object_id=OBJ, name=NAME, key_id=KID, chunk_size=cs)


def sizes_around(cs: int) -> list[int]:
    return sorted({0, 1, cs - 1, cs, cs + 1, 2 * cs, 3 * cs - 1, 3 * cs, 3 * cs + 1})


@pytest.mark.parametrize("cs", [16, 64, 1000])
def test_c6_round_trip_at_every_size_edge(cs: int) -> None:
    for size in sizes_around(cs):
        plain = os.urandom(size)
        blob = seal(plain, cs)
        container = Container.from_bytes(blob)
        assert len(blob) == container_size(size, len(container.header.raw), cs)
        assert container.header.chunk_count == max(1, -(-size // cs))
        assert container.header.suite == SUITE
        assert decrypt_bytes(blob, KEY, expect_object_id=OBJ, expect_name=NAME) == plain
        for threads in (1, 2, 5):
            got = container.decrypt(KEY, expect_object_id=OBJ, expect_name=NAME, threads=threads)
            assert got == plain


def test_c6_empty_plaintext_is_one_empty_final_chunk() -> None:
    blob = seal(b"", 64)
    container = Container.from_bytes(blob)
    assert container.header.chunk_count == 1
    assert len(blob) == 12 + len(container.header.raw) + 32 + 16
    assert container.decrypt(KEY, expect_object_id=OBJ, expect_name=NAME) == b""
    assert container.read(KEY, 0, 0, expect_object_id=OBJ, expect_name=NAME) == b""


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_c6_stream_to_a_real_file_and_back(tmp_path: Path, threads: int) -> None:
    plain = os.urandom(2 * CHUNK_SIZE + 12345)
    path = tmp_path / NAME
    with path.open("wb") as dst:
        header = encrypt_stream(
            io.BytesIO(plain),
            dst,
            data_key=KEY,
            object_id=OBJ,
            name=NAME,
            key_id=KID,
            size=len(plain),
        )
    assert header.chunk_size == CHUNK_SIZE and header.chunk_count == 3
    container = Container.open(path)
    assert container.header == header
    out = bytearray(len(plain))
    container.decrypt_into(KEY, out, expect_object_id=OBJ, expect_name=NAME, threads=threads)
    assert out == plain


def test_c6_stream_and_bytes_produce_the_same_container() -> None:
    plain = os.urandom(300)
    salt, prefix = os.urandom(32), os.urandom(7)
    dst = io.BytesIO()
    encrypt_stream(
        io.BytesIO(plain),
        dst,
        data_key=KEY,
        object_id=OBJ,
        name=NAME,
        key_id=KID,
        size=len(plain),
        chunk_size=64,
        _salt=salt,
        _nonce_prefix=prefix,
    )
    same = encrypt_bytes(
        plain,
        data_key=KEY,
        object_id=OBJ,
        name=NAME,
        key_id=KID,
        chunk_size=64,
        _salt=salt,
        _nonce_prefix=prefix,
    )
    assert dst.getvalue() == same


def test_c6_fresh_salt_and_nonce_prefix_every_time() -> None:
    first, second = Container.from_bytes(seal(b"x", 64)), Container.from_bytes(seal(b"x", 64))
    assert first.header.salt != second.header.salt
    assert first.header.nonce_prefix != second.header.nonce_prefix


def test_c6_decrypts_into_a_slice_of_a_larger_buffer() -> None:
    plain = os.urandom(500)
    arena = bytearray(b"\xee" * 700)
    Container.from_bytes(seal(plain, 64)).decrypt_into(
        KEY, memoryview(arena)[100:600], expect_object_id=OBJ, expect_name=NAME, threads=2
    )
    assert arena[100:600] == plain
    assert arena[:100] == b"\xee" * 100 and arena[600:] == b"\xee" * 100


RANDOM_PLAIN = os.urandom(1500)
RANDOM_BLOB = seal(RANDOM_PLAIN, 64)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_c6_random_access_reads(tmp_path: Path, data: st.DataObject) -> None:
    offset = data.draw(st.integers(0, len(RANDOM_PLAIN)))
    length = data.draw(st.integers(0, len(RANDOM_PLAIN) - offset))
    path = tmp_path / "r.kc"
    if not path.exists():
        path.write_bytes(RANDOM_BLOB)
    want = RANDOM_PLAIN[offset : offset + length]
    for container in (Container.from_bytes(RANDOM_BLOB), Container.open(path)):
        got = container.read(KEY, offset, length, expect_object_id=OBJ, expect_name=NAME)
        assert got == want


def test_misuse_raises_precise_value_errors() -> None:
    container = Container.from_bytes(seal(b"abc", 64))
    kw: dict[str, Any] = {"expect_object_id": OBJ, "expect_name": NAME}
    cases = [
        (lambda: container.decrypt(KEY[:16], **kw), "32 bytes"),
        (lambda: container.decrypt("k" * 32, **kw), "must be bytes"),  # type: ignore[arg-type]
        (lambda: container.decrypt_into(KEY, bytearray(4), **kw), "holds 4 bytes"),
        (lambda: container.decrypt_into(KEY, b"abc", **kw), "read-only"),  # type: ignore[arg-type]
        (lambda: container.decrypt_into(KEY, bytearray(3), threads=0, **kw), "threads"),
        (lambda: container.read(KEY, 2, 2, **kw), "Cannot read"),
        (lambda: container.read(KEY, -1, 1, **kw), "Cannot read"),
        (lambda: seal(b"x", 8), "chunk size"),
        (lambda: seal(b"x", 64, key=b"short"), "32 bytes"),
        (lambda: encrypt_bytes(b"x", data_key=KEY, object_id="", name=NAME, key_id=KID), "1 to"),
        (
            lambda: encrypt_bytes(b"x", data_key=KEY, object_id=OBJ, name="a\nb", key_id=KID),
            "control",
        ),
        (
            lambda: encrypt_bytes(b"x", data_key=KEY, object_id=OBJ, name="n" * 1025, key_id=KID),
            "1 to",
        ),
        (
            lambda: encrypt_stream(
                io.BytesIO(b"ab"),
                io.BytesIO(),
                data_key=KEY,
                object_id=OBJ,
                name=NAME,
                key_id=KID,
                size=3,
            ),
            "ended after 2 of 3",
        ),
        (lambda: container_size(-1, 10, 64), ">= 0"),
    ]
    for call, words in cases:
        with pytest.raises(ValueError, match=words):
            call()


def test_unicode_names_round_trip() -> None:
    name = "Präsentation Q3 – 報告.pptx"
    blob = encrypt_bytes(b"doc", data_key=KEY, object_id="coll:legal", name=name, key_id=KID)
    assert decrypt_bytes(blob, KEY, expect_object_id="coll:legal", expect_name=name) == b"doc"
