"""Identifiers, challenges, the injectable clock and the freshness window.

Rule 1: every identifier and challenge (XID, RRPID, Chall-*, LID) comes from ``secrets``;
nothing here is derived from time, counters or other guessable state.
Rule 2: time is injected. Code in ``protocol/`` never reads the system clock itself; it takes
``now_ms`` or a ``Clock`` so tests, replays and the load tool control time.
Rule 3: a message date outside ``now ± window`` is refused with ``messageTooOld`` /
``messageTooNew``; the window is the caller's choice (configuration), not a constant here.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from protocol.errors import ErrorCode, ProtocolError

ID_BYTES = 32  # XID, RRPID and challenges: 32 random bytes (set-protocol.md §6.1)
LID_BYTES = 16  # local labels only need to be unique for their owner
DEFAULT_WINDOW_MS = 5 * 60 * 1000


def new_xid() -> bytes:
    """A fresh, globally unique transaction id (32 random bytes)."""
    return secrets.token_bytes(ID_BYTES)


def new_rrpid() -> bytes:
    """A fresh request/response pair id (32 random bytes)."""
    return secrets.token_bytes(ID_BYTES)


def new_challenge() -> bytes:
    """A fresh challenge (Chall-C, Chall-M, Chall-EE …) the peer must echo in its signature."""
    return secrets.token_bytes(ID_BYTES)


def new_lid() -> bytes:
    """A fresh local id (LID-C, LID-M, LID-EE): a label meaningful to its owner only."""
    return secrets.token_bytes(LID_BYTES)


@runtime_checkable
class Clock(Protocol):
    """Source of the current time in milliseconds since the Unix epoch."""

    def now_ms(self) -> int: ...


class SystemClock:
    """The real wall clock, for tools and tests; actors read their process's one clock,
    ``setpay.clock.CLOCK`` (``protocol/`` itself only receives a ``Clock``)."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


@dataclass(slots=True)
class FixedClock:
    """A clock that says what it is told (tests, replays); ``advance`` moves it forward."""

    ms: int

    def now_ms(self) -> int:
        return self.ms

    def advance(self, delta_ms: int) -> None:
        self.ms += delta_ms


def to_dt(ms: int) -> datetime:
    """Milliseconds since the Unix epoch as an aware UTC datetime (certificates, CRLs)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def to_ms(when: datetime) -> int:
    """An aware datetime as milliseconds since the Unix epoch (the wire's timestamps)."""
    return int(when.timestamp() * 1000)


def check_date(date_ms: int, now_ms: int, window_ms: int = DEFAULT_WINDOW_MS) -> None:
    """Accept ``date_ms`` within ``now_ms ± window_ms``, else ``messageTooOld``/``TooNew``."""
    if window_ms < 0:
        raise ValueError("window_ms must not be negative")
    if date_ms < now_ms - window_ms:
        raise ProtocolError(ErrorCode.MESSAGE_TOO_OLD, f"date is {now_ms - date_ms} ms old")
    if date_ms > now_ms + window_ms:
        raise ProtocolError(
            ErrorCode.MESSAGE_TOO_NEW, f"date is {date_ms - now_ms} ms in the future"
        )
