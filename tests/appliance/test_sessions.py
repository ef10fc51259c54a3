"""Web sessions: login through the throttles and the user store, expiry, logout, invalidation,
audit. The attacker's side (guessing from one address, from many, at one account) and the
victim's side (the real user still gets in from a recognised address or device)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import AuthError, LoginThrottled
from appliance.login_guard import LoginLimits, device_token
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


def _logins(home: UnlockedHome) -> list[tuple[str, str, str]]:
    entries = [e for e in home.audit.tail(1000) if e.action == "session.login"]
    return [(e.actor, e.outcome, e.reason) for e in entries]


def _fail(sessions: SessionStore, name: str, password: str, **kw: object) -> AuthError:
    with pytest.raises(AuthError) as caught:
        sessions.login(name, password, **kw)  # type: ignore[arg-type]
    return caught.value


def test_every_failure_says_the_same_and_the_audit_log_knows_why(parts) -> None:
    sessions, users, home = parts
    users.add_user("cy", role="staff", groups="", password=PW, now=NOW)
    users.disable("cy")
    for i in range(3):  # ann's account is now delayed for clients not recognised for it
        _fail(sessions, "ann", "wrong password!!", now=NOW, client=f"192.0.2.{i}")
    told = {
        (type(e), e.code, e.diagnostics())
        for e in (
            _fail(sessions, "nobody", PW, now=NOW, client="198.51.100.1"),
            _fail(sessions, "ann", "wrong password!!", now=NOW, client="198.51.100.2"),
            _fail(sessions, "cy", PW, now=NOW, client="198.51.100.3"),  # disabled, right pw
            _fail(sessions, "ann", PW, now=NOW, client="198.51.100.4"),  # delayed, right pw
            _fail(sessions, "../etc", PW, now=NOW, client="198.51.100.5"),
        )
    }
    assert told == {
        (AuthError, "AUTH_FAILED", "The user name or password is wrong. Check both and try again.")
    }
    assert _logins(home)[-5:] == [
        ("user:nobody", "refused", "UNKNOWN_USER"),
        ("user:ann", "refused", "WRONG_PASSWORD"),
        ("user:cy", "refused", "ACCOUNT_DISABLED"),
        ("user:ann", "refused", "ACCOUNT_DELAYED"),
        ("user:(invalid name)", "refused", "INVALID_NAME"),
    ]


def test_twenty_failures_from_one_address_do_not_lock_out_the_admin(parts) -> None:
    """The attacker guesses ben's password from X; ben logs in at once from the address he used
    before, and from his own browser even at X, while strangers stay delayed."""
    sessions, users, home = parts
    sessions.login("ben", PW, now=NOW - 3600, client="203.0.113.7")  # ben's usual address
    at_x = device_token(None)
    sessions.login("ben", PW, now=NOW - 3000, client="198.51.100.9", device=at_x)  # his laptop
    refused = set()
    for i in range(20):
        refused.add(
            _fail(
                sessions, "ben", f"guess number {i:04}", now=NOW + i, client="198.51.100.9"
            ).reason
        )
    assert refused == {"WRONG_PASSWORD", "CLIENT_THROTTLED"}
    assert users.get("ben").failed_logins >= 3 and users.get("ben").is_locked(NOW + 20)
    _, user = sessions.login("ben", PW, now=NOW + 20, client="203.0.113.7")  # known address
    assert user.name == "ben"
    for i in range(3):  # the attack goes on from elsewhere
        _fail(sessions, "ben", f"more guesses {i:04}", now=NOW + 21, client=f"192.0.2.{i}")
    assert (
        _fail(sessions, "ben", PW, now=NOW + 22, client="192.0.2.200").reason == "ACCOUNT_DELAYED"
    )
    # ben's own browser at the attacker's (throttled) address: straight in
    assert (
        sessions.login("ben", PW, now=NOW + 23, client="198.51.100.9", device=at_x)[1].name == "ben"
    )
    assert _logins(home)[-1] == ("user:ben", "ok", "")


def test_an_address_that_keeps_guessing_waits_longer_each_time(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", now=NOW)
    users = UserStore(tmp_path / "appliance.db", scrypt=ScryptParams(n=2**10), max_failures=99)
    users.add_user("ann", role="staff", groups="", password=PW, now=NOW)
    limits = LoginLimits(client_failures=3, client_window_s=3600, client_max_delay_s=60)
    sessions = SessionStore(tmp_path / "sessions.db", users, home, limits=limits)
    x = "2001:db8:1:2::5"
    for _ in range(3):
        err = _fail(sessions, "ann", "wrong password!!", now=NOW, client=x)
        assert err.reason == "WRONG_PASSWORD"
    other_host_same_net = "2001:db8:1:2:aaaa::1"  # one /64 is one client
    err = _fail(sessions, "nobody", PW, now=NOW, client=other_host_same_net)
    assert isinstance(err, LoginThrottled) and err.reason == "CLIENT_THROTTLED"
    assert err.message == "Too many failed logins. Try again later."
    assert _fail(sessions, "ann", PW, now=NOW, client=x).message == err.message  # right pw too
    waits, t = [], NOW
    for _ in range(8):
        waits.append(sessions.throttle.wait_s(x, now=t))
        t += waits[-1]
        _fail(sessions, "ann", "wrong password!!", now=t, client=x)
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60]
    assert sessions.login("ann", PW, now=t, client="2001:db8:9::1")[1].name == "ann"  # elsewhere
    throttled = [r for r in _logins(home) if r[2] == "CLIENT_THROTTLED"]
    assert len(throttled) == 1  # a refused flood is audited once a minute, not per attempt
    last = [e for e in home.audit.tail(100) if e.reason == "CLIENT_THROTTLED"][-1]
    assert last.details["refused"] == 1


def test_a_global_flood_throttles_all_but_trusted_devices(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", now=NOW)
    users = UserStore(tmp_path / "appliance.db", scrypt=ScryptParams(n=2**10))
    users.add_user("ann", role="staff", groups="", password=PW, now=NOW)
    sessions = SessionStore(
        tmp_path / "sessions.db", users, home, limits=LoginLimits(global_per_minute=5)
    )
    laptop = device_token(None)
    sessions.login("ann", PW, now=NOW - 100, client="10.0.0.1", device=laptop)
    for i in range(5):  # five addresses, one guess each: no address throttle applies
        _fail(sessions, f"user{i}", "spray password 1", now=NOW + i, client=f"192.0.2.{i}")
    for who, client in (("ann", "10.0.0.1"), ("nobody", "192.0.2.99")):
        err = _fail(sessions, who, PW, now=NOW + 10, client=client)
        assert isinstance(err, LoginThrottled) and err.reason == "GLOBAL_THROTTLED"
    assert (
        sessions.login("ann", PW, now=NOW + 10, client="10.0.0.1", device=laptop)[1].name == "ann"
    )
    assert (
        sessions.login("ann", PW, now=NOW + 65, client="10.0.0.2")[1].name == "ann"
    )  # a minute on
    assert ("user:ann", "refused", "GLOBAL_THROTTLED") in _logins(home)


def test_a_trusted_device_is_per_account_and_loses_trust_after_failures(parts) -> None:
    sessions, _, _ = parts
    device = device_token(None)
    sessions.login("ann", PW, now=NOW, client="10.0.0.1", device=device)
    assert sessions.trust.device_accounts(device, now=NOW) == {sessions.users.get("ann").id}
    assert sessions.trust.device_accounts(device, now=NOW + 31 * 86400) == set()  # expires
    assert sessions.trust.device_accounts("forged" * 8, now=NOW) == set()
    for i in range(5):  # a stolen cookie does not allow unlimited guessing either
        _fail(sessions, "ann", f"wrong password {i}", now=NOW + i, client="10.0.0.1", device=device)
    assert sessions.trust.device_accounts(device, now=NOW + 5) == set()
    raw = b"".join(p.read_bytes() for p in sessions.path.parent.glob("sessions.db*"))
    assert device.encode() not in raw and b"10.0.0.1" not in raw  # stored only hashed
    assert sessions.trust.forget_user(sessions.users.get("ann").id) == 1  # her address is left


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
