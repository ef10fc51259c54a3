"""The chunk engine under the container (secure/_aead.py): the STREAM flag, the in-place
``update_into`` path and its fallback, and the read-ahead that overlaps reads with decryption."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secure import _aead
from secure.container import Container, encrypt_bytes
from secure.errors import TamperedError

KEY = os.urandom(32)
PREFIX = os.urandom(7)


def geometry(size: int, cs: int = 32) -> _aead.Geometry:
    return _aead.Geometry(size, cs, max(1, -(-size // cs)), 0)


def seal_chunk(cipher: _aead.ChunkCipher, index: int, plain: bytes) -> memoryview:
    out = memoryview(bytearray(len(plain) + _aead.TAG_LEN))
    cipher.encrypt_into(index, memoryview(plain), out)
    return out


def test_stream_nonce_layout() -> None:
    assert _aead.chunk_nonce(PREFIX, 258, False) == PREFIX + b"\x00\x00\x01\x02\x00"
    assert _aead.chunk_nonce(PREFIX, 0, True) == PREFIX + b"\x00\x00\x00\x00\x01"


def test_c3_a_middle_chunk_cannot_pose_as_the_final_one() -> None:
    three, two = (_aead.ChunkCipher(KEY, PREFIX, geometry(n)) for n in (96, 64))
    middle = seal_chunk(three, 1, bytes(32))  # sealed as "not last"
    out = memoryview(bytearray(32))
    with pytest.raises(TamperedError):
        two.decrypt_into(1, middle, out)  # same key, prefix and index, but index 1 is last here
    three.decrypt_into(1, middle, out)
    assert bytes(out) == bytes(32)


def test_update_into_writes_exactly_into_the_slice_on_this_cryptography() -> None:
    """The no-copy path depends on this; if an upgrade changes it the fallback must take over."""
    nonce = os.urandom(12)
    enc = Cipher(algorithms.AES(KEY), modes.GCM(nonce)).encryptor()
    sealed = enc.update(b"x" * 37) + enc.finalize()
    dec = Cipher(algorithms.AES(KEY), modes.GCM(nonce, enc.tag)).decryptor()
    out = bytearray(37)
    assert dec.update_into(sealed, out) == 37
    dec.finalize()
    assert out == b"x" * 37


class _SlackHungryContext:
    """Behaves like cryptography < 42: wants 15 spare bytes in every output buffer."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def update_into(self, data: memoryview, buf: memoryview) -> int:
        if len(buf) < len(data) + 15:
            raise ValueError("buffer must be at least 15 bytes longer")
        return int(self.real.update_into(data, buf[: len(data)]))

    def update(self, data: memoryview) -> bytes:
        return bytes(self.real.update(data))


@pytest.mark.parametrize("size", [0, 5, 15, 16, 17, 100])
def test_update_into_fallback_for_releases_that_want_slack(size: int) -> None:
    plain = os.urandom(size)
    nonce = os.urandom(12)
    real = Cipher(algorithms.AES(KEY), modes.GCM(nonce)).encryptor()
    out = memoryview(bytearray(size))
    _aead._update_into(_SlackHungryContext(real), memoryview(plain), out)
    real.finalize()
    expected = Cipher(algorithms.AES(KEY), modes.GCM(nonce)).encryptor().update(plain)
    assert bytes(out) == expected


def test_split_covers_every_chunk_once() -> None:
    for n in (1, 2, 7, 64):
        for parts in (1, 2, 3, 8, 100):
            ranges = _aead._split(range(3, 3 + n), parts)
            assert [i for r in ranges for i in r] == list(range(3, 3 + n))
            assert len(ranges) == min(parts, n)


def test_read_ahead_reports_a_short_file(tmp_path: Path) -> None:
    geo = geometry(200)
    path = tmp_path / "short"
    path.write_bytes(bytes(100))  # shorter than the 7 sealed chunks need
    fd = os.open(path, os.O_RDONLY)
    try:
        source = _aead.FileSource(fd, geo)
        chunks = source.chunks(range(geo.chunk_count))
        with pytest.raises(TamperedError, match="integrity"):
            for _ in chunks:
                pass
    finally:
        os.close(fd)


def test_read_ahead_stops_its_thread_when_the_consumer_leaves_early(tmp_path: Path) -> None:
    blob = encrypt_bytes(
        os.urandom(1000), data_key=KEY, object_id="o", name="n", key_id="k", chunk_size=16
    )
    path = tmp_path / "c.kc"
    path.write_bytes(blob)
    geo = Container.open(path).header.geometry()
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = _aead.FileSource(fd, geo).chunks(range(geo.chunk_count))
        first = next(chunks)
        assert first[0] == 0 and len(first[1]) == 32
        chunks.close()  # must join the reader, not leave it blocked on the buffer pool
        assert "container-read-ahead" not in {t.name for t in threading.enumerate()}
    finally:
        os.close(fd)


def test_zero_wipes_large_buffers() -> None:
    buf = bytearray(b"\x01" * (3 * (1 << 20) + 5))
    _aead.zero(memoryview(buf))
    assert not any(buf)
