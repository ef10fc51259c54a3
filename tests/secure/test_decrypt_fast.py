"""The fast decrypt path: plaintext into anonymous maps faulted in by the workers, direct reads of
files that are not in the page cache, and the buffers' use by the model loader.

Real containers, real files, real page cache (evicted with fadvise and checked with cachestat).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secure import _aead, _membuf
from secure.container import Container, encrypt_bytes
from secure.errors import TamperedError
from secure.issuer import IssuerKey
from secure.package import decrypt_package, package_model, unseal_package_key, wipe_buffers

from .helpers import NOW, write_model_dir
from .test_membuf import is_zero, linux_only

KEY = os.urandom(32)
MIB = 1 << 20


def seal(path: Path, plain: bytes, chunk_size: int) -> Container:
    path.write_bytes(
        encrypt_bytes(
            plain, data_key=KEY, object_id="o", name="n", key_id="k", chunk_size=chunk_size
        )
    )
    return Container.open(path)


def open_direct(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT)
    except (OSError, AttributeError) as exc:
        pytest.skip(f"no direct I/O on this file system ({exc})")


def evict(path: Path) -> None:
    """Flush and drop the file's pages; skip where that is impossible (tmpfs, old kernel)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        fraction = _membuf.cached_fraction(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    if fraction is None or fraction > 0.1:
        pytest.skip(f"cannot evict a file here (cached fraction {fraction})")


def cached(path: Path) -> float | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _membuf.cached_fraction(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def decrypt_via(container: Container, fd: int, out: Any, threads: int, direct: bool) -> None:
    """The engine as `Container.decrypt_into` drives it, on a source we chose ourselves."""
    cipher = container._unlock(KEY, "o", "n")
    view = memoryview(out).cast("B")
    source = _aead.FileSource(fd, cipher.geometry, direct=direct)
    indices = range(container.header.chunk_count)
    _aead.decrypt_range(cipher, source, view, indices, threads, _membuf.prefaulter(view))


# -- the engine: direct reads and prefaulting give exactly the plaintext --------------------------


@linux_only
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.integers(0, 300_000),
    chunk_size=st.sampled_from([16, 4096 - 16, 4096, 5000, 65536]),
    threads=st.integers(1, 4),
    direct=st.booleans(),
)
def test_direct_reads_and_prefaulting_round_trip(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
    chunk_size: int,
    threads: int,
    direct: bool,
) -> None:
    monkeypatch.setattr(_aead, "PREFAULT_BYTES", 3 * 4096)  # many segments, also mid-chunk
    plain = os.urandom(size)
    path = tmp_path / f"c-{size}-{chunk_size}-{threads}-{direct}.kc"
    container = seal(path, plain, chunk_size)
    out = _membuf.allocate(size)
    fd = open_direct(path) if direct else os.open(path, os.O_RDONLY)
    try:
        decrypt_via(container, fd, out, threads, direct)
    finally:
        os.close(fd)
    assert bytes(out) == plain


@linux_only
def test_prefault_covers_every_byte_before_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_aead, "PREFAULT_BYTES", 5000)
    plain = os.urandom(100_003)
    container = seal(tmp_path / "c.kc", plain, 4096)
    spans: list[tuple[int, int]] = []
    real = _membuf.prefaulter

    def recording(view: memoryview) -> _membuf.Prefault | None:
        inner = real(view)
        assert inner is not None

        def prefault(start: int, end: int) -> None:
            spans.append((start, end))
            inner(start, end)

        return prefault

    monkeypatch.setattr(_membuf, "prefaulter", recording)
    out = _membuf.allocate(len(plain))
    container.decrypt_into(KEY, out, expect_object_id="o", expect_name="n", threads=3)
    assert bytes(out) == plain
    covered = bytearray(len(plain))
    for start, end in spans:
        covered[start:end] = b"\x01" * (end - start)
    assert all(covered)
    assert sum(end - start for start, end in spans) == len(plain)  # no page asked for twice


@linux_only
def test_a_bad_chunk_read_direct_wipes_the_map(tmp_path: Path) -> None:
    plain = os.urandom(3 * 4096 + 77)
    path = tmp_path / "c.kc"
    container = seal(path, plain, 4096)
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 1  # the last chunk's tag
    path.write_bytes(bytes(blob))
    out = _membuf.allocate(len(plain))
    fd = open_direct(path)
    try:
        with pytest.raises(TamperedError):
            decrypt_via(container, fd, out, 2, direct=True)
    finally:
        os.close(fd)
    assert is_zero(out)


@linux_only
def test_a_short_file_read_direct_is_tampered(tmp_path: Path) -> None:
    plain = os.urandom(5 * 4096)
    path = tmp_path / "c.kc"
    container = seal(path, plain, 4096)
    os.truncate(path, path.stat().st_size - 4096)  # after the size check, as a racing writer would
    out = _membuf.allocate(len(plain))
    fd = open_direct(path)
    try:
        with pytest.raises(TamperedError, match="integrity"):
            decrypt_via(container, fd, out, 1, direct=True)
    finally:
        os.close(fd)
    assert is_zero(out)


@linux_only
def test_a_device_that_refuses_aligned_direct_reads_falls_back_to_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Devices with logical blocks over 4 KiB cannot exist here; their EINVAL is simulated."""
    plain = os.urandom(4 * 4096 + 9)
    path = tmp_path / "c.kc"
    container = seal(path, plain, 4096)
    real_preadv = os.preadv

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", preadv)
    out = _membuf.allocate(len(plain))
    fd = open_direct(path)
    try:
        decrypt_via(container, fd, out, 2, direct=True)
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
    finally:
        os.close(fd)
    assert bytes(out) == plain


# -- decrypt_package: maps out, cold files read past the cache, every failure wiped ---------------


def make_package(tmp_path: Path, src: Path) -> tuple[Path, Any, bytes]:
    issuer = IssuerKey.generate("vendor")
    package_model(src, tmp_path / "pkg", name="m", issuer=issuer.public(), now=NOW)
    manifest, key = unseal_package_key(tmp_path / "pkg", issuer)
    return tmp_path / "pkg", manifest, key


@linux_only
def test_decrypt_package_returns_maps_and_reads_cold_files_past_the_cache(tmp_path: Path) -> None:
    src = write_model_dir(tmp_path / "src", big=5 * MIB + 3)
    (src / "empty.txt").write_bytes(b"")
    pkg, manifest, key = make_package(tmp_path, src)
    weights = next(f for f in manifest.files if f.name == "model.safetensors")
    evict(pkg / weights.container)
    files = decrypt_package(pkg, manifest, key, threads=2)
    assert isinstance(files["model.safetensors"], mmap.mmap)
    assert isinstance(files["empty.txt"], bytearray) and len(files["empty.txt"]) == 0
    for name, buf in files.items():
        assert bytes(buf) == (src / name).read_bytes()
    # Direct reads leave the ciphertext out of the page cache; buffered ones would have filled it.
    fraction = cached(pkg / weights.container)
    assert fraction is not None and fraction < 0.5
    wipe_buffers(files.values())
    assert is_zero(files["model.safetensors"]) and is_zero(files["config.json"])


def test_a_failed_package_decryption_wipes_every_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_model_dir(tmp_path / "src", big=2 * MIB + 1)
    pkg, manifest, key = make_package(tmp_path, src)
    last = manifest.files[-1]
    path = pkg / last.container
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    allocated: list[Any] = []
    real = _membuf.allocate

    def spy(size: int) -> _membuf.PlainBuffer:
        allocated.append(real(size))
        return allocated[-1]

    monkeypatch.setattr(_membuf, "allocate", spy)
    with pytest.raises(TamperedError):
        decrypt_package(pkg, manifest, key, threads=2)
    assert len(allocated) == len(manifest.files)
    for buf in allocated:
        assert (isinstance(buf, mmap.mmap) and buf.closed) or is_zero(buf)


# -- the loader's view of the maps ----------------------------------------------------------------


def test_the_loader_runs_on_maps_and_its_wipe_reaches_them(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from appliance.llm.loader import LoadOptions, load_causal_lm
    from tests.support.fixtures import build_tiny

    tiny = build_tiny(tmp_path / "tiny")
    pkg, manifest, key = make_package(tmp_path, tiny.path)
    files = decrypt_package(pkg, manifest, key, threads=2)
    weights = files["model.safetensors"]
    assert isinstance(weights, mmap.mmap)
    lm = load_causal_lm("tiny", files, options=LoadOptions())  # type: ignore[arg-type]
    reference = load_causal_lm("tiny", tiny.files(), options=LoadOptions())
    ids = torch.tensor([[1, 2, 3, 4]])
    ours = lm.model.generate(ids, max_new_tokens=6, do_sample=False)
    assert (
        ours.tolist() == reference.model.generate(ids, max_new_tokens=6, do_sample=False).tolist()
    )
    embed = lm.model.get_input_embeddings().weight
    base = ctypes.addressof(ctypes.c_char.from_buffer(weights))
    assert base <= embed.data_ptr() < base + len(weights)  # a view of the map, not a copy
    with pytest.raises(BufferError):  # the map cannot be unmapped under the tensors
        weights.close()
    lm.wipe()
    assert is_zero(weights) and int(embed.abs().sum()) == 0
    wipe_buffers(files.values())
