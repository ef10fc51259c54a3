"""Tamper-evident audit log: append-only JSON lines, hash-chained, MACed, with signed checkpoints.

Each line is the canonical JSON of one :class:`AuditEntry`. ``prev`` is the SHA-256 of the previous
line's bytes (so the chain commits to every byte before it), ``mac`` is an HMAC-SHA256 under the
audit MAC key over the entry without ``mac``. Someone without the key can neither forge, edit,
insert nor reorder entries without :func:`verify_log` naming the first broken line.

Limit: cutting whole entries off the *end* of the file leaves a valid shorter chain. That is only
detectable against an outside high-water mark: the newest signed checkpoint or a sequence number
kept elsewhere (``verify_log(..., expect_min_seq=N)``). Checkpoints (action ``audit.checkpoint``)
carry an Ed25519 signature by the appliance identity over (seq, hash of the chain so far), so even
a holder of the MAC key cannot rewrite history before the newest checkpoint.

Writing fails closed: if an entry cannot be made durable, :class:`AuditUnavailable` is raised and
the caller must refuse the action. A failed write is cut back so that no half entry remains.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ._encoding import b64d, b64e, canonical_json, fsync_dir, parse_json_object, u64
from .errors import AuditBroken, AuditUnavailable, FormatError

Signer = Callable[[bytes], bytes]
Verifier = Callable[[bytes, bytes], bool]
DetailValue = str | int | bool

GENESIS = "0" * 64  # ``prev`` of the first entry
CHECKPOINT_ACTION = "audit.checkpoint"
OUTCOMES = frozenset({"ok", "refused", "error"})
MAX_LINE = 64 * 1024
MIN_KEY = 32
_FIELDS = ("seq", "time", "actor", "action", "object", "outcome", "reason", "details", "prev")
_TEXT_LIMITS = {"actor": 256, "action": 128, "object": 1024, "reason": 128}
_MAX_DETAILS, _MAX_DETAIL_KEY, _MAX_DETAIL_TEXT = 32, 64, 4096
_MAX_INT = 2**63 - 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAC_CONTEXT = b"knowledge-appliance/audit-entry/v1\x00"
_PROTECT_CONTEXT = b"knowledge-appliance/audit-protect/v1\x00"
_CHECKPOINT_CONTEXT = b"knowledge-appliance/audit-checkpoint/v1\x00"
_CHECKPOINT_FIELDS = {
    "actor": "audit",
    "action": CHECKPOINT_ACTION,
    "object": "",
    "outcome": "ok",
    "reason": "",
}


@dataclass(frozen=True)
class AuditEntry:
    """One well-formed entry; its MAC and chain position are checked by :func:`verify_log`."""

    seq: int
    time: int
    actor: str
    action: str
    object: str
    outcome: str
    reason: str
    details: Mapping[str, DetailValue]
    prev: str
    mac: str

    @classmethod
    def from_line(cls, line: bytes) -> AuditEntry:
        """Strictly parse one line (an optional trailing newline is allowed); FormatError if not."""
        if line.endswith(b"\n"):
            line = line[:-1]
        try:
            obj = parse_json_object(line, what="audit entry", limit=MAX_LINE)
        except ValueError as exc:  # e.g. an integer with more digits than Python will parse
            raise FormatError("The audit entry is not valid JSON.") from exc
        if set(obj) != {*_FIELDS, "mac"}:
            raise FormatError("The audit entry does not have exactly the expected fields.")
        if not isinstance(obj["mac"], str) or not _HEX64.fullmatch(obj["mac"]):
            raise FormatError("The audit entry field 'mac' must be 64 lowercase hex digits.")
        _check_body(obj)
        if canonical_json(obj) != line:
            raise FormatError("The audit entry is not in canonical form.")
        return cls(**obj)

    def body(self) -> dict[str, Any]:
        """The entry without its MAC: what the MAC covers."""
        return {name: getattr(self, name) for name in _FIELDS} | {"details": dict(self.details)}

    def to_line(self) -> bytes:
        """Canonical JSON bytes, without the newline."""
        return canonical_json(self.body() | {"mac": self.mac})

    @property
    def is_checkpoint(self) -> bool:
        return self.action == CHECKPOINT_ACTION


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_log`; ``entries`` counts the entries that verified before any break.

    ``first_bad_seq`` is the sequence number the chain expected at ``first_bad_line``.
    """

    ok: bool
    entries: int
    first_bad_line: int | None = None
    first_bad_seq: int | None = None
    problem: str = ""
    checkpoints: int = 0
    last_seq: int = 0

    def raise_if_broken(self) -> None:
        if self.ok:
            return
        raise AuditBroken(
            f"The audit log is broken at line {self.first_bad_line} "
            f"(entry {self.first_bad_seq}): {self.problem}.",
            line=self.first_bad_line or 0,
            seq=self.first_bad_seq,
        )


def checkpoint_message(seq: int, chain_hash: str) -> bytes:
    """The bytes a checkpoint signs: its own seq and the hash of the last line before it."""
    return _CHECKPOINT_CONTEXT + u64(seq) + bytes.fromhex(chain_hash)


def line_hash(line: bytes) -> str:
    """Chain hash of one line (without its newline)."""
    return hashlib.sha256(line).hexdigest()


def entry_mac(mac_key: bytes, body: Mapping[str, Any]) -> str:
    return hmac.new(mac_key, _MAC_CONTEXT + canonical_json(body), hashlib.sha256).hexdigest()


class AuditLog:
    """Appends entries to one log file; safe across threads and processes (``flock``)."""

    def __init__(
        self,
        path: Path,
        *,
        mac_key: bytes,
        protect_key: bytes | None = None,
        signer: Signer | None = None,
        checkpoint_every: int = 100,
    ) -> None:
        _check_key(mac_key, "mac_key")
        if protect_key is not None:
            _check_key(protect_key, "protect_key")
            if hmac.compare_digest(protect_key, mac_key):
                raise ValueError("protect_key must differ from mac_key.")
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1.")
        self.path = Path(path)
        self._mac_key = mac_key
        self._protect_key = protect_key
        self._signer = signer
        self._every = checkpoint_every

    def append(
        self,
        *,
        time: int,
        actor: str,
        action: str,
        object: str = "",  # the field is called "object" in the log format
        outcome: str = "ok",
        reason: str = "",
        details: Mapping[str, DetailValue] | None = None,
    ) -> AuditEntry:
        """Append one entry and fsync it; raise AuditUnavailable if it cannot be made durable."""
        if action == CHECKPOINT_ACTION:
            raise ValueError("Use AuditLog.checkpoint() to write a checkpoint.")
        fields = {
            "time": time,
            "actor": actor,
            "action": action,
            "object": object,
            "outcome": outcome,
            "reason": reason,
            "details": dict(details or {}),
        }
        try:
            _check_body({"seq": 1, "prev": GENESIS, **fields})
        except FormatError as exc:
            raise ValueError(f"Invalid audit entry: {exc.message}") from exc
        return self._write(fields, force_checkpoint=False)[0]

    def checkpoint(self, *, time: int) -> AuditEntry:
        """Write a signed checkpoint now (e.g. at shutdown or before a backup)."""
        if self._signer is None:
            raise ValueError("This audit log has no signer, so it cannot write checkpoints.")
        return self._write({"time": time}, force_checkpoint=True)[-1]

    def tail(self, n: int = 20) -> list[AuditEntry]:
        """The last ``n`` entries, oldest first (see :func:`tail_log`)."""
        return tail_log(self.path, n)

    def protect(self, value: str) -> str:
        """A keyed hash of a sensitive value, so the log can match it without revealing it."""
        if self._protect_key is None:
            raise ValueError("This audit log has no protect_key.")
        digest = hmac.new(self._protect_key, _PROTECT_CONTEXT + value.encode("utf-8"), "sha256")
        return "hmac:" + digest.hexdigest()

    def _write(self, fields: dict[str, Any], *, force_checkpoint: bool) -> list[AuditEntry]:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise self._unavailable(exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            seq, prev = self._head(fd, size)
            entries = self._build(seq, prev, fields, force_checkpoint=force_checkpoint)
            if size == 0:
                fsync_dir(self.path.parent)  # make a newly created file's name durable first
            _write_durably(fd, b"".join(e.to_line() + b"\n" for e in entries), size)
            return entries
        except OSError as exc:
            raise self._unavailable(exc) from exc
        finally:
            os.close(fd)  # also releases the lock

    def _head(self, fd: int, size: int) -> tuple[int, str]:
        """(seq, line hash) of the last entry, refusing to extend a broken or forged chain head."""
        if size == 0:
            return 0, GENESIS
        lines = _tail_lines(fd, size, 1, keep_partial=True)
        last = lines[-1] if lines else b""
        try:
            if not last.endswith(b"\n"):
                raise FormatError("The last line is incomplete.")
            entry = AuditEntry.from_line(last)
            if not hmac.compare_digest(entry_mac(self._mac_key, entry.body()), entry.mac):
                raise FormatError("The last entry fails its MAC.")
        except FormatError as exc:
            raise AuditUnavailable(
                f"The audit log at {self.path} ends with a broken entry ({exc.message}); "
                "the action was refused.",
                hint="Run `appliance audit verify`, keep the file as evidence and start a new log.",
            ) from exc
        return entry.seq, line_hash(last[:-1])

    def _build(
        self, seq: int, prev: str, fields: dict[str, Any], *, force_checkpoint: bool
    ) -> list[AuditEntry]:
        entries: list[AuditEntry] = []
        if not force_checkpoint:
            entries.append(self._seal(seq + 1, prev, fields))
            seq, prev = seq + 1, line_hash(entries[-1].to_line())
        if force_checkpoint or (self._signer is not None and seq % self._every == 0):
            entries.append(self._checkpoint_entry(seq + 1, prev, fields["time"]))
        return entries

    def _checkpoint_entry(self, seq: int, prev: str, time: int) -> AuditEntry:
        assert self._signer is not None
        signature = self._signer(checkpoint_message(seq, prev))
        details = {"signature": b64e(signature)}
        return self._seal(seq, prev, _CHECKPOINT_FIELDS | {"time": time, "details": details})

    def _seal(self, seq: int, prev: str, fields: dict[str, Any]) -> AuditEntry:
        body = {"seq": seq, "prev": prev, **fields}
        return AuditEntry(**body, mac=entry_mac(self._mac_key, body))

    def _unavailable(self, exc: OSError) -> AuditUnavailable:
        return AuditUnavailable(
            f"The audit log at {self.path} cannot be written ({exc.strerror or exc}); "
            "the action was refused.",
            hint="Free disk space or fix permissions.",
        )


def tail_log(path: Path, n: int = 20) -> list[AuditEntry]:
    """The last ``n`` entries, oldest first, read from the end of the file.

    Needs no key and checks no MAC (use :func:`verify_log` for that); FormatError on a malformed
    line, AuditUnavailable if the file cannot be read.
    """
    try:
        with open(path, "rb") as f:
            lines = _tail_lines(f.fileno(), os.fstat(f.fileno()).st_size, n)
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    return [AuditEntry.from_line(line) for line in lines]


def verify_log(
    path: Path,
    *,
    mac_key: bytes,
    verifier: Verifier | None = None,
    expect_min_seq: int | None = None,
) -> VerifyResult:
    """Check every entry in order and name the first broken one.

    Checkpoint signatures are checked only when a ``verifier`` is given; it must return a bool
    (not raise) for a bad signature. ``expect_min_seq`` is an outside high-water mark: a log that
    ends before it has lost entries from its end. Wrong ``mac_key``: the first entry is named.
    """
    _check_key(mac_key, "mac_key")
    try:
        with open(path, "rb") as f:
            chain = _Chain(mac_key, verifier)
            result = chain.run(f)
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    if result is None and expect_min_seq is not None and chain.seq < expect_min_seq:
        result = chain.bad(
            chain.lines + 1,
            f"the log ends at entry {chain.seq} but entry {expect_min_seq} is known to exist "
            "(entries were cut from the end)",
        )
    return result or VerifyResult(True, chain.seq, None, None, "", chain.checkpoints, chain.seq)


@dataclass
class _Chain:
    """Running state of a verification pass."""

    mac_key: bytes
    verifier: Verifier | None
    seq: int = 0
    prev: str = GENESIS
    lines: int = 0
    checkpoints: int = 0

    def run(self, f: BinaryIO) -> VerifyResult | None:
        while raw := f.readline(MAX_LINE + 2):
            self.lines += 1
            problem = self.feed(raw)
            if problem:
                return self.bad(self.lines, problem)
        return None

    def feed(self, raw: bytes) -> str:
        """Check one raw line against the chain; return a problem, or "" and advance."""
        if not raw.endswith(b"\n"):
            return "the line is too long" if len(raw) > MAX_LINE else "the last line is incomplete"
        try:
            entry = AuditEntry.from_line(raw)
        except FormatError as exc:
            return f"the line is not a valid entry ({exc.message})"
        problem = self._check(entry)
        if not problem:
            self.seq, self.prev = entry.seq, line_hash(raw[:-1])
            self.checkpoints += entry.is_checkpoint
        return problem

    def _check(self, entry: AuditEntry) -> str:
        if not hmac.compare_digest(entry_mac(self.mac_key, entry.body()), entry.mac):
            return "the entry fails its MAC (edited, forged or corrupted)"
        if entry.seq != self.seq + 1:
            return f"expected entry {self.seq + 1} but found entry {entry.seq} (deleted or moved)"
        if entry.prev != self.prev:
            return "the entry does not chain to the line before it (inserted or moved)"
        if entry.is_checkpoint:
            return self._check_checkpoint(entry)
        return ""

    def _check_checkpoint(self, entry: AuditEntry) -> str:
        if set(entry.details) != {"signature"} or entry.actor != "audit":
            return "the checkpoint is malformed"
        if self.verifier is None:
            return ""
        try:
            signature = b64d(entry.details["signature"], what="checkpoint signature")
        except FormatError:
            return "the checkpoint signature is malformed"
        if not self.verifier(checkpoint_message(entry.seq, entry.prev), signature):
            return "the checkpoint signature is not valid"
        return ""

    def bad(self, line: int, problem: str) -> VerifyResult:
        return VerifyResult(
            False, self.seq, line, self.seq + 1, problem, self.checkpoints, self.seq
        )


def _check_body(obj: Mapping[str, Any]) -> None:
    """Validate every field except ``mac``; FormatError names the first bad field."""
    for name in ("seq", "time"):
        value = obj[name]
        if not _is_int(value) or not (0 <= value <= _MAX_INT) or (name == "seq" and value < 1):
            raise FormatError(f"The audit entry field '{name}' must be a non-negative integer.")
    for name, limit in _TEXT_LIMITS.items():
        if not isinstance(obj[name], str) or len(obj[name]) > limit:
            raise FormatError(f"The audit entry field '{name}' must be text of <= {limit} chars.")
    if not obj["action"]:
        raise FormatError("The audit entry field 'action' must not be empty.")
    if obj["outcome"] not in OUTCOMES:
        raise FormatError("The audit entry field 'outcome' must be one of ok, refused, error.")
    if not isinstance(obj["prev"], str) or not _HEX64.fullmatch(obj["prev"]):
        raise FormatError("The audit entry field 'prev' must be 64 lowercase hex digits.")
    _check_details(obj["details"])
    try:
        canonical_json(obj)
    except (UnicodeEncodeError, ValueError) as exc:
        raise FormatError("The audit entry holds text that is not valid Unicode.") from exc


def _check_details(details: Any) -> None:
    if not isinstance(details, dict) or len(details) > _MAX_DETAILS:
        raise FormatError(f"The audit entry 'details' must be an object of <= {_MAX_DETAILS} keys.")
    for key, value in details.items():
        if not isinstance(key, str) or not 0 < len(key) <= _MAX_DETAIL_KEY:
            raise FormatError(f"Audit detail keys must be text of 1-{_MAX_DETAIL_KEY} chars.")
        if isinstance(value, str):
            ok = len(value) <= _MAX_DETAIL_TEXT
        else:
            ok = isinstance(value, bool) or (_is_int(value) and abs(value) <= _MAX_INT)
        if not ok:
            raise FormatError(f"Audit detail '{key}' must be short text, an integer or a boolean.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unreadable(path: Path, exc: OSError) -> AuditUnavailable:
    return AuditUnavailable(
        f"The audit log at {path} cannot be read ({exc.strerror or exc}).",
        hint="Check that the file exists and that this user may read it.",
    )


def _check_key(key: bytes, name: str) -> None:
    if not isinstance(key, bytes) or len(key) < MIN_KEY:
        raise ValueError(f"{name} must be at least {MIN_KEY} bytes.")


def _write_durably(fd: int, data: bytes, size: int) -> None:
    """Write all of ``data`` and fsync; on failure cut the file back to ``size`` and re-raise."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):  # best effort: the original error is what matters
            os.ftruncate(fd, size)
        raise


def _tail_lines(fd: int, size: int, n: int, *, keep_partial: bool = False) -> list[bytes]:
    """The last ``n`` lines (with newlines) read backwards from ``size``, never the whole file.

    Reads at most about ``n + 1`` maximal lines. A final line without a newline is returned only
    with ``keep_partial`` (for the append check).
    """
    if n <= 0 or size == 0:
        return []
    end, buf, limit = size, b"", (n + 1) * (MAX_LINE + 2)
    while end > 0 and buf.count(b"\n") <= n and len(buf) < limit:
        start = max(0, end - 8192)
        buf = os.pread(fd, end - start, start) + buf
        end = start
    pieces = buf.split(b"\n")
    lines = [piece + b"\n" for piece in pieces[:-1]]
    if pieces[-1] and keep_partial:
        lines.append(pieces[-1])
    if end > 0:
        lines = lines[1:]  # the first piece may be the middle of a line
    return lines[-n:]
