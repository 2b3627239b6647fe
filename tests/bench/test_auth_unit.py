"""`setpay bench auth` without services: the card mix, error keys, and the load driver's
closed and open loops with a purchase of its own (no environment).

Rule 1: the driver is exercised for real (asyncio tasks, its own clock); the purchase it
drives here is a coroutine that waits, standing in for nothing of the product.
Rule 2: no timing assertions: only counts, and the coordinated-omission invariant that a
latency from the intended start is never below the one from the actual start.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from bench.auth import (
    BenchError,
    Results,
    drive,
    error_key,
    parse_mix,
    percentiles,
    schedule,
    split_cardholders,
)


def test_mix_is_normalised_and_checked() -> None:
    assert parse_mix("credit=8,debit=1,decline=1") == {"credit": 0.8, "debit": 0.1,
                                                       "decline": 0.1}  # fmt: skip
    assert parse_mix("credit=1,debit=0") == {"credit": 1.0}
    for bad in ("cash=1", "credit=x", "credit=0", "credit=-1"):
        with pytest.raises(BenchError):
            parse_mix(bad)


def test_schedule_follows_the_mix() -> None:
    cycle = schedule({"credit": 0.8, "debit": 0.1, "decline": 0.1})
    assert Counter(cycle) == {"credit": 80, "debit": 10, "decline": 10}
    assert split_cardholders({"credit": 0.98, "debit": 0.02}, 10) == {"credit": 10, "debit": 1}
    assert sum(split_cardholders({"credit": 0.8, "debit": 0.1, "decline": 0.1}, 24).values()) \
        == 24  # fmt: skip


def test_error_key_names_the_set_code() -> None:
    assert error_key("purchase failed: SIGNATURE_FAILURE") == "SET SIGNATURE_FAILURE"
    assert error_key("POS unreachable: RpcTimeout") == "POS unreachable: RpcTimeout"


async def _waiting(i: int) -> tuple[str, str, bool, str | None]:
    await asyncio.sleep(0.01)
    if i % 5 == 4:
        return "credit", "AUTHORIZATION_PERFORMED/DECLINED", False, "DECLINED"
    return "credit", "AUTHORIZATION_PERFORMED/APPROVED", True, None


def _adds_up(results: Results, measured: int) -> None:
    assert results.completed == measured == results.corrected.get_total_count()
    assert results.succeeded + results.failed == measured
    assert sum(results.outcomes.values()) == measured
    assert sum(results.by_kind.values()) == measured
    assert sum(results.errors.values()) == results.failed


async def test_closed_loop_runs_the_count() -> None:
    results = await drive(_waiting, count=20, concurrency=3)
    _adds_up(results, 20)
    assert results.failed == 4 and results.errors == {"DECLINED": 4}
    assert results.throughput > 0


async def test_open_loop_corrects_for_coordinated_omission() -> None:
    # One purchase at a time while 200/s are due: each waits for the one before it, so the
    # latency from the intended start grows while the one from the actual start does not.
    results = await drive(_waiting, count=15, rate=200, max_in_flight=1)
    _adds_up(results, 15)
    corrected, uncorrected = percentiles(results.corrected), percentiles(results.uncorrected)
    assert all(corrected[k] >= uncorrected[k] for k in corrected)
    assert corrected["max"] > uncorrected["max"]


async def test_warmup_is_run_but_not_counted() -> None:
    results = await drive(_waiting, count=5, concurrency=2, warmup=0.1)
    _adds_up(results, 5)
    assert results.warmup_done > 0


async def test_exactly_one_stop_and_one_load() -> None:
    with pytest.raises(BenchError):
        await drive(_waiting, count=1, duration=1.0, concurrency=1)
    with pytest.raises(BenchError):
        await drive(_waiting, count=1, concurrency=1, rate=1.0)


@pytest.mark.parametrize("fraction", [0.0004, 0.0006, 0.9996])
def test_hdr_log_reads_back_every_completion(
    fraction: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the wall clock's fraction, the interval log holds every completion (a start
    time rounded past the base time used to hide the first interval from readers)."""
    from types import SimpleNamespace

    from hdrh.histogram import HdrHistogram
    from hdrh.log import HistogramLogReader

    import bench.auth as auth

    base = 50.0
    monkeypatch.setattr(auth.time, "time", lambda: 1_700_000_000 + fraction)
    monkeypatch.setattr(auth.time, "perf_counter", lambda: base)
    run = SimpleNamespace(window_start=base, ends=[(base + 0.1 * i, 1_000 + i) for i in range(30)])
    log = tmp_path / "auth.hlog"
    auth.write_hdr_log(str(log), [("auth", run)])
    total = HdrHistogram(1, 600_000_000, 3)
    reader = HistogramLogReader(str(log), total)
    while reader.add_next_interval_histogram():
        pass
    assert total.get_total_count() == 30


async def test_timeline_gives_throughput_and_latency_over_time(tmp_path: Path) -> None:
    import bench.auth as auth

    results = await drive(_waiting, count=30, concurrency=3)
    points = auth.timeline(results, interval=0.01)
    assert points and sum(p["purchases_per_s"] * 0.01 for p in points) == pytest.approx(30)
    assert [p["t"] for p in points] == sorted(p["t"] for p in points)
    assert all(0 < p["p50_ms"] <= p["p99_ms"] for p in points)
    out = auth.report(results, None, None, {"suite": "rsa2048"})
    assert sum(p["purchases_per_s"] for p in out["timeline"]) == pytest.approx(30)
    pytest.importorskip("matplotlib")
    png = tmp_path / "auth.png"
    assert "written" in auth.plot(str(png), out, None)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scale_steps_are_process_counts_one_to_sixteen() -> None:
    from bench.auth import BenchError, scale_steps

    assert scale_steps("1,2,3") == [1, 2, 3]
    for bad in ("", "0", "1,x", "17"):
        with pytest.raises(BenchError, match="--scale"):
            scale_steps(bad)
