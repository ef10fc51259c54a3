"""SECURITY.md C1-C5: every bit flip, truncation, reordering, splice, header edit, rename and
wrong key is refused with the same TamperedError, and no altered plaintext ever escapes."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from secure.container import MAGIC, Container, ContainerHeader, encrypt_bytes
from secure.errors import SecureError, TamperedError

KEY = bytes(range(32))
OBJ, NAME, KID = "model-a", "model.safetensors", "kek:1/dk:7"
CS = 64
PLAIN = bytes((i * 7 + 3) % 251 for i in range(3 * CS - 10))  # three chunks, last one short
SENTINEL = 0xA5


def seal(plain: bytes = PLAIN, *, key: bytes = KEY, obj: str = OBJ, name: str = NAME) -> bytes:
    return encrypt_bytes(plain, data_key=key, object_id=obj, name=name, key_id=KID, chunk_size=CS)


def layout(blob: bytes) -> tuple[int, int, list[int]]:
    """(header end, body start, chunk starts) computed independently of the library."""
    (hlen,) = struct.unpack(">I", blob[8:12])
    body = 12 + hlen + 32
    size = json.loads(blob[12 : 12 + hlen])["size"]
    count = max(1, -(-size // CS))
    return 12 + hlen, body, [body + i * (CS + 16) for i in range(count)]


def try_open(
    blob: bytes, *, key: bytes = KEY, obj: str = OBJ, name: str = NAME, threads: int = 1
) -> bytearray:
    """Decrypt into a sentinel-filled buffer; on refusal the buffer must hold no plaintext."""
    out = bytearray([SENTINEL]) * len(PLAIN)
    try:
        container = Container.from_bytes(blob)
        out = bytearray([SENTINEL]) * container.header.size
        container.decrypt_into(key, out, expect_object_id=obj, expect_name=name, threads=threads)
    except TamperedError:
        assert set(out) <= {0} or set(out) == {SENTINEL}, "partial plaintext left in the buffer"
        raise
    return out


def test_the_untampered_container_opens() -> None:
    assert try_open(seal()) == PLAIN


@pytest.mark.parametrize("threads", [1, 2])
def test_c1_every_bit_flip_is_refused(threads: int) -> None:
    blob = seal()
    for bit in range(len(blob) * 8):
        bad = bytearray(blob)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(TamperedError):
            try_open(bytes(bad), threads=threads)


def test_c1_a_bad_last_chunk_wipes_the_earlier_plaintext(tmp_path: Path) -> None:
    blob = bytearray(seal())
    blob[-1] ^= 1
    path = tmp_path / "shard.kc"
    path.write_bytes(blob)
    out = bytearray([SENTINEL]) * len(PLAIN)
    with pytest.raises(TamperedError):
        Container.open(path).decrypt_into(KEY, out, expect_object_id=OBJ, expect_name=NAME)
    assert out == bytes(len(PLAIN))


@pytest.mark.parametrize("threads", [1, 3])
def test_c1_every_byte_of_a_file_is_covered(tmp_path: Path, threads: int) -> None:
    blob = seal()
    path = tmp_path / "shard.kc"
    for pos in range(len(blob)):
        bad = bytearray(blob)
        bad[pos] ^= 0x80
        path.write_bytes(bad)
        with pytest.raises(TamperedError):
            container = Container.open(path)
            container.decrypt(KEY, expect_object_id=OBJ, expect_name=NAME, threads=threads)


def test_c2_every_truncation_is_refused() -> None:
    blob = seal()
    for length in range(len(blob)):
        with pytest.raises(TamperedError):
            try_open(blob[:length])


def test_c2_chunk_and_field_boundaries_are_refused(tmp_path: Path) -> None:
    blob = seal()
    header_end, body, starts = layout(blob)
    cuts = {0, 8, 12, header_end, body, *starts, *(s + CS for s in starts[:-1])}
    for cut in sorted(cuts):
        path = tmp_path / f"cut-{cut}.kc"
        path.write_bytes(blob[:cut])
        with pytest.raises(TamperedError):
            Container.open(path).decrypt(KEY, expect_object_id=OBJ, expect_name=NAME)


@pytest.mark.parametrize("tail", [b"\x00", bytes(16), b"x" * (CS + 16)])
def test_c2_appended_bytes_are_refused(tail: bytes) -> None:
    with pytest.raises(TamperedError):
        try_open(seal() + tail)


def test_c2_appending_a_whole_chunk_is_refused() -> None:
    blob = seal(PLAIN[: 2 * CS])
    _, _, starts = layout(blob)
    with pytest.raises(TamperedError):
        try_open(blob + blob[starts[0] : starts[1]])


def test_c2_file_truncated_after_open_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shard.kc"
    path.write_bytes(seal())
    container = Container.open(path)
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size - 1)
    with pytest.raises(TamperedError):
        container.decrypt(KEY, expect_object_id=OBJ, expect_name=NAME)


def chunks_of(blob: bytes) -> tuple[bytes, list[bytes]]:
    _, body, starts = layout(blob)
    ends = [*starts[1:], len(blob)]
    return blob[:body], [blob[s:e] for s, e in zip(starts, ends, strict=True)]


def test_c3_swapped_duplicated_and_deleted_chunks_are_refused() -> None:
    plain = os.urandom(4 * CS)
    head, chunks = chunks_of(seal(plain))
    variants = [
        [chunks[1], chunks[0], chunks[2], chunks[3]],  # swap
        [chunks[0], chunks[0], chunks[2], chunks[3]],  # duplicate
        [chunks[0], chunks[2], chunks[3], chunks[3]],  # delete one, keep the length
        [chunks[0], chunks[1], chunks[3], chunks[2]],  # final chunk moved to the middle
        [chunks[0], chunks[1], chunks[2]],  # final chunk dropped
    ]
    for variant in variants:
        with pytest.raises(TamperedError):
            try_open(head + b"".join(variant))


def test_c3_splicing_between_containers_under_the_same_key_is_refused() -> None:
    plain = os.urandom(3 * CS)
    head_a, chunks_a = chunks_of(seal(plain))
    _, chunks_b = chunks_of(seal(plain))  # same key, ids and plaintext; fresh salt
    for i in range(3):
        spliced = list(chunks_a)
        spliced[i] = chunks_b[i]
        with pytest.raises(TamperedError):
            try_open(head_a + b"".join(spliced))
    with pytest.raises(TamperedError):
        try_open(head_a + b"".join(chunks_b))


def reheader(blob: bytes, **changes: object) -> bytes:
    """Rewrite header fields (canonically, length fixed up) and keep the old MAC and chunks."""
    (hlen,) = struct.unpack(">I", blob[8:12])
    obj = json.loads(blob[12 : 12 + hlen])
    obj.update(changes)
    raw = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + struct.pack(">I", len(raw)) + raw + blob[12 + hlen :]


@pytest.mark.parametrize(
    "changes",
    [
        {"object_id": "model-b"},
        {"name": "config.json"},
        {"key_id": "kek:2/dk:7"},
        {"salt": "A" * 43},
        {"nonce_prefix": "AAAAAAAAAA"},
        {"size": len(PLAIN) - 1},
        {"size": len(PLAIN) + 1},
        {"chunk_size": CS * 2, "chunk_count": 2},
        {"chunk_size": 32, "chunk_count": 6},
        {"suite": "AES128GCM-HKDFSHA256-STREAM"},
        {"extra": 1},
    ],
)
def test_c4_edited_header_fields_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(TamperedError):
        try_open(reheader(seal(), **changes))


def test_c4_an_attacker_with_another_key_cannot_forge_for_the_right_key() -> None:
    evil = os.urandom(32)
    forged = seal(b"evil weights" * 20, key=evil)
    assert try_open(forged, key=evil)[:12] == b"evil weights"  # valid under the attacker's key
    with pytest.raises(TamperedError):
        try_open(forged, key=KEY)


def test_c4_the_header_of_one_container_on_the_chunks_of_another_is_refused() -> None:
    head_a, _ = chunks_of(seal())
    _, chunks_b = chunks_of(seal())
    with pytest.raises(TamperedError):
        try_open(head_a + b"".join(chunks_b))


@pytest.mark.parametrize(
    ("obj", "name"),
    [(OBJ, "config.json"), ("model-b", NAME), ("model-b", "config.json"), (OBJ, NAME + " ")],
)
def test_c4_a_container_renamed_to_another_file_or_model_is_refused(
    tmp_path: Path, obj: str, name: str
) -> None:
    path = tmp_path / obj / name
    path.parent.mkdir()
    path.write_bytes(seal())  # the copy sits where the other file belongs
    with pytest.raises(TamperedError):
        Container.open(path).decrypt(KEY, expect_object_id=obj, expect_name=name)


def failure(blob: bytes, key: bytes, *, obj: str = OBJ, name: str = NAME) -> TamperedError:
    with pytest.raises(TamperedError) as info:
        try_open(blob, key=key, obj=obj, name=name)
    return info.value


def test_c5_every_refusal_looks_the_same() -> None:
    blob = seal()
    flipped = bytearray(blob)
    flipped[-5] ^= 1
    other_model_key = os.urandom(32)
    seal(key=other_model_key, obj="model-b")  # that key really is another model's key
    errors = [
        failure(blob, os.urandom(32)),  # wrong data key
        failure(blob, bytes(32)),
        failure(blob, bytes([KEY[0] ^ 1]) + KEY[1:]),  # one bit off (e.g. a stale kek unwrap)
        failure(blob, other_model_key),
        failure(blob, KEY, obj="model-b"),
        failure(bytes(flipped), KEY),
        failure(blob[:-1], KEY),
    ]
    assert {type(e) for e in errors} == {TamperedError}
    assert len({str(e) for e in errors}) == 1
    assert len({e.diagnostics() for e in errors}) == 1
    assert {e.code for e in errors} == {"TAMPERED"}
    assert all(isinstance(e, SecureError) and e.detail for e in errors)


def test_c5_wrong_key_is_refused_before_any_chunk_is_touched() -> None:
    out = bytearray([SENTINEL]) * len(PLAIN)
    container = Container.from_bytes(seal())
    with pytest.raises(TamperedError) as info:
        container.decrypt_into(os.urandom(32), out, expect_object_id=OBJ, expect_name=NAME)
    assert "MAC" in info.value.detail
    assert set(out) == {SENTINEL}


def test_c5_random_access_read_is_guarded_like_full_decryption() -> None:
    container = Container.from_bytes(seal())
    with pytest.raises(TamperedError):
        container.read(os.urandom(32), 0, 10, expect_object_id=OBJ, expect_name=NAME)
    with pytest.raises(TamperedError):
        container.read(KEY, 0, 0, expect_object_id=OBJ, expect_name="other")


def test_header_from_bytes_keeps_the_exact_bytes() -> None:
    blob = seal()
    (hlen,) = struct.unpack(">I", blob[8:12])
    header = ContainerHeader.from_bytes(blob[12 : 12 + hlen])
    assert header.raw == blob[12 : 12 + hlen]
    assert (header.object_id, header.name, header.key_id) == (OBJ, NAME, KID)
    assert (header.size, header.chunk_size, header.chunk_count) == (len(PLAIN), CS, 3)
