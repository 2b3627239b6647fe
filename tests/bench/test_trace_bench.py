"""`setpay bench trace` at a small N (bench/trace.py): the generated trace is well-formed
(`check` finds nothing, `show` lists every message, each record decodes), and every figure is
measured through the real commands, recorder and replayer against RabbitMQ.

Rule 1: no figure is asserted as a speed (the machine is shared); memory only as a sanity
bound far above what streaming needs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from actors.trace.fileformat import read_trace
from actors.trace.wire import view
from bench import trace
from setpay.config import load
from tests.ops.environments import ROOT


def test_the_synthetic_trace_is_well_formed(tmp_path: Path) -> None:
    (tmp_path / "f").mkdir()
    path = tmp_path / "t.trace"
    trace.synthetic(path, 400)
    _, records = read_trace(path)
    seen = [view(off, rec) for off, rec in records]
    assert len(seen) == 400 and not any(m.problem for m in seen)
    assert len({m.xid for m in seen}) == 100
    assert seen[-1].t_ns == 399 * trace.STEP_NS
    files_only = trace.run(load({"SETPAY_CONFIG": ""}), 400, 0, tmp_path / "f", bus=False)
    assert len(trace.lines(files_only)) == 3
    proc = subprocess.run([sys.executable, "-m", "cli", "trace", "check", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0 and "400 messages, 0 violations" in proc.stderr, proc.stderr


def test_the_bench_measures_every_figure(tmp_path: Path) -> None:
    figures = trace.run(load({"SETPAY_CONFIG": ""}), 2_000, 200, tmp_path)
    for name in ("show_msgs_per_s", "check_msgs_per_s", "record_msgs_per_s",
                 "raw_publish_msgs_per_s", "replay_msgs_per_s"):  # fmt: skip
        assert figures[name] > 0, name
    assert figures["replay_requests"] == 100
    assert 0 < figures["show_peak_rss"] < 512 * 1024 * 1024
    assert len(trace.lines(figures)) == 5
