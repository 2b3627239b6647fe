"""The one clock of a process: what every actor reads for protocol dates.

Rule 1: one process-wide source, ``CLOCK`` (it satisfies ``protocol.ids.Clock``: ``now_ms``),
set once at the entry point from the ``clock`` setting (``SETPAY_CLOCK``); actors take it as
their default ``Clock`` and read ``now()`` for dates (card expiry, ISO 8583 transmission
times), never the system clock themselves. Durations and timeouts stay on the monotonic
clock; the keystore's sealed-request deadlines and file times stay on the system clock (they
are no protocol date, and both ends read the same one).
Rule 2: the setting is ``system`` (the wall clock), ``offset:<ms>`` (the wall clock moved by
a signed number of milliseconds: time still passes, every process of an environment agrees,
since the supervisor hands its children every non-secret setting), or ``fixed:<ms>`` (a
frozen instant, milliseconds since the Unix epoch; tests). Anything else is refused when the
settings load.
Rule 3: a trace replay runs a restored environment with ``offset:<trace start - now>``, so
the dates of the recorded requests fall inside every party's freshness window
(actors/trace/regression.py Rule 2).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

SYSTEM = "system"


class ClockSpecError(ValueError):
    """A ``clock`` setting that is none of the forms of Rule 2."""


@dataclass(frozen=True, slots=True)
class ClockSpec:
    """A parsed ``clock`` setting: an offset from the wall clock, or a fixed instant."""

    offset_ms: int = 0
    fixed_ms: int | None = None

    def __str__(self) -> str:
        if self.fixed_ms is not None:
            return f"fixed:{self.fixed_ms}"
        return f"offset:{self.offset_ms}" if self.offset_ms else SYSTEM


def parse(spec: str) -> ClockSpec:
    """The ``ClockSpec`` of a setting (Rule 2); ``ClockSpecError`` if malformed."""
    text = spec.strip()
    if text in ("", SYSTEM):
        return ClockSpec()
    kind, _, value = text.partition(":")
    try:
        number = int(value)
    except ValueError:
        number = None
    if kind == "offset" and number is not None:
        return ClockSpec(offset_ms=number)
    if kind == "fixed" and number is not None and number >= 0:
        return ClockSpec(fixed_ms=number)
    raise ClockSpecError(
        f"clock {spec!r} is not `system`, `offset:<signed ms>` or `fixed:<epoch ms>`"
    )


class ProcessClock:
    """The process's clock (Rule 1); ``configure`` sets what it reads."""

    def __init__(self) -> None:
        self.spec = ClockSpec()

    def configure(self, spec: str | ClockSpec) -> None:
        self.spec = parse(spec) if isinstance(spec, str) else spec

    def now_ms(self) -> int:
        if self.spec.fixed_ms is not None:
            return self.spec.fixed_ms
        return time.time_ns() // 1_000_000 + self.spec.offset_ms

    def now(self) -> datetime:
        """The current instant as an aware UTC datetime."""
        return datetime.fromtimestamp(self.now_ms() / 1000, tz=UTC)


CLOCK = ProcessClock()


def configure(spec: str | ClockSpec) -> None:
    """Set the process's clock (the entry point, once, from the ``clock`` setting)."""
    CLOCK.configure(spec)


def now_ms() -> int:
    return CLOCK.now_ms()


def now() -> datetime:
    return CLOCK.now()
