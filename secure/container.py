"""The encrypted container format: one file per model shard, config, tokenizer or document.

Layout (all integers big-endian)::

    MAGIC (8: b"KAPPCTR" ‖ version 0x01)
    u32 header length ‖ header (canonical JSON, sorted keys, <= 64 KiB)
    header MAC (32) = HMAC-SHA256(K_mac, MAGIC ‖ u32 length ‖ header)
    chunk 0 ‖ chunk 1 ‖ ... ‖ chunk n-1, each AES-256-GCM ciphertext ‖ 16-byte tag

    K_mac     = HKDF-SHA256(data_key, salt, b"kapp/v1 header-mac")
    K_payload = HKDF-SHA256(data_key, salt, b"kapp/v1 payload" ‖ SHA-256(MAGIC ‖ u32 ‖ header))
    nonce(i)  = nonce_prefix (7) ‖ u32 i ‖ 0x01 if i is the last chunk else 0x00

The MAC commits to the data key, so a wrong key is refused before any chunk work; hashing the
header into K_payload makes every chunk authenticate every header field; the STREAM nonce makes
truncation, reordering and splicing fail. Parsers check every size before any crypto and never
re-serialise a header to verify it. Every authentication failure raises the same
:class:`~secure.errors.TamperedError` (no oracle); its ``detail`` is for the audit log only.
The wrapped copies of the data key live outside the container (keyring / policy), referenced by
``key_id``, so rewrapping never rewrites payloads.
"""

from __future__ import annotations

import hmac
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from . import _aead, _membuf
from ._encoding import b64d, b64e, canonical_json, field, parse_json_object
from .errors import FormatError, TamperedError

SUITE = "AES256GCM-HKDFSHA256-STREAM"
CHUNK_SIZE = 1 << 20
MAGIC = b"KAPPCTR\x01"
MAX_HEADER_LEN = 64 * 1024
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 1 << 26
MAX_SIZE = 1 << 40  # 1 TiB per file; far above any shard, far below what breaks arithmetic
MAX_TEXT_LEN = 1024
_PREFIX_LEN = len(MAGIC) + 4
_INTS = ("size", "chunk_size", "chunk_count")
_TEXTS = ("object_id", "name", "key_id")
_FIELDS = frozenset({*_INTS, *_TEXTS, "suite", "salt", "nonce_prefix"})
_WHAT = "container"


def _tampered(detail: str) -> TamperedError:
    return TamperedError(_WHAT, detail=detail)


def chunk_count(size: int, chunk_size: int) -> int:
    """An empty plaintext is one empty final chunk, so there is always a chunk to authenticate."""
    return max(1, -(-size // chunk_size))


def container_size(size: int, header_len: int, chunk_size: int) -> int:
    """The exact file size: the one equation every parser checks before any crypto."""
    if size < 0 or header_len < 0 or chunk_size < 1:
        raise ValueError("size and header_len must be >= 0 and chunk_size >= 1.")
    count = chunk_count(size, chunk_size)
    return _PREFIX_LEN + header_len + _aead.MAC_LEN + size + count * _aead.TAG_LEN


def _text_problem(value: Any, name: str) -> str | None:
    """Ids and names end up in logs and paths: bounded, printable, valid UTF-8."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TEXT_LEN:
        return f"'{name}' must be a string of 1 to {MAX_TEXT_LEN} characters"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) < 0xE000 for c in value):
        return f"'{name}' must not hold control characters or lone surrogates"
    return None


def _check_sizes(size: int, chunk_size: int) -> str | None:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        return f"chunk size must be in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]"
    if not 0 <= size <= MAX_SIZE:
        return f"plaintext size must be in [0, {MAX_SIZE}]"
    if chunk_count(size, chunk_size) > _aead.MAX_CHUNKS:
        return "too many chunks for a 32-bit counter"
    return None


@dataclass(frozen=True)
class ContainerHeader:
    """A parsed header. ``raw`` is the exact JSON that was read; MACs cover it, never a
    re-serialisation."""

    raw: bytes
    suite: str
    object_id: str
    name: str
    key_id: str
    size: int
    chunk_size: int
    chunk_count: int
    salt: bytes
    nonce_prefix: bytes

    @property
    def prefix(self) -> bytes:
        """MAGIC ‖ u32 length ‖ header: what the MAC and K_payload cover."""
        return MAGIC + struct.pack(">I", len(self.raw)) + self.raw

    @classmethod
    def from_bytes(cls, raw: bytes) -> ContainerHeader:
        """Parse strictly: exact field set and types, limits, canonical encoding."""
        try:
            return cls._parse(bytes(raw))
        except (FormatError, ValueError) as exc:  # ValueError: e.g. a 5000-digit integer
            raise _tampered(f"header: {exc}") from None

    @classmethod
    def _parse(cls, raw: bytes) -> ContainerHeader:
        obj = parse_json_object(raw, what="container header", limit=MAX_HEADER_LEN)
        if set(obj) != _FIELDS:
            raise FormatError(f"fields {sorted(set(obj) ^ _FIELDS)} missing or unknown")
        if field(obj, "suite", str, what="header") != SUITE:
            raise FormatError("unknown suite")
        for name in _TEXTS:
            if problem := _text_problem(obj[name], name):
                raise FormatError(problem)
        size, chunk_size, count = (field(obj, k, int, what="header") for k in _INTS)
        if problem := _check_sizes(size, chunk_size):
            raise FormatError(problem)
        if count != chunk_count(size, chunk_size):
            raise FormatError("chunk count does not match size and chunk size")
        header = cls(
            raw=raw,
            suite=SUITE,
            object_id=obj["object_id"],
            name=obj["name"],
            key_id=obj["key_id"],
            size=size,
            chunk_size=chunk_size,
            chunk_count=count,
            salt=b64d(obj["salt"], what="salt", size=_aead.SALT_LEN),
            nonce_prefix=b64d(
                obj["nonce_prefix"], what="nonce prefix", size=_aead.NONCE_PREFIX_LEN
            ),
        )
        if canonical_json(obj) != raw:
            raise FormatError("header is not canonical JSON")
        return header

    @classmethod
    def build(
        cls,
        *,
        object_id: str,
        name: str,
        key_id: str,
        size: int,
        chunk_size: int,
        salt: bytes,
        nonce_prefix: bytes,
    ) -> ContainerHeader:
        """The writer's side: misuse (bad ids, sizes) raises a precise ValueError."""
        for label, value in (("object_id", object_id), ("name", name), ("key_id", key_id)):
            if problem := _text_problem(value, label):
                raise ValueError(f"Cannot build a container header: {problem}.")
        if problem := _check_sizes(size, chunk_size):
            raise ValueError(f"Cannot build a container header: {problem}.")
        if len(salt) != _aead.SALT_LEN or len(nonce_prefix) != _aead.NONCE_PREFIX_LEN:
            raise ValueError("salt must be 32 bytes and nonce_prefix 7 bytes.")
        obj = {
            "suite": SUITE,
            "object_id": object_id,
            "name": name,
            "key_id": key_id,
            "size": size,
            "chunk_size": chunk_size,
            "chunk_count": chunk_count(size, chunk_size),
            "salt": b64e(salt),
            "nonce_prefix": b64e(nonce_prefix),
        }
        return cls.from_bytes(canonical_json(obj))

    def geometry(self) -> _aead.Geometry:
        body = _PREFIX_LEN + len(self.raw) + _aead.MAC_LEN
        return _aead.Geometry(self.size, self.chunk_size, self.chunk_count, body)


def _split_prefix(prefix: bytes) -> int:
    """Check magic and return the header length, before reading (or trusting) anything else."""
    if len(prefix) < _PREFIX_LEN:
        raise _tampered("shorter than magic and header length")
    if prefix[: len(MAGIC)] != MAGIC:
        raise _tampered("bad magic or unsupported version")
    (header_len,) = struct.unpack(">I", prefix[len(MAGIC) : _PREFIX_LEN])
    if header_len > MAX_HEADER_LEN:
        raise _tampered(f"header length {header_len} over the {MAX_HEADER_LEN}-byte cap")
    return int(header_len)


def _check_total(header: ContainerHeader, actual: int) -> None:
    expected = container_size(header.size, len(header.raw), header.chunk_size)
    if actual != expected:
        raise _tampered(f"container is {actual} bytes, the header implies {expected}")


def _begin(
    data_key: bytes,
    object_id: str,
    name: str,
    key_id: str,
    size: int,
    chunk_size: int,
    salt: bytes | None,
    nonce_prefix: bytes | None,
) -> tuple[ContainerHeader, bytes, _aead.ChunkCipher]:
    """Header, the bytes before the first chunk (prefix ‖ MAC), and the chunk cipher."""
    key = _aead.check_key(data_key)
    header = ContainerHeader.build(
        object_id=object_id,
        name=name,
        key_id=key_id,
        size=size,
        chunk_size=chunk_size,
        salt=os.urandom(_aead.SALT_LEN) if salt is None else salt,
        nonce_prefix=os.urandom(_aead.NONCE_PREFIX_LEN) if nonce_prefix is None else nonce_prefix,
    )
    mac_key, payload_key = _aead.derive_keys(key, header.salt, header.prefix)
    lead = header.prefix + _aead.header_mac(mac_key, header.prefix)
    return header, lead, _aead.ChunkCipher(payload_key, header.nonce_prefix, header.geometry())


def encrypt_stream(
    src: BinaryIO,
    dst: BinaryIO,
    *,
    data_key: bytes,
    object_id: str,
    name: str,
    key_id: str,
    size: int,
    chunk_size: int = CHUNK_SIZE,
    _salt: bytes | None = None,
    _nonce_prefix: bytes | None = None,
) -> ContainerHeader:
    """Encrypt exactly ``size`` bytes of ``src`` into ``dst``, one chunk in memory at a time.

    ``_salt``/``_nonce_prefix`` exist only to freeze golden vectors; never pass them otherwise.
    """
    header, lead, cipher = _begin(
        data_key, object_id, name, key_id, size, chunk_size, _salt, _nonce_prefix
    )
    _aead.write_all(dst, lead)
    _aead.encrypt_chunks(cipher, src, dst)
    return header


def encrypt_bytes(
    data: bytes,
    *,
    data_key: bytes,
    object_id: str,
    name: str,
    key_id: str,
    chunk_size: int = CHUNK_SIZE,
    _salt: bytes | None = None,
    _nonce_prefix: bytes | None = None,
) -> bytes:
    """Encrypt an in-memory plaintext straight into a preallocated container."""
    plain = memoryview(data).cast("B")
    header, lead, cipher = _begin(
        data_key, object_id, name, key_id, len(plain), chunk_size, _salt, _nonce_prefix
    )
    out = bytearray(container_size(header.size, len(header.raw), header.chunk_size))
    out[: len(lead)] = lead
    _aead.encrypt_buffer(cipher, plain, memoryview(out))
    return bytes(out)


class Container:
    """An opened container (file or bytes): header parsed and sizes checked, no crypto yet."""

    def __init__(
        self,
        header: ContainerHeader,
        mac: bytes,
        *,
        blob: memoryview | None = None,
        path: Path | None = None,
    ) -> None:
        self.header = header
        self._mac = mac
        self._blob = blob
        self._path = path

    @classmethod
    def from_bytes(cls, blob: bytes | bytearray | memoryview) -> Container:
        view = memoryview(blob).cast("B")
        header_len = _split_prefix(bytes(view[:_PREFIX_LEN]))
        end = _PREFIX_LEN + header_len
        if len(view) < end + _aead.MAC_LEN:
            raise _tampered("shorter than its header and MAC")
        header = ContainerHeader.from_bytes(bytes(view[_PREFIX_LEN:end]))
        _check_total(header, len(view))
        return cls(header, bytes(view[end : end + _aead.MAC_LEN]), blob=view)

    @classmethod
    def open(cls, path: Path) -> Container:
        """Read only the prefix, header and MAC; chunks are read at decrypt time."""
        with open(path, "rb") as fh:
            total = os.fstat(fh.fileno()).st_size
            header_len = _split_prefix(fh.read(_PREFIX_LEN))
            rest = fh.read(header_len + _aead.MAC_LEN)
        if len(rest) != header_len + _aead.MAC_LEN:
            raise _tampered("shorter than its header and MAC")
        header = ContainerHeader.from_bytes(rest[:header_len])
        _check_total(header, total)
        return cls(header, rest[header_len:], path=Path(path))

    def _unlock(
        self, data_key: bytes, expect_object_id: str, expect_name: str
    ) -> _aead.ChunkCipher:
        """Key check (MAC) first, then the binding to the expected file: both before chunks."""
        key = _aead.check_key(data_key)
        mac_key, payload_key = _aead.derive_keys(key, self.header.salt, self.header.prefix)
        if not hmac.compare_digest(_aead.header_mac(mac_key, self.header.prefix), self._mac):
            raise _tampered("header MAC mismatch: wrong data key or edited header")
        if (self.header.object_id, self.header.name) != (expect_object_id, expect_name):
            raise _tampered(
                f"container is {self.header.object_id!r}/{self.header.name!r}, "
                f"expected {expect_object_id!r}/{expect_name!r}"
            )
        return _aead.ChunkCipher(payload_key, self.header.nonce_prefix, self.header.geometry())

    def _decrypt(
        self, cipher: _aead.ChunkCipher, out: memoryview, indices: range, threads: int
    ) -> None:
        prefault = _membuf.prefaulter(out)  # an anonymous map: fault it in segment by segment
        source: _aead.Source
        if self._blob is not None:
            source = _aead.MemorySource(self._blob, cipher.geometry)
            _aead.decrypt_range(cipher, source, out, indices, threads, prefault)
            return
        assert self._path is not None
        fd = os.open(self._path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            total = os.fstat(fd).st_size
            _check_total(self.header, total)
            direct = len(indices) > 1 and _membuf.bypass_cache_if_cold(fd, total)
            source = _aead.FileSource(fd, cipher.geometry, direct=direct)
            _aead.decrypt_range(cipher, source, out, indices, threads, prefault)
        finally:
            os.close(fd)

    def decrypt_into(
        self,
        data_key: bytes,
        out: memoryview | bytearray | mmap.mmap,
        *,
        expect_object_id: str,
        expect_name: str,
        threads: int = 1,
    ) -> None:
        """Verify and decrypt every chunk straight into ``out`` (exactly ``header.size`` bytes).

        An anonymous map (``_membuf.allocate``) is faulted in segment by segment by the workers,
        and a file that is not in the page cache is read past it (O_DIRECT). On any failure
        ``out`` is zeroed before the error is raised.
        """
        view = _aead.writable_view(out, self.header.size)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, not {threads}.")
        cipher = self._unlock(data_key, expect_object_id, expect_name)
        self._decrypt(cipher, view, range(self.header.chunk_count), threads)

    def decrypt(
        self, data_key: bytes, *, expect_object_id: str, expect_name: str, threads: int = 1
    ) -> bytearray:
        out = bytearray(self.header.size)
        self.decrypt_into(
            data_key,
            out,
            expect_object_id=expect_object_id,
            expect_name=expect_name,
            threads=threads,
        )
        return out

    def read(
        self, data_key: bytes, offset: int, length: int, *, expect_object_id: str, expect_name: str
    ) -> bytes:
        """Random access: verify and decrypt only the chunks that ``[offset, offset+length)``
        touches."""
        if offset < 0 or length < 0 or offset + length > self.header.size:
            raise ValueError(
                f"Cannot read {length} bytes at {offset} from a {self.header.size}-byte plaintext."
            )
        cipher = self._unlock(data_key, expect_object_id, expect_name)
        if length == 0:
            return b""
        cs = self.header.chunk_size
        first, last = offset // cs, (offset + length - 1) // cs
        base = first * cs
        buf = memoryview(bytearray(min(self.header.size, (last + 1) * cs) - base))
        self._decrypt(cipher, buf, range(first, last + 1), 1)
        result = bytes(buf[offset - base : offset - base + length])
        _aead.zero(buf)
        return result


def decrypt_bytes(
    blob: bytes, data_key: bytes, *, expect_object_id: str, expect_name: str
) -> bytes:
    """Verify and decrypt a whole in-memory container."""
    container = Container.from_bytes(blob)
    out = container.decrypt(data_key, expect_object_id=expect_object_id, expect_name=expect_name)
    result = bytes(out)
    _aead.zero(memoryview(out))
    return result
