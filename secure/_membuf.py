"""Plaintext buffers for decrypted files, and how the ciphertext is read into memory.

Why (measured on the 2-core VM, bench/results/model_load.json): loading an encrypted 1 GB model
costs fresh memory more than AES. ``bytearray(n)`` zero-fills its n bytes page fault by page
fault before the decryptor writes them again. A private anonymous map starts untouched, and
``MADV_POPULATE_WRITE`` (Linux >= 5.14) faults a whole segment in with one system call. The
decrypt workers call :func:`prefaulter`'s function on the segment they are about to write,
through ``ctypes`` so that the GIL is released and one worker's faulting overlaps the others'
reading and decrypting. What remains per GB here: the kernel zeroing each new page (~0.3 s), AES
(~0.3 s per core) and, for a file in the page cache, copying it out (~0.25 s).

* ``MADV_DONTDUMP`` keeps the weights out of core dumps even if D3's process settings are undone.
* Not ``MADV_HUGEPAGE``: on this VM the first use of transparent huge pages cost 4-6 s/GB against
  ~0.5 s/GB for 4 KiB pages (its balloon device reports freed memory to the host, which must
  then fault it back in). The kernel's own THP policy still applies.
* Not ``MADV_DONTFORK`` / ``MADV_WIPEONFORK``: a forked worker would crash on, or silently read
  zeros from, weights it was handed.
* A cold file is read with O_DIRECT (:func:`bypass_cache_if_cold`), not through the page cache.

Lifetime rule: :func:`wipe` zeroes a buffer in place and leaves it mapped, because tensors may
still view it. The pages go back to the system when the last reference is dropped: every torch
view holds a buffer export of the map, and ``mmap.close()`` refuses (``BufferError``) while any
export lives, so no tensor can ever see unmapped memory. :func:`release` (wipe, then close if
nothing views the buffer) is for buffers that were never handed out, e.g. on a failed decryption.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import mmap
import os
import sys
from collections.abc import Callable
from typing import Any

#: A decrypted file: a private anonymous map, or an empty bytearray for an empty file.
PlainBuffer = bytearray | mmap.mmap
Prefault = Callable[[int, int], None]

_MADV_POPULATE_WRITE = 23  # linux/mman.h; the mmap module of Python 3.11 does not name it
_SYS_CACHESTAT = 451  # the same number on every Linux architecture (added in 6.5)
_EINVAL = 22
_PAGE = mmap.PAGESIZE
#: O_DIRECT wants offsets, lengths and addresses aligned to the device's logical block size;
#: 4096 covers both common sizes (512 and 4096).
DIRECT_ALIGN = 4096
#: A file at least this much in the page cache is read through it (see bypass_cache_if_cold).
_WARM_FRACTION = 0.5


def allocate(size: int) -> PlainBuffer:
    """A zero-initialised writable buffer of ``size`` bytes whose pages are not yet faulted in."""
    if size < 0:
        raise ValueError(f"A buffer size must be >= 0, not {size}.")
    if size == 0:
        return bytearray()  # mmap cannot map zero bytes
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    dontdump = getattr(mmap, "MADV_DONTDUMP", None)
    if dontdump is not None:
        with contextlib.suppress(OSError):  # an old kernel: the process settings remain
            buf.madvise(dontdump)
    return buf


@functools.cache
def _libc() -> Any:
    """The C library through ctypes (which releases the GIL around each call), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _libc_madvise() -> Any:
    libc = _libc()
    fn = getattr(libc, "madvise", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
    return fn


class _Populator:
    """Fault in ``[start, end)`` of one map ahead of the writes (best effort, never required)."""

    #: Cleared on the first EINVAL: a kernel before 5.14 has no MADV_POPULATE_WRITE.
    supported = True

    def __init__(self, madvise: Any, address: int, size: int) -> None:
        self._madvise = madvise
        self._address = address
        self._size = size

    def __call__(self, start: int, end: int) -> None:
        start, end = max(0, start) // _PAGE * _PAGE, min(end, self._size)
        if end <= start or not _Populator.supported:
            return
        failed = self._madvise(self._address + start, end - start, _MADV_POPULATE_WRITE) != 0
        if failed and ctypes.get_errno() == _EINVAL:
            _Populator.supported = False
        # Any other failure (ENOMEM, EINTR) is left to the ordinary page faults of the writes.


def prefaulter(view: memoryview) -> Prefault | None:
    """A function that faults in a byte range of ``view`` if it is one of our maps, else None.

    The caller must keep ``view`` alive while it uses the function: it holds a raw address.
    """
    madvise = _libc_madvise()
    if madvise is None or not isinstance(view.obj, mmap.mmap) or view.readonly or not len(view):
        return None
    anchor = ctypes.c_char.from_buffer(view)
    address = ctypes.addressof(anchor)
    del anchor  # release the export at once; ``view`` itself keeps the map alive
    if address % _PAGE:
        return None  # a slice of a map; only whole maps start on a page
    return _Populator(madvise, address, len(view))


def aligned(size: int) -> mmap.mmap:
    """A page-aligned scratch buffer (for O_DIRECT reads of ciphertext; holds no secrets)."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


class _CachestatRange(ctypes.Structure):
    _fields_ = (("off", ctypes.c_uint64), ("len", ctypes.c_uint64))


class _Cachestat(ctypes.Structure):
    _fields_ = (
        ("nr_cache", ctypes.c_uint64),
        ("nr_dirty", ctypes.c_uint64),
        ("nr_writeback", ctypes.c_uint64),
        ("nr_evicted", ctypes.c_uint64),
        ("nr_recently_evicted", ctypes.c_uint64),
    )


def cached_fraction(fd: int, size: int) -> float | None:
    """Share of the first ``size`` bytes of ``fd`` in the page cache (``cachestat``, Linux >=
    6.5, which neither reads nor maps the file), or None where the kernel cannot say."""
    syscall = getattr(_libc(), "syscall", None)
    if syscall is None or size <= 0:
        return None
    span, stat = _CachestatRange(0, size), _Cachestat()
    args = (ctypes.byref(span), ctypes.byref(stat), ctypes.c_uint(0))
    if syscall(ctypes.c_long(_SYS_CACHESTAT), ctypes.c_int(fd), *args) != 0:
        return None  # ENOSYS (older kernel), EPERM (a seccomp filter): keep buffered reads
    return min(1.0, stat.nr_cache * _PAGE / size)


def bypass_cache_if_cold(fd: int, size: int) -> bool:
    """Set O_DIRECT on ``fd`` when most of the file is not in the page cache; True if set.

    Why: a buffered read of a cold file first fills the page cache, fresh memory that cost as
    much CPU here as the decryption itself (0.5 s/GB), only to copy it out once. A direct read
    lands in the reader's small buffer instead. A warm file stays buffered: copying it out of the
    cache is cheaper than reading the disk again.
    """
    direct = getattr(os, "O_DIRECT", 0)
    fraction = cached_fraction(fd, size)
    if not direct or fraction is None or fraction >= _WARM_FRACTION:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | direct)
    except OSError:  # a file system without direct I/O (tmpfs): buffered reads it is
        return False
    return True


def clear_direct(fd: int) -> None:
    """Undo :func:`bypass_cache_if_cold` (a device that refuses 4 KiB-aligned direct reads)."""
    direct = getattr(os, "O_DIRECT", 0)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~direct)


def wipe(buf: Any) -> None:
    """Overwrite ``buf`` with zeros in place, without a temporary copy of its size.

    Works while tensors still view it. A closed map holds nothing any more and is skipped.
    """
    if isinstance(buf, mmap.mmap) and buf.closed:
        return
    size = len(buf)
    if size:
        ctypes.memset((ctypes.c_char * size).from_buffer(buf), 0, size)


def release(buf: Any) -> None:
    """Wipe ``buf``, then unmap it if it is a map that nothing views any more."""
    wipe(buf)
    if isinstance(buf, mmap.mmap):
        with contextlib.suppress(BufferError):  # still viewed: unmapped when the views go
            buf.close()


__all__ = [
    "DIRECT_ALIGN",
    "PlainBuffer",
    "Prefault",
    "aligned",
    "allocate",
    "bypass_cache_if_cold",
    "cached_fraction",
    "clear_direct",
    "prefaulter",
    "release",
    "wipe",
]
