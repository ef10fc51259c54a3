"""Web sessions: login through the user store (lockout), expiry, logout, invalidation, audit."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import AccountLocked, AuthError
from appliance.sessions import SessionStore
from appliance.users import ScryptParams, UserStore
from secure.home import UnlockedHome
from tests.secure.helpers import make_home

NOW = 1_900_000_000
PW = "a long enough password"


@pytest.fixture
def parts(tmp_path: Path) -> tuple[SessionStore, UserStore, UnlockedHome]:
    home = make_home(tmp_path / "home", now=NOW)
    users = UserStore(tmp_path / "appliance.db", scrypt=ScryptParams(n=2**10), max_failures=3)
    users.add_user("ann", role="staff", groups="hr", password=PW, now=NOW)
    users.add_user("ben", role="admin", groups="", password=PW, now=NOW)
    return SessionStore(tmp_path / "sessions.db", users, home, minutes=10), users, home


def test_login_resolves_and_stores_only_a_hash(parts, tmp_path: Path) -> None:
    sessions, _, home = parts
    sid, user = sessions.login("ann", PW, now=NOW, client="127.0.0.1")
    assert user.name == "ann" and len(sid) == 43
    assert sessions.resolve(sid, now=NOW + 1).user.groups == ("hr",)
    assert sid.encode() not in (tmp_path / "sessions.db").read_bytes()
    last = home.audit.tail(1)[0]
    assert (last.action, last.actor, last.outcome) == ("session.login", "user:ann", "ok")


def test_wrong_password_audited_and_lockout_applies(parts) -> None:
    sessions, _, home = parts
    for _ in range(3):
        with pytest.raises(AuthError):
            sessions.login("ann", "wrong password!!", now=NOW)
    with pytest.raises(AccountLocked):
        sessions.login("ann", PW, now=NOW + 1)
    entries = [e for e in home.audit.tail(10) if e.action == "session.login"]
    assert [e.reason for e in entries] == ["AUTH_FAILED"] * 3 + ["ACCOUNT_LOCKED"]
    with pytest.raises(AuthError):
        sessions.login("../etc", PW, now=NOW)
    assert home.audit.tail(1)[0].actor == "user:(invalid name)"


def test_session_expires(parts) -> None:
    sessions, _, _ = parts
    sid, _ = sessions.login("ann", PW, now=NOW)
    sessions.resolve(sid, now=NOW + 599)
    with pytest.raises(AuthError) as err:
        sessions.resolve(sid, now=NOW + 600)
    assert err.value.code == "SESSION_INVALID"
    with pytest.raises(AuthError):  # gone for good, even with an earlier clock
        sessions.resolve(sid, now=NOW)


def test_logout_and_garbage_ids(parts) -> None:
    sessions, _, home = parts
    sid, _ = sessions.login("ann", PW, now=NOW)
    assert sessions.logout(sid, now=NOW + 5)
    assert home.audit.tail(1)[0].action == "session.logout"
    assert not sessions.logout(sid, now=NOW + 6)
    for bad in (sid, None, "", "x" * 43, sid[:-1], 42):
        with pytest.raises(AuthError):
            sessions.resolve(bad, now=NOW + 7)  # type: ignore[arg-type]


def test_disable_remove_and_password_change_end_sessions(parts) -> None:
    sessions, users, _ = parts
    sid, _ = sessions.login("ann", PW, now=NOW)
    users.disable("ann")
    with pytest.raises(AuthError):
        sessions.resolve(sid, now=NOW + 1)
    users.enable("ann")
    with pytest.raises(AuthError):  # a disabled session does not come back
        sessions.resolve(sid, now=NOW + 2)
    sid, _ = sessions.login("ann", PW, now=NOW + 3)
    users.set_password("ann", "another long password", now=NOW + 4)
    with pytest.raises(AuthError):
        sessions.resolve(sid, now=NOW + 5)
    sid, _ = sessions.login("ben", PW, now=NOW + 6)
    users.remove("ben")
    with pytest.raises(AuthError):
        sessions.resolve(sid, now=NOW + 7)


def test_end_user_sessions_and_purge(parts) -> None:
    sessions, _, _ = parts
    a1, _ = sessions.login("ann", PW, now=NOW)
    sessions.login("ann", PW, now=NOW)
    b, _ = sessions.login("ben", PW, now=NOW)
    assert sessions.active(now=NOW) == 3
    assert sessions.end_user_sessions("ANN") == 2
    with pytest.raises(AuthError):
        sessions.resolve(a1, now=NOW)
    assert sessions.resolve(b, now=NOW).user.name == "ben"
    assert sessions.purge(now=NOW + 601) == 1 and sessions.active(now=NOW) == 0


def test_idle_sessions_end_and_background_reads_do_not_keep_them(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", now=NOW)
    users = UserStore(tmp_path / "appliance.db", scrypt=ScryptParams(n=2**10))
    users.add_user("ann", role="staff", groups="hr", password=PW, now=NOW)
    sessions = SessionStore(tmp_path / "s.db", users, home, minutes=60, idle_minutes=5)
    sid, _ = sessions.login("ann", PW, now=NOW)
    sessions.resolve(sid, now=NOW + 200)  # activity: idle counts from here
    sessions.resolve(sid, now=NOW + 450, touch=False)  # a poll, not activity
    assert sessions.active(now=NOW + 499) == 1 and sessions.active(now=NOW + 500) == 0
    with pytest.raises(AuthError) as err:
        sessions.resolve(sid, now=NOW + 500)
    assert err.value.code == "SESSION_INVALID"
    with pytest.raises(AuthError):  # gone for good
        sessions.resolve(sid, now=NOW + 201)
    other, _ = sessions.login("ann", PW, now=NOW)
    assert sessions.purge(now=NOW + 299) == 0 and sessions.purge(now=NOW + 300) == 1
    with pytest.raises(AuthError):
        sessions.resolve(other, now=NOW + 10)
