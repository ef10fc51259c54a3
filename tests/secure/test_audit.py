"""Audit log: A1 (verify names the first broken entry), A2 (fail closed), concurrency, fuzz."""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secure.audit import (
    GENESIS,
    AuditEntry,
    AuditLog,
    VerifyResult,
    entry_mac,
    line_hash,
    tail_log,
    verify_log,
)
from secure.errors import AuditBroken, AuditUnavailable, FormatError, SecureError

MAC_KEY = bytes(range(32))
WRONG_KEY = bytes(range(1, 33))
PROTECT_KEY = bytes(range(100, 132))
SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(7, 39)))


def verifier(message: bytes, signature: bytes) -> bool:
    try:
        SIGNING_KEY.public_key().verify(signature, message)
    except InvalidSignature:
        return False
    return True


def make_log(path: Path, *, n: int = 30, every: int = 10) -> AuditLog:
    """n entries plus a signed checkpoint whenever seq reaches a multiple of `every`.

    For the defaults: 33 lines, checkpoints at seq 11, 21 and 31.
    """
    log = AuditLog(
        path,
        mac_key=MAC_KEY,
        protect_key=PROTECT_KEY,
        signer=SIGNING_KEY.sign,
        checkpoint_every=every,
    )
    for i in range(n):
        log.append(
            time=1_700_000_000 + i,
            actor=f"user{i % 3}",
            action="question" if i % 2 else "model.unlock",
            object=log.protect(f"question number {i}"),
            outcome=("ok", "refused", "error")[i % 3],
            reason="" if i % 3 == 0 else "POLICY_EXPIRED",
            details={"n": i, "cached": i % 2 == 0, "model": "qwen-ft"},
        )
    return log


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def check(path: Path, **kwargs: object) -> VerifyResult:
    return verify_log(path, mac_key=MAC_KEY, verifier=verifier, **kwargs)  # type: ignore[arg-type]


def assert_broken_at(result: VerifyResult, line: int, seq: int | None = None) -> None:
    assert not result.ok
    assert (result.first_bad_line, result.first_bad_seq) == (line, line if seq is None else seq)
    assert result.entries == result.first_bad_seq - 1  # type: ignore[operator]


def with_fields(line: bytes, *, mac: str | None = None, **changes: object) -> bytes:
    entry = AuditEntry.from_line(line)
    body = entry.body() | changes
    return AuditEntry(**body, mac=mac or entry.mac).to_line() + b"\n"


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit.log"
    make_log(path)
    return path


def test_round_trip_tail_and_checkpoints(log_path: Path) -> None:
    result = check(log_path)
    assert result == VerifyResult(True, 33, checkpoints=3, last_seq=33)
    result.raise_if_broken()
    lines = lines_of(log_path)
    assert all(AuditEntry.from_line(raw).to_line() + b"\n" == raw for raw in lines)
    assert AuditEntry.from_line(lines[10]).action == "audit.checkpoint"
    log = AuditLog(log_path, mac_key=MAC_KEY)
    assert [e.seq for e in log.tail(4)] == [30, 31, 32, 33]
    assert [e.seq for e in log.tail(100)] == list(range(1, 34))
    assert tail_log(log_path, 2) == log.tail(2)
    assert AuditEntry.from_line(lines[0]).prev == GENESIS
    assert AuditEntry.from_line(lines[1]).prev == line_hash(lines[0][:-1])


def test_protect_hides_values(log_path: Path) -> None:
    log = AuditLog(log_path, mac_key=MAC_KEY, protect_key=PROTECT_KEY)
    other = AuditLog(log_path, mac_key=MAC_KEY, protect_key=WRONG_KEY)
    tag = log.protect("salary of the CEO")
    assert tag.startswith("hmac:") and len(tag) == 5 + 64
    assert tag == log.protect("salary of the CEO") != log.protect("salary of the CFO")
    assert tag != other.protect("salary of the CEO")
    assert b"question number" not in log_path.read_bytes()
    with pytest.raises(ValueError, match="protect_key"):
        AuditLog(log_path, mac_key=MAC_KEY).protect("x")
    with pytest.raises(ValueError, match="differ"):
        AuditLog(log_path, mac_key=MAC_KEY, protect_key=MAC_KEY)


@pytest.mark.parametrize(("index", "stride"), [(0, 1), (10, 1), (17, 5), (32, 3)])
def test_a1_every_bit_flip_names_the_line(log_path: Path, index: int, stride: int) -> None:
    """Lines 1 and 11 (a checkpoint) get every bit flipped; others a sample of bits."""
    lines = lines_of(log_path)
    before = b"".join(lines[:index])
    for bit in range(0, 8 * len(lines[index]), stride):
        mutated = bytearray(lines[index])
        mutated[bit // 8] ^= 1 << (bit % 8)
        log_path.write_bytes(before + bytes(mutated) + b"".join(lines[index + 1 :]))
        assert_broken_at(check(log_path), index + 1)


def test_a1_deleted_entry(log_path: Path) -> None:
    lines = lines_of(log_path)
    for index in (0, 4, 10, 31):
        log_path.write_bytes(b"".join(lines[:index] + lines[index + 1 :]))
        result = check(log_path)
        assert_broken_at(result, index + 1)
        assert f"expected entry {index + 1} but found entry {index + 2}" in result.problem


def test_a1_reordered_and_replayed_entries(log_path: Path) -> None:
    lines = lines_of(log_path)
    for i, j in ((4, 5), (2, 20), (0, 32)):
        swapped = list(lines)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        log_path.write_bytes(b"".join(swapped))
        assert_broken_at(check(log_path), i + 1)
    log_path.write_bytes(b"".join([*lines[:8], lines[7], *lines[8:]]))
    assert_broken_at(check(log_path), 9)


def test_a1_inserted_forged_entry(log_path: Path) -> None:
    lines = lines_of(log_path)
    body = AuditEntry.from_line(lines[6]).body() | {"actor": "mallory"}
    forged = AuditEntry(**body, mac=entry_mac(WRONG_KEY, body)).to_line() + b"\n"
    log_path.write_bytes(b"".join([*lines[:6], forged, *lines[6:]]))
    result = check(log_path)
    assert_broken_at(result, 7)
    assert "MAC" in result.problem
    with pytest.raises(AuditBroken) as caught:
        result.raise_if_broken()
    assert (caught.value.line, caught.value.seq, caught.value.code) == (7, 7, "AUDIT_BROKEN")


def test_a1_edit_with_recomputed_chain_but_no_key(log_path: Path) -> None:
    lines = lines_of(log_path)
    lines[12] = with_fields(lines[12], outcome="ok", reason="")
    for k in range(13, len(lines)):  # relink every later entry; their MACs cannot be redone
        lines[k] = with_fields(lines[k], prev=line_hash(lines[k - 1][:-1]))
    log_path.write_bytes(b"".join(lines))
    assert_broken_at(check(log_path), 13)


def test_a1_mac_key_holder_rewriting_history_is_caught_by_checkpoint(log_path: Path) -> None:
    lines = lines_of(log_path)
    for k in range(13, len(lines)):  # edit entry 14 and redo the chain with the MAC key
        changes = {"prev": line_hash(lines[k - 1][:-1])} | ({"actor": "x"} if k == 13 else {})
        body = AuditEntry.from_line(lines[k]).body() | changes
        lines[k] = AuditEntry(**body, mac=entry_mac(MAC_KEY, body)).to_line() + b"\n"
    log_path.write_bytes(b"".join(lines))
    result = check(log_path)
    assert_broken_at(result, 21)  # the next checkpoint (seq 21) signed the old chain
    assert "signature" in result.problem
    assert verify_log(log_path, mac_key=MAC_KEY).ok  # without a verifier only MACs are checked


def test_a1_checkpoint_signed_by_another_key(log_path: Path) -> None:
    intruder = Ed25519PrivateKey.generate()
    AuditLog(log_path, mac_key=MAC_KEY, signer=intruder.sign).checkpoint(time=1)
    result = check(log_path)
    assert_broken_at(result, 34)
    assert "signature is not valid" in result.problem


def test_a1_truncation(log_path: Path) -> None:
    data = log_path.read_bytes()
    log_path.write_bytes(data[:-40])
    assert_broken_at(check(log_path), 33)
    assert "incomplete" in check(log_path).problem
    lines = lines_of(log_path)
    log_path.write_bytes(b"".join(lines[:30]))  # whole entries cut off the end: the limit
    assert check(log_path).ok
    assert_broken_at(check(log_path, expect_min_seq=33), 31)
    assert check(log_path, expect_min_seq=30).ok


def test_append_refuses_to_extend_a_broken_or_forged_head(log_path: Path) -> None:
    log = AuditLog(log_path, mac_key=MAC_KEY)
    data = log_path.read_bytes()
    for broken in (data[:-40], data + with_fields(lines_of(log_path)[-1], seq=34, mac="0" * 64)):
        log_path.write_bytes(broken)
        with pytest.raises(AuditUnavailable, match="ends with a broken entry"):
            log.append(time=1, actor="a", action="question")
        assert log_path.read_bytes() == broken
    log_path.write_bytes(data + b"x" * 300_000)  # a huge partial line is not read whole
    with pytest.raises(AuditUnavailable):
        log.append(time=1, actor="a", action="question")


def test_tail_across_block_boundaries(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.log", mac_key=MAC_KEY)
    for i in range(12):
        details = {f"part{j}": "y" * 3000 for j in range(i % 4)}  # lines up to 9 KB
        log.append(time=i, actor="a", action="ingest", details=details)
    for n in range(1, 14):
        assert [e.seq for e in log.tail(n)] == list(range(max(1, 13 - n), 13))
    (tmp_path / "empty.log").write_bytes(b"")
    assert AuditLog(tmp_path / "empty.log", mac_key=MAC_KEY).tail() == []
    with pytest.raises(AuditUnavailable, match="cannot be read"):
        AuditLog(tmp_path / "missing.log", mac_key=MAC_KEY).tail()
    with pytest.raises(AuditUnavailable, match="cannot be read"):
        verify_log(tmp_path / "missing.log", mac_key=MAC_KEY)


def test_append_validates_and_checkpoint_needs_a_signer(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.log", mac_key=MAC_KEY)
    base: dict[str, Any] = {"time": 1, "actor": "a", "action": "question"}
    bad_calls: list[dict[str, Any]] = [
        {"outcome": "maybe"},
        {"action": ""},
        {"action": "audit.checkpoint"},
        {"details": {"x": 1.5}},
        {"details": {"x": "\ud800"}},
        {"actor": "a" * 257},
        {"time": -1},
    ]
    for bad in bad_calls:
        with pytest.raises(ValueError):
            log.append(**(base | bad))
    assert not (tmp_path / "a.log").exists()
    with pytest.raises(ValueError, match="signer"):
        log.checkpoint(time=1)
    with pytest.raises(ValueError, match="32 bytes"):
        AuditLog(tmp_path / "a.log", mac_key=b"short")
    entry = AuditLog(tmp_path / "a.log", mac_key=MAC_KEY, signer=SIGNING_KEY.sign).checkpoint(
        time=5
    )
    assert (entry.seq, entry.is_checkpoint) == (1, True)
    assert check(tmp_path / "a.log") == VerifyResult(True, 1, checkpoints=1, last_seq=1)


def test_a2_unwritable_paths_refuse(tmp_path: Path) -> None:
    """Methods that fail even for root: a directory, a file as parent, a full device."""
    (tmp_path / "dir.log").mkdir()
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "full.log").symlink_to("/dev/full")
    for path in (tmp_path / "dir.log", tmp_path / "file" / "a.log", tmp_path / "full.log"):
        with pytest.raises(AuditUnavailable, match=r"cannot be written .*the action was refused"):
            AuditLog(path, mac_key=MAC_KEY).append(time=1, actor="a", action="model.unlock")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a2_read_only_file_refuses(log_path: Path) -> None:
    log_path.chmod(0o400)
    with pytest.raises(AuditUnavailable, match="fix permissions"):
        AuditLog(log_path, mac_key=MAC_KEY).append(time=1, actor="a", action="model.unlock")


def _append_over_size_limit(path: str, limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        AuditLog(Path(path), mac_key=MAC_KEY).append(time=9, actor="a", action="policy.install")
    except AuditUnavailable:
        os._exit(0)
    os._exit(1)


def test_a2_disk_full_mid_entry_leaves_nothing_half_written(log_path: Path) -> None:
    """RLIMIT_FSIZE makes the kernel accept part of the entry and then fail (EFBIG), as root too."""
    before = log_path.read_bytes()
    child = multiprocessing.get_context("fork").Process(
        target=_append_over_size_limit, args=(str(log_path), len(before) + 50)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert log_path.read_bytes() == before
    assert check(log_path).ok


def _append_many(path: str, actor: str, count: int) -> None:
    log = AuditLog(Path(path), mac_key=MAC_KEY, signer=SIGNING_KEY.sign, checkpoint_every=50)
    for i in range(count):
        log.append(time=i, actor=actor, action="question", details={"i": i})


def test_two_processes_appending_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_append_many, args=(str(path), a, 200)) for a in "ab"]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    result = check(path)
    assert result.ok and result.checkpoints == 8 and result.entries == 408
    actors = [e.actor for e in AuditLog(path, mac_key=MAC_KEY).tail(1000)]
    assert actors.count("a") == actors.count("b") == 200


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_from_line_arbitrary_bytes(data: bytes) -> None:
    try:
        entry = AuditEntry.from_line(data)
    except FormatError:
        return
    assert entry.to_line() == data.removesuffix(b"\n")


SAMPLE = bytearray()


def sample_log(tmp_dir: Path) -> bytes:
    if not SAMPLE:
        path = tmp_dir / "sample.log"
        make_log(path, n=8, every=3)
        SAMPLE.extend(path.read_bytes())
    return bytes(SAMPLE)


mutation = st.tuples(
    st.sampled_from(["flip", "delete", "insert", "duplicate", "truncate"]),
    st.integers(0, 10_000),
    st.integers(1, 400),
    st.binary(min_size=1, max_size=40),
)


def mutate(data: bytes, ops: list[tuple[str, int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, pos, length, payload in ops:
        pos %= len(out) + 1
        if kind == "flip" and pos < len(out):
            out[pos] ^= payload[0] or 1
        elif kind == "delete":
            del out[pos : pos + length]
        elif kind == "insert":
            out[pos:pos] = payload
        elif kind == "duplicate":
            out[pos:pos] = out[pos : pos + length]
        elif kind == "truncate":
            del out[pos:]
    return bytes(out)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_verify_names_the_first_changed_line(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, int, bytes]]
) -> None:
    """Without the key, the only undetectable change is cutting whole lines off the end."""
    tmp_dir = tmp_path_factory.getbasetemp()
    original = sample_log(tmp_dir)
    data = mutate(original, ops)
    path = tmp_dir / "fuzz.log"
    path.write_bytes(data)
    try:
        result = check(path)
    except SecureError:
        return
    complete, known = data.split(b"\n")[:-1], original.split(b"\n")[:-1]
    same = 0
    while same < min(len(complete), len(known)) and complete[same] == known[same]:
        same += 1
    is_prefix = original.startswith(data) and (not data or data.endswith(b"\n"))
    assert result.ok == is_prefix
    if not result.ok:
        assert (result.first_bad_line, result.first_bad_seq) == (same + 1, same + 1)
