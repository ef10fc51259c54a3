"""The secure home: creation, unlock, K2 (wrong passphrase audited), A2 through the home."""

from __future__ import annotations

from pathlib import Path

import pytest

from secure.audit import verify_log
from secure.errors import AuditUnavailable, SealedError, SecureError
from secure.home import HomeLayout, unlock_home
from secure.keys import LABEL_AUDIT_MAC

from .helpers import NOW, make_home


def test_create_refuses_existing_home(tmp_path: Path) -> None:
    make_home(tmp_path / "h")
    with pytest.raises(SecureError) as info:
        make_home(tmp_path / "h")
    assert info.value.code == "EXISTS"


def test_k2_wrong_passphrase_stays_sealed_and_is_audited(tmp_path: Path) -> None:
    layout = HomeLayout(tmp_path / "h")
    make_home(layout.root)
    for _ in range(2):
        with pytest.raises(SealedError) as info:
            unlock_home(layout, "wrong", now=NOW + 5, actor="mallory")
        assert info.value.code == "WRONG_PASSPHRASE"
    home = unlock_home(layout, "pass phrase for tests", now=NOW + 10, actor="admin")
    refused = [e for e in home.audit.tail(10) if e.action == "root_key.unseal"]
    assert [(e.actor, e.outcome, e.reason, e.time) for e in refused] == [
        ("mallory", "refused", "WRONG_PASSPHRASE", NOW + 5)
    ] * 2
    assert not layout.unseal_failures.exists()
    result = verify_log(layout.audit, mac_key=home.derive(LABEL_AUDIT_MAC))
    assert result.ok, result.problem


def test_no_secret_in_home_files(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    ark = home._ark
    for path in (tmp_path / "h").rglob("*"):
        if path.is_file():
            assert ark not in path.read_bytes()
            assert b"pass phrase for tests" not in path.read_bytes()


def test_a2_audit_not_writable_refuses_action(tmp_path: Path) -> None:
    home = make_home(tmp_path / "h")
    log = home.layout.audit
    log.unlink()
    log.mkdir()  # a directory where the log must be: fails even for root
    with pytest.raises(AuditUnavailable):
        home.record("policy.install", actor="admin", now=NOW)
