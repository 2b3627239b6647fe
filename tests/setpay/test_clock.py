"""The process's one clock (setpay/clock.py): its forms, how it reaches a child, and that no
actor reads the system clock for a protocol date behind its back.

Rule 1: ``system``, ``offset:<ms>`` and ``fixed:<ms>`` read as they say; anything else is
refused when the settings load, naming the forms.
Rule 2: the supervisor's children get the setting (every non-secret setting is handed down).
Rule 3: outside a short list of non-protocol times (file ages, web sessions, the HTTPS test
certificate), no module under actors/ reads ``time.time``, ``datetime.now`` or
``SystemClock``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from setpay import clock
from setpay.config import ConfigError, child_environment, load

ROOT = Path(__file__).resolve().parents[2]
# Times that are no protocol date: a health file's age, web sessions and lockouts (the
# front door's own bookkeeping), the HTTPS test certificate, a POS operator's creation time,
# and the test environment's card validity (years ahead).
ALLOWED = {
    "actors/status.py", "actors/web/server.py", "actors/web/tls.py", "actors/merchant/cli.py",
    "actors/demo_cases.py", "actors/environment.py",
}  # fmt: skip
SYSTEM_READS = re.compile(r"time\.time\(\)|datetime\.now\(|dt\.datetime\.now\(|SystemClock")


def test_the_forms_read_as_they_say() -> None:
    assert clock.parse("system") == clock.ClockSpec()
    assert clock.parse("offset:-86400000").offset_ms == -86_400_000
    assert clock.parse("fixed:1700000000000").fixed_ms == 1_700_000_000_000
    c = clock.ProcessClock()
    c.configure("fixed:1700000000000")
    assert c.now_ms() == 1_700_000_000_000
    assert c.now().year == 2023
    c.configure("offset:-3600000")
    assert abs(c.now_ms() - (time.time_ns() // 1_000_000 - 3_600_000)) < 1_000
    c.configure("system")
    assert abs(c.now_ms() - time.time_ns() // 1_000_000) < 1_000
    for bad in ("offset:", "fixed:-1", "yesterday", "offset:1.5"):
        with pytest.raises(clock.ClockSpecError):
            clock.parse(bad)


def test_a_malformed_setting_is_refused_when_loading() -> None:
    with pytest.raises(ConfigError, match="offset:<signed ms>"):
        load({"SETPAY_CONFIG": "", "SETPAY_CLOCK": "tomorrow"})


def test_children_get_the_clock() -> None:
    settings = load({"SETPAY_CONFIG": "", "SETPAY_CLOCK": "offset:-5000"})
    assert child_environment(settings)["SETPAY_CLOCK"] == "offset:-5000"


def test_no_actor_reads_the_system_clock_for_a_date() -> None:
    found = []
    for path in sorted((ROOT / "actors").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED:
            continue
        for n, text in enumerate(path.read_text().splitlines(), 1):
            if SYSTEM_READS.search(text):
                found.append(f"{rel}:{n}: {text.strip()}")
    assert found == [], "\n".join(found)
