"""MACed state file and trusted time (T1): boundaries, rollback, tampering, atomicity, fuzzing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import secure._encoding as encoding
from secure.clock import (
    BEFORE_ISSUED_AT,
    CLOCK_ROLLBACK,
    OFFLINE_TOO_LONG,
    REASONS,
    advance_high_water,
    check_time,
    iso,
)
from secure.errors import FormatError, PolicyRefused, SecureError, StateError, TamperedError
from secure.keys import LABEL_STATE_MAC, derive_key
from secure.state import StateFile

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "keys"
VECTOR_ARK = bytes(range(32))
KEY = b"k" * 32
T0 = 1_772_445_600  # 2026-03-02T10:00:00Z
DAY = 86_400


@pytest.fixture
def state(tmp_path: Path) -> StateFile:
    return StateFile.create(tmp_path / "state.json", KEY)


def _refused(now: int, **kw: object) -> str:
    args: dict[str, object] = {
        "high_water": 0,
        "issued_at": 0,
        "last_signed_at": 0,
        "max_offline": None,
        **kw,
    }
    with pytest.raises(PolicyRefused) as info:
        check_time(now, **args)  # type: ignore[arg-type]
    return info.value.code


def _ok(now: int, **kw: object) -> None:
    args: dict[str, object] = {
        "high_water": 0,
        "issued_at": 0,
        "last_signed_at": 0,
        "max_offline": None,
        **kw,
    }
    check_time(now, **args)  # type: ignore[arg-type]


# -- T1: trusted time ----------------------------------------------------------------------


def test_t1_clock_below_high_water_minus_skew() -> None:
    _ok(T0 - 300, high_water=T0)  # exactly at the skew: accepted
    assert _refused(T0 - 301, high_water=T0) == CLOCK_ROLLBACK
    assert _refused(T0 - 1, high_water=T0, skew=0) == CLOCK_ROLLBACK
    _ok(T0, high_water=T0, skew=0)


def test_t1_before_issued_at() -> None:
    _ok(T0 - 300, issued_at=T0)
    assert _refused(T0 - 301, issued_at=T0) == BEFORE_ISSUED_AT
    assert _refused(T0 - 1, issued_at=T0, skew=0) == BEFORE_ISSUED_AT


def test_t1_past_the_maximum_offline_period() -> None:
    _ok(T0 + 7 * DAY, last_signed_at=T0, max_offline=7 * DAY)  # exactly at the limit
    assert _refused(T0 + 7 * DAY + 1, last_signed_at=T0, max_offline=7 * DAY) == OFFLINE_TOO_LONG
    # The policy's own issue time counts as a signed artifact.
    _ok(T0 + 7 * DAY, last_signed_at=0, issued_at=T0, max_offline=7 * DAY)
    assert _refused(T0 + 8 * DAY, issued_at=T0, max_offline=7 * DAY) == OFFLINE_TOO_LONG
    _ok(T0 + 10_000 * DAY, last_signed_at=T0, max_offline=None)


def test_t1_checks_run_in_a_fixed_order() -> None:
    everything_wrong = {"high_water": T0, "issued_at": T0, "last_signed_at": 0, "max_offline": 1}
    assert _refused(T0 - DAY, **everything_wrong) == CLOCK_ROLLBACK
    assert _refused(T0 - DAY, **{**everything_wrong, "high_water": 0}) == BEFORE_ISSUED_AT


def test_t1_messages_tell_the_operator_what_to_do() -> None:
    with pytest.raises(PolicyRefused) as info:
        check_time(T0 - DAY, high_water=T0, issued_at=0, last_signed_at=0, max_offline=None)
    text = info.value.diagnostics()
    assert "2026-03-01T10:00:00Z" in text and "2026-03-02T10:00:00Z" in text
    assert "NTP" in text
    with pytest.raises(PolicyRefused) as offline:
        check_time(T0 + 9 * DAY, high_water=0, issued_at=T0, last_signed_at=T0, max_offline=7 * DAY)
    assert "7 d" in offline.value.message and "policy install" in offline.value.hint
    assert set(REASONS) == {CLOCK_ROLLBACK, BEFORE_ISSUED_AT, OFFLINE_TOO_LONG}


def test_negative_skew_or_offline_is_misuse() -> None:
    with pytest.raises(ValueError):
        _ok(T0, skew=-1)
    with pytest.raises(ValueError):
        _ok(T0, max_offline=-1)


@settings(max_examples=300, deadline=None)
@given(
    now=st.integers(0, 2**40),
    high=st.integers(0, 2**40),
    issued=st.integers(0, 2**40),
    last=st.integers(0, 2**40),
    offline=st.none() | st.integers(0, 2**32),
    skew=st.integers(0, 3600),
)
def test_t1_property_refuses_exactly_when_a_rule_is_broken(
    now: int, high: int, issued: int, last: int, offline: int | None, skew: int
) -> None:
    broken = (
        now < high - skew
        or now < issued - skew
        or (offline is not None and now > max(last, issued) + offline)
    )
    try:
        check_time(
            now,
            high_water=high,
            issued_at=issued,
            last_signed_at=last,
            max_offline=offline,
            skew=skew,
        )
    except PolicyRefused as exc:
        assert broken and exc.code in REASONS
    else:
        assert not broken


def test_high_water_only_moves_up_and_is_persisted(state: StateFile) -> None:
    assert advance_high_water(state, T0) is True
    assert StateFile.load(state.path, KEY).time_high_water == T0
    generation = state.generation
    assert advance_high_water(state, T0 - DAY) is False
    assert advance_high_water(state, T0) is False
    assert state.generation == generation  # nothing was written
    assert _refused(T0 - DAY, high_water=StateFile.load(state.path, KEY).time_high_water) == (
        CLOCK_ROLLBACK
    )


def test_high_water_ceiling_limits_a_clock_set_far_ahead(state: StateFile) -> None:
    assert advance_high_water(state, T0 + 3650 * DAY, ceiling=T0 + 7 * DAY) is True
    assert state.time_high_water == T0 + 7 * DAY
    assert advance_high_water(state, T0, save=False) is False


def test_iso_never_raises() -> None:
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert iso(10**20).startswith("@")


# -- the state file ------------------------------------------------------------------------


def test_state_round_trip(state: StateFile) -> None:
    state.advance_time(T0)
    state.note_signed_artifact(T0 - 5)
    assert state.raise_serial("iss-1", "qwen-ft", 3) is True
    assert state.raise_serial("iss-1", "qwen-ft", 2) is False
    state.raise_serial("iss-2", "qwen-ft", 9)
    assert state.revoke("pol-7") is True and state.revoke("pol-7") is False
    state.trust_issuer("vendor", b"\x01" * 32)
    state.save()
    back = StateFile.load(state.path, KEY)
    assert back.time_high_water == T0 and back.last_signed_artifact_at == T0 - 5
    assert back.serial_high_water("iss-1", "qwen-ft") == 3
    assert back.serial_high_water("iss-1", "other") == -1
    assert back.serials("iss-2") == {"qwen-ft": 9}
    assert back.is_revoked("pol-7") and back.revoked == frozenset({"pol-7"})
    assert back.trusted_issuers() == {"vendor": b"\x01" * 32}
    assert back.generation == state.generation == 2
    assert back.distrust_issuer("vendor") and not back.distrust_issuer("vendor")


def test_state_refuses_overwrite_missing_and_misuse(state: StateFile, tmp_path: Path) -> None:
    with pytest.raises(StateError, match="already exists"):
        StateFile.create(state.path, KEY)
    with pytest.raises(StateError, match="missing"):
        StateFile.load(tmp_path / "nope.json", KEY)
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError):
            state.advance_time(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        state.raise_serial("", "m", 1)
    with pytest.raises(ValueError):
        StateFile(state.path, b"short", {})


def test_every_single_byte_edit_is_refused(state: StateFile) -> None:
    state.raise_serial("iss", "model", 4)
    state.save()
    data = state.path.read_bytes()
    body_start = data.index(b'"body":"') + len(b'"body":"')
    for i in range(len(data)):
        edited = bytearray(data)
        edited[i] ^= 0x01
        with pytest.raises(SecureError) as info:
            StateFile.from_bytes(state.path, bytes(edited), KEY)
        if body_start <= i < data.index(b'","format"'):
            assert isinstance(info.value, TamperedError)
            assert "state file" in info.value.message


def test_a_stale_copy_cannot_overwrite_newer_state(state: StateFile) -> None:
    other = StateFile.load(state.path, KEY)
    other.revoke("pol-1")
    other.save()
    state.advance_time(T0)
    with pytest.raises(StateError) as info:
        state.save()
    assert info.value.code == "STATE_STALE"
    assert StateFile.load(state.path, KEY).is_revoked("pol-1")


def test_wrong_key_and_other_formats_are_refused(state: StateFile, tmp_path: Path) -> None:
    with pytest.raises(TamperedError):
        StateFile.load(state.path, b"x" * 32)
    doc = json.loads(state.path.read_bytes())
    doc["format"] = "kapp-keyring"
    with pytest.raises(TamperedError):
        StateFile.from_bytes(state.path, json.dumps(doc).encode(), KEY)
    doc["format"], doc["v"] = "kapp-state", 2
    with pytest.raises(FormatError, match="version 2"):
        StateFile.from_bytes(state.path, json.dumps(doc).encode(), KEY)


def test_failed_save_leaves_the_old_file_whole(
    state: StateFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    state.raise_serial("iss", "m", 1)
    state.save()
    before = state.path.read_bytes()
    real_write = os.write

    def torn_write(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(encoding.os, "write", torn_write)
    state.raise_serial("iss", "m", 2)
    with pytest.raises(OSError):
        state.save()
    monkeypatch.undo()
    assert state.path.read_bytes() == before
    assert StateFile.load(state.path, KEY).serial_high_water("iss", "m") == 1
    assert state.generation == 2  # the failed save did not count


def test_save_is_a_rename_of_a_complete_file(
    state: StateFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bytes] = []
    real_replace = os.replace

    def spy(src: str | Path, dst: str | Path) -> None:
        seen.append(Path(src).read_bytes())
        assert Path(dst) == state.path
        real_replace(src, dst)

    monkeypatch.setattr(encoding.os, "replace", spy)
    state.revoke("p")
    state.save()
    assert seen == [state.path.read_bytes()]
    assert [p.name for p in state.path.parent.iterdir()] == ["state.json"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=500))
def test_fuzz_state_bytes(data: bytes) -> None:
    with pytest.raises(SecureError):
        StateFile.from_bytes(Path("s.json"), data, KEY)


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=3)
)
def test_fuzz_state_mutations(edits: list[tuple[int, int]]) -> None:
    original = (VECTORS / "state_v1.json").read_bytes()
    raw = bytearray(original)
    for pos, value in edits:
        raw[pos % len(raw)] = value
    key = derive_key(VECTOR_ARK, LABEL_STATE_MAC)
    try:
        state = StateFile.from_bytes(Path("s.json"), bytes(raw), key)
    except SecureError:
        return
    assert state.serials("iss-golden") == {"model-a": 7}  # only whitespace-level changes


# -- golden vector -------------------------------------------------------------------------


def test_golden_state_file(tmp_path: Path) -> None:
    key = derive_key(VECTOR_ARK, LABEL_STATE_MAC)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        state = StateFile.create(tmp_path / "state.json", key)
        state.advance_time(T0)
        state.note_signed_artifact(T0 - DAY)
        state.raise_serial("iss-golden", "model-a", 7)
        state.revoke("pol-old")
        state.trust_issuer("vendor", b"\x05" * 32)
        state.save()
        VECTORS.mkdir(parents=True, exist_ok=True)
        (VECTORS / "state_v1.json").write_bytes(state.path.read_bytes())
    data = (VECTORS / "state_v1.json").read_bytes()
    state = StateFile.from_bytes(tmp_path / "state.json", data, key)
    assert (state.time_high_water, state.last_signed_artifact_at) == (T0, T0 - DAY)
    assert state.serials("iss-golden") == {"model-a": 7}
    assert state.revoked == frozenset({"pol-old"})
    assert state.trusted_issuers() == {"vendor": b"\x05" * 32}
    # This release keeps writing the same format: only the generation moves on.
    (tmp_path / "state.json").write_bytes(data)
    state.save()
    again = json.loads(state.path.read_bytes())
    old = json.loads(data)
    assert (again["format"], again["v"]) == (old["format"], old["v"])
    assert json.loads(again["body"]) == {**json.loads(old["body"]), "generation": 3}
