"""Trusted time: refuse a clock that was set back, or a box that has been offline too long.

An expiring policy is only as good as the clock it is checked against (threat T5). Three rules,
each with its own reason code:

* ``CLOCK_ROLLBACK``: ``now`` is earlier than the stored high-water mark minus ``skew``;
* ``BEFORE_ISSUED_AT``: ``now`` is earlier than the policy's issued-at minus ``skew`` (a clock
  behind the issuer's by more than the skew; the skew tolerates small clock differences);
* ``OFFLINE_TOO_LONG``: ``now`` is later than the last signed artifact (or the policy's issued-at,
  whichever is later) plus the policy's maximum offline period.

All boundaries are inclusive for the caller: exactly ``high_water - skew``, exactly
``issued_at - skew`` and exactly ``last_signed_at + max_offline`` are accepted.

The skew comes from unsigned local settings, so it is capped at :data:`MAX_SKEW` (one hour): a
larger value would let a clock set back by days pass both the rollback and the issued-at rule.
An hour is far beyond the drift of an NTP-synchronised clock and covers a year of free-running
RTC drift (tens of ppm) or a daylight-saving mistake; a larger value is misuse (``ValueError``).
Everything takes ``now`` as a parameter; only :func:`wall_clock` reads the real clock.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol

from .errors import PolicyRefused

CLOCK_ROLLBACK = "CLOCK_ROLLBACK"
BEFORE_ISSUED_AT = "BEFORE_ISSUED_AT"
OFFLINE_TOO_LONG = "OFFLINE_TOO_LONG"
REASONS = (CLOCK_ROLLBACK, BEFORE_ISSUED_AT, OFFLINE_TOO_LONG)
DEFAULT_SKEW = 300
MAX_SKEW = 3600  # seconds; see the module docstring for why an hour


class _HighWaterState(Protocol):
    @property
    def time_high_water(self) -> int: ...

    def advance_time(self, now: int) -> bool: ...

    def save(self) -> None: ...


def wall_clock() -> int:
    """The system clock in whole seconds: the one thin wrapper that reads real time."""
    return int(time.time())


def iso(ts: int) -> str:
    """UTC ISO-8601 to the second, for messages (``2026-03-02T10:00:00Z``)."""
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"@{ts}"


def check_time(
    now: int,
    *,
    high_water: int,
    issued_at: int,
    last_signed_at: int,
    max_offline: int | None,
    skew: int = DEFAULT_SKEW,
) -> None:
    """Raise :class:`PolicyRefused` with a reason code when ``now`` cannot be trusted."""
    check_skew(skew)
    if max_offline is not None and max_offline < 0:
        raise ValueError("max_offline must not be negative.")
    if now < high_water - skew:
        raise PolicyRefused(
            f"The clock reads {iso(now)}, earlier than the last trusted time {iso(high_water)}.",
            code=CLOCK_ROLLBACK,
            hint="Fix the system clock (NTP) and try again.",
        )
    if now < issued_at - skew:
        raise PolicyRefused(
            f"The clock reads {iso(now)}, earlier than the policy's issue time {iso(issued_at)}.",
            code=BEFORE_ISSUED_AT,
            hint="Fix the system clock (NTP) and try again.",
        )
    anchor = max(last_signed_at, issued_at)
    if max_offline is not None and now > anchor + max_offline:
        raise PolicyRefused(
            f"The appliance has had no fresh signed policy since {iso(anchor)}, longer than the "
            f"allowed offline period ({_duration(max_offline)}).",
            code=OFFLINE_TOO_LONG,
            hint="Ask the issuer for a fresh policy, then run `appliance policy install FILE`.",
        )


def check_skew(skew: int) -> int:
    """``skew`` when it is a whole number of seconds from 0 to :data:`MAX_SKEW`; else ValueError.

    Callers that take a skew from settings check it once when they are built (fail at start).
    """
    if isinstance(skew, bool) or not isinstance(skew, int) or not 0 <= skew <= MAX_SKEW:
        raise ValueError(f"skew must be an integer from 0 to {MAX_SKEW} seconds, not {skew!r}.")
    return skew


def advance_high_water(
    state: _HighWaterState, now: int, *, ceiling: int | None = None, save: bool = True
) -> bool:
    """Move the state's time high-water mark up to ``now`` (never down) and save if it moved.

    ``ceiling`` caps the mark: pass the latest ``last_signed_at + max_offline`` of the installed
    policies so that a clock wrongly set far into the future cannot poison the mark for longer
    than a policy would stay usable anyway. Call it at start, at each unlock and periodically.
    """
    target = now if ceiling is None else min(now, ceiling)
    if target <= state.time_high_water or not state.advance_time(target):
        return False
    if save:
        state.save()
    return True


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours = rest // 3600
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    return f"{hours} h" if hours else f"{seconds} s"
