"""AES-256-GCM STREAM chunk engine behind the container format (private to `secure/`).

`container.py` owns the byte layout and the parsing; this module owns what turns a data key into
chunk plaintext: key derivation, the header MAC, STREAM nonces, and the fast path that decrypts
every chunk straight into the caller's buffer (``update_into``), in parallel when asked. Copies,
not AES, are what cost time on a 1 GB model (ARCHITECTURE.md), so nothing here copies plaintext.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import mmap
import os
import queue
import struct
import threading
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import _membuf
from .errors import TamperedError

KEY_LEN = 32
TAG_LEN = 16
MAC_LEN = 32
SALT_LEN = 32
NONCE_PREFIX_LEN = 7
MAX_CHUNKS = 1 << 32  # the chunk counter in the nonce is a u32
_MAC_INFO = b"kapp/v1 header-mac"
_PAYLOAD_INFO = b"kapp/v1 payload"
_ZEROS = bytes(1 << 20)
_PREFETCH_DEPTH = 2
#: Plaintext faulted in per ``prefault`` call: big enough that the system call is amortised,
#: small enough that the pages are still in cache when the decryptor writes them.
PREFAULT_BYTES = 8 << 20

Chunks = Generator[tuple[int, memoryview], None, None]
Prefault = Callable[[int, int], None]


def check_key(data_key: Any) -> bytes:
    """Misuse fails loudly: a key of the wrong type or length is a bug, not an attack."""
    if not isinstance(data_key, bytes | bytearray | memoryview):
        raise ValueError(f"The data key must be bytes, not {type(data_key).__name__}.")
    key = bytes(data_key)
    if len(key) != KEY_LEN:
        raise ValueError(f"The data key must be {KEY_LEN} bytes, not {len(key)}.")
    return key


def _hkdf(key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, info=info).derive(key)


def derive_keys(data_key: bytes, salt: bytes, header_prefix: bytes) -> tuple[bytes, bytes]:
    """(header MAC key, payload key). The payload key hashes the whole header prefix in, so
    every chunk tag authenticates every header field; the MAC key commits to the data key."""
    mac_key = _hkdf(data_key, salt, _MAC_INFO)
    payload_key = _hkdf(data_key, salt, _PAYLOAD_INFO + hashlib.sha256(header_prefix).digest())
    return mac_key, payload_key


def header_mac(mac_key: bytes, header_prefix: bytes) -> bytes:
    return hmac.new(mac_key, header_prefix, hashlib.sha256).digest()


def chunk_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    """STREAM nonce: prefix(7) ‖ u32 chunk counter ‖ last-chunk flag (1 byte)."""
    return prefix + struct.pack(">I", index) + (b"\x01" if last else b"\x00")


def zero(view: memoryview) -> None:
    """Overwrite a buffer so a refused decryption never leaves partial plaintext behind."""
    for start in range(0, len(view), len(_ZEROS)):
        end = min(start + len(_ZEROS), len(view))
        view[start:end] = _ZEROS[: end - start]


@dataclass(frozen=True)
class Geometry:
    """Where chunk *i* lives in the plaintext and in the container body."""

    size: int
    chunk_size: int
    chunk_count: int
    body_offset: int

    def plain_span(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(self.size, start + self.chunk_size)

    def cipher_span(self, index: int) -> tuple[int, int]:
        start = self.body_offset + index * (self.chunk_size + TAG_LEN)
        plain_start, plain_end = self.plain_span(index)
        return start, start + plain_end - plain_start + TAG_LEN

    def is_last(self, index: int) -> bool:
        return index == self.chunk_count - 1


def _update_into(ctx: Any, src: memoryview, dst: memoryview) -> None:
    """``update_into`` with an output of exactly ``len(src)`` bytes.

    cryptography >= 42 sizes the required slack from OpenSSL's block size, which is 1 for GCM, so
    the exact slice works and plaintext lands in its final place. Older releases wanted 15 spare
    bytes: then the bulk goes in place and only the last < 16 bytes go through a small scratch.
    """
    try:
        written = ctx.update_into(src, dst)
    except ValueError:
        head = max(0, len(src) - (algorithms.AES.block_size // 8 - 1))
        written = ctx.update_into(src[:head], dst) if head else 0
        tail = ctx.update(src[written:])
        dst[written : written + len(tail)] = tail
        written += len(tail)
    if written != len(src):
        raise RuntimeError(f"GCM produced {written} of {len(src)} bytes; cryptography changed?")


class ChunkCipher:
    """AES-256-GCM over the chunks of one container, under its payload key."""

    def __init__(self, payload_key: bytes, nonce_prefix: bytes, geometry: Geometry) -> None:
        self._aes = algorithms.AES(payload_key)
        self._prefix = nonce_prefix
        self.geometry = geometry

    def _nonce(self, index: int) -> bytes:
        return chunk_nonce(self._prefix, index, self.geometry.is_last(index))

    def encrypt_into(self, index: int, plain: memoryview, out: memoryview) -> None:
        """Write ciphertext ‖ tag of chunk ``index`` into ``out`` (len(plain) + 16 bytes)."""
        ctx = Cipher(self._aes, modes.GCM(self._nonce(index))).encryptor()
        _update_into(ctx, plain, out[: len(plain)])
        ctx.finalize()
        out[len(plain) : len(plain) + TAG_LEN] = ctx.tag

    def decrypt_into(self, index: int, sealed: memoryview, out: memoryview) -> None:
        """Verify and decrypt chunk ``index`` (ciphertext ‖ tag) into ``out``; on a bad tag the
        bytes already written to ``out`` are the caller's to wipe (it wipes the whole range)."""
        body, tag = sealed[:-TAG_LEN], sealed[-TAG_LEN:]
        ctx = Cipher(self._aes, modes.GCM(self._nonce(index), bytes(tag))).decryptor()
        _update_into(ctx, body, out)
        try:
            ctx.finalize()
        except InvalidTag:
            raise TamperedError("container", detail=f"chunk {index} failed its tag") from None


def encrypt_chunks(cipher: ChunkCipher, src: BinaryIO, dst: BinaryIO) -> None:
    """Stream ``geometry.size`` bytes from ``src`` to ``dst`` as sealed chunks, one in memory."""
    geo = cipher.geometry
    plain = memoryview(bytearray(min(geo.size, geo.chunk_size)))
    sealed = memoryview(bytearray(len(plain) + TAG_LEN))
    try:
        for index in range(geo.chunk_count):
            start, end = geo.plain_span(index)
            _read_exact(src, plain[: end - start], start, geo.size)
            cipher.encrypt_into(index, plain[: end - start], sealed)
            write_all(dst, sealed[: end - start + TAG_LEN])
    finally:
        zero(plain)


def encrypt_buffer(cipher: ChunkCipher, plain: memoryview, out: memoryview) -> None:
    """Seal every chunk of ``plain`` into its final place in ``out`` (the whole container)."""
    geo = cipher.geometry
    for index in range(geo.chunk_count):
        start, end = geo.plain_span(index)
        sealed_start, sealed_end = geo.cipher_span(index)
        cipher.encrypt_into(index, plain[start:end], out[sealed_start:sealed_end])


def _read_exact(src: BinaryIO, view: memoryview, offset: int, size: int) -> None:
    done = 0
    while done < len(view):
        got = src.readinto(view[done:])  # type: ignore[attr-defined]
        if not got:
            raise ValueError(f"The source ended after {offset + done} of {size} bytes.")
        done += got


def write_all(dst: BinaryIO, data: bytes | memoryview) -> None:
    """``write`` may be partial on raw files; loop until every byte is out."""
    view = memoryview(data)
    while view:
        written = dst.write(view)
        view = view[written if written is not None else len(view) :]


def writable_view(out: Any, size: int) -> memoryview:
    """The caller's buffer as flat writable bytes of exactly ``size``; misuse is a ValueError."""
    try:
        view = memoryview(out).cast("B")
    except TypeError as exc:
        raise ValueError("The output buffer must be a C-contiguous writable buffer.") from exc
    if view.readonly:
        raise ValueError("The output buffer is read-only.")
    if len(view) != size:
        raise ValueError(f"The output buffer holds {len(view)} bytes; the plaintext is {size}.")
    return view


class Source(Protocol):
    """Where sealed chunks come from: an in-memory blob or a file read with ``preadv``."""

    geometry: Geometry

    def chunks(self, indices: range) -> Chunks:
        """Yield (index, ciphertext ‖ tag) in order; a view is valid until the next one."""
        ...


class MemorySource:
    """Chunks are slices of the blob itself: zero copies."""

    def __init__(self, blob: memoryview, geometry: Geometry) -> None:
        self._blob = blob
        self.geometry = geometry

    def chunks(self, indices: range) -> Chunks:
        for index in indices:
            start, end = self.geometry.cipher_span(index)
            yield index, self._blob[start:end]


class FileSource:
    """Chunks are read with ``preadv`` into reusable buffers by a read-ahead thread, so reading
    chunk i+1 overlaps decrypting chunk i (both release the GIL).

    ``direct``: ``fd`` has O_DIRECT set (a file that is not in the page cache, see
    ``_membuf.bypass_cache_if_cold``), so every read covers whole aligned blocks into an aligned
    buffer and the chunk is a slice of it.
    """

    def __init__(self, fd: int, geometry: Geometry, *, direct: bool = False) -> None:
        self._fd = fd
        self.geometry = geometry
        self._align = _membuf.DIRECT_ALIGN if direct else 1

    def buffer(self) -> bytearray | mmap.mmap:
        """A buffer that :meth:`read` can fill with any one chunk."""
        size = self.geometry.chunk_size + TAG_LEN
        return bytearray(size) if self._align == 1 else _membuf.aligned(size + 2 * self._align)

    def read(self, index: int, buf: bytearray | mmap.mmap) -> memoryview:
        start, end = self.geometry.cipher_span(index)
        lo, hi = start - start % self._align, -(-end // self._align) * self._align
        view = memoryview(buf)[: hi - lo]
        done = 0
        while done < end - lo:  # a direct read may stop short at the end of the file
            got = self._pread(view[done:], lo + done)
            if got == 0:
                raise TamperedError("container", detail=f"file ended inside chunk {index}")
            done += got
        return view[start - lo : end - lo]

    def _pread(self, view: memoryview, offset: int) -> int:
        try:
            return os.preadv(self._fd, [view], offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL or self._align == 1:
                raise
        # The device wants a coarser alignment than DIRECT_ALIGN: read through the cache instead.
        _membuf.clear_direct(self._fd)
        return os.preadv(self._fd, [view], offset)

    def chunks(self, indices: range) -> Chunks:
        if len(indices) < 2:
            buf = self.buffer()
            for index in indices:
                yield index, self.read(index, buf)
            return
        yield from _read_ahead(self, indices)


_Filled = tuple[int, bytearray | mmap.mmap, memoryview]


def _read_ahead(src: FileSource, indices: range) -> Chunks:
    """Yield chunks while a reader thread fills the next buffers of a small rotating pool."""
    stop = threading.Event()
    free: queue.Queue[bytearray | mmap.mmap] = queue.Queue()
    full: queue.Queue[_Filled | Exception] = queue.Queue()
    for _ in range(_PREFETCH_DEPTH + 1):
        free.put(src.buffer())

    def reader() -> None:
        try:
            for index in indices:
                buf = free.get()
                if stop.is_set():
                    return
                full.put((index, buf, src.read(index, buf)))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            full.put(exc)

    thread = threading.Thread(target=reader, name="container-read-ahead", daemon=True)
    thread.start()
    try:
        for _ in indices:
            item = full.get()
            if isinstance(item, Exception):
                raise item
            index, buf, view = item
            yield index, view
            free.put(buf)
    finally:
        stop.set()
        free.put(bytearray(0))  # wake a reader blocked on an empty pool
        thread.join()


@dataclass(frozen=True)
class _Job:
    """What every worker shares: the cipher, where chunks come from, where plaintext goes."""

    cipher: ChunkCipher
    source: Source
    out: memoryview
    base: int  # plaintext offset of ``out[0]``
    prefault: Prefault | None
    failed: threading.Event


def decrypt_range(
    cipher: ChunkCipher,
    source: Source,
    out: memoryview,
    indices: range,
    threads: int,
    prefault: Prefault | None = None,
) -> None:
    """Decrypt chunks ``indices`` into ``out`` (which starts at the first chunk's plaintext).

    Contiguous sub-ranges go to ``threads`` workers. ``prefault(start, end)``, if given, is called
    by a worker on each segment of ``out`` it is about to write, so fresh pages are faulted in
    by one batched call per segment, in parallel with the other workers (see ``_membuf``). Any
    failure wipes all of ``out`` before the error propagates, so a caller never sees partial or
    altered plaintext.
    """
    base = cipher.geometry.plain_span(indices.start)[0] if indices else 0
    job = _Job(cipher, source, out, base, prefault, threading.Event())
    parts = _split(indices, threads)
    try:
        if len(parts) == 1:
            _worker(job, parts[0])
        else:
            with ThreadPoolExecutor(max_workers=len(parts)) as pool:
                futures = [pool.submit(_worker, job, part) for part in parts]
                for future in futures:
                    future.result()
    except BaseException:
        job.failed.set()
        zero(out)
        raise


def _worker(job: _Job, indices: range) -> None:
    geo = job.cipher.geometry
    chunks = job.source.chunks(indices)
    faulted = 0  # plaintext offset up to which this worker has prefaulted ``out``
    try:
        for index, sealed in chunks:
            if job.failed.is_set():
                return
            start, end = geo.plain_span(index)
            if job.prefault is not None and end > faulted:
                lo, faulted = max(start, faulted), max(end, start + PREFAULT_BYTES)
                faulted = min(faulted, geo.plain_span(indices[-1])[1])
                job.prefault(lo - job.base, faulted - job.base)
            job.cipher.decrypt_into(index, sealed, job.out[start - job.base : end - job.base])
    except BaseException:
        job.failed.set()
        raise
    finally:
        chunks.close()


def _split(indices: range, parts: int) -> list[range]:
    parts = max(1, min(parts, len(indices)))
    step, extra = divmod(len(indices), parts)
    ranges, start = [], indices.start
    for k in range(parts):
        end = start + step + (1 if k < extra else 0)
        ranges.append(range(start, end))
        start = end
    return ranges
