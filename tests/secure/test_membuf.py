"""Plaintext buffers (secure/_membuf.py): anonymous maps that are not resident until written,
kept out of core dumps, faulted in on request, wiped in place, and the page-cache probe that
decides between buffered and direct reads. Checked against the kernel's own accounting
(/proc/self/smaps, cachestat, fcntl flags), not against our own bookkeeping."""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from secure import _membuf

MIB = 1 << 20
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux interfaces")


def is_zero(buf: Any) -> bool:
    """Every byte zero (``any(mmap)`` would not do: iterating a map yields 1-byte strings)."""
    view = memoryview(buf)
    try:
        return view.tobytes() == bytes(len(view))
    finally:
        view.release()


def address(buf: Any) -> int:
    anchor = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor


def mapping(addr: int) -> dict[str, str]:
    """The /proc/self/smaps entry of the mapping that contains ``addr``."""
    entry: dict[str, str] = {}
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            if inside:
                return entry
            low, high = (int(x, 16) for x in head.split("-"))
            inside = low <= addr < high
        elif inside:
            key, _, value = line.partition(":")
            entry[key] = value.strip()
    if inside:
        return entry
    raise AssertionError(f"no mapping holds {addr:#x}")


def rss_kib(buf: Any) -> int:
    return int(mapping(address(buf))["Rss"].split()[0])


def test_an_empty_file_gets_an_empty_bytearray() -> None:
    buf = _membuf.allocate(0)
    assert isinstance(buf, bytearray) and len(buf) == 0
    with pytest.raises(ValueError, match=">= 0"):
        _membuf.allocate(-1)


@linux_only
def test_a_fresh_buffer_is_zero_writable_and_not_yet_resident() -> None:
    buf = _membuf.allocate(8 * MIB + 5)
    assert isinstance(buf, mmap.mmap) and len(buf) == 8 * MIB + 5
    assert rss_kib(buf) == 0  # nothing zero-filled up front, unlike bytearray(n)
    view = memoryview(buf)
    assert not view.readonly
    view[-5:] = b"tail!"
    assert bytes(view[:16]) == bytes(16) and bytes(view[-5:]) == b"tail!"
    view.release()


@linux_only
def test_weights_are_kept_out_of_core_dumps() -> None:
    buf = _membuf.allocate(MIB)
    assert "dd" in mapping(address(buf))["VmFlags"].split()


@linux_only
def test_prefault_makes_exactly_the_requested_pages_resident() -> None:
    buf = _membuf.allocate(8 * MIB)
    view = memoryview(buf)
    prefault = _membuf.prefaulter(view)
    assert prefault is not None
    prefault(4096 + 100, 4 * MIB)  # an unaligned start is rounded down to its page
    if not _membuf._Populator.supported:
        pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux < 5.14)")
    # Exactly these pages (up to the one before 4 MiB), or whole huge pages where THP is "always".
    assert (4 * MIB - 4096) // 1024 <= rss_kib(buf) <= 4 * MIB // 1024
    prefault(6 * MIB, 100 * MIB)  # clamped to the end of the buffer
    assert (6 * MIB - 4096) // 1024 <= rss_kib(buf) <= 6 * MIB // 1024
    assert bytes(view[4096 : 4096 + 64]) == bytes(64)  # prefaulting never changes contents
    view.release()


def test_prefault_is_only_offered_for_whole_writable_maps() -> None:
    buf = _membuf.allocate(2 * MIB)
    assert isinstance(buf, mmap.mmap)
    assert _membuf.prefaulter(memoryview(bytearray(10))) is None
    assert _membuf.prefaulter(memoryview(buf)[1:]) is None  # not page aligned
    assert _membuf.prefaulter(memoryview(buf).toreadonly()) is None
    assert _membuf.prefaulter(memoryview(bytearray())) is None


def test_wipe_zeroes_a_map_while_views_of_it_live() -> None:
    buf = _membuf.allocate(3 * MIB + 1)
    view = memoryview(buf)
    view[:] = b"\xa5" * len(view)
    tail = view[3 * MIB :]  # what a tensor view holds: a buffer export
    _membuf.wipe(buf)
    assert tail.tobytes() == b"\x00" and is_zero(buf)
    tail.release()
    view.release()


def test_wipe_works_on_bytearrays_too() -> None:
    buf = bytearray(b"secret" * 1000)
    _membuf.wipe(buf)
    assert buf == bytes(6000)


def test_release_unmaps_only_when_nothing_views_the_map() -> None:
    buf = _membuf.allocate(MIB)
    assert isinstance(buf, mmap.mmap)
    view = memoryview(buf)
    view[:6] = b"secret"
    _membuf.release(buf)  # a live view: zeroed but still mapped, so the view stays valid
    assert not buf.closed and view[:6].tobytes() == bytes(6)
    view.release()
    _membuf.release(buf)
    assert buf.closed
    _membuf.wipe(buf)  # a closed map holds nothing: a no-op, not an error


def _cold_file(path: Path, size: int) -> int:
    """Write ``size`` random bytes, flush them and evict them from the page cache; returns a
    read-only fd. Skips where the file system keeps its pages (tmpfs) or the kernel cannot say."""
    path.write_bytes(os.urandom(size))
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    fraction = _membuf.cached_fraction(fd, size)
    if fraction is None or fraction > 0.1:
        os.close(fd)
        pytest.skip(f"cannot evict a file here (cached fraction {fraction})")
    return fd


@linux_only
def test_a_cold_file_is_read_direct_and_a_warm_one_through_the_cache(tmp_path: Path) -> None:
    size = 2 * MIB + 123
    fd = _cold_file(tmp_path / "cold", size)
    try:
        assert _membuf.bypass_cache_if_cold(fd, size)
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
        _membuf.clear_direct(fd)
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
        assert len(os.pread(fd, size, 0)) == size  # buffered read: now in the cache
        assert _membuf.cached_fraction(fd, size) == 1.0
        assert not _membuf.bypass_cache_if_cold(fd, size)
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
    finally:
        os.close(fd)


def test_cached_fraction_of_nothing_is_unknown(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _membuf.cached_fraction(fd, 0) is None
        assert not _membuf.bypass_cache_if_cold(fd, 0)
    finally:
        os.close(fd)


def test_aligned_scratch_starts_on_a_page() -> None:
    buf = _membuf.aligned(5000)
    assert address(buf) % mmap.PAGESIZE == 0 and len(buf) == 5000
