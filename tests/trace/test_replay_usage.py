"""`setpay trace replay` refuses what it cannot do in one line, before touching anything
(actors/trace/cli.py Rule 4, actors/trace/regression.py Rule 1).

Rule 1: one mode exactly; the regression mode needs a snapshot; a trace whose logins carry
another user prefix than the settings is refused naming both, and nothing is restored.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from actors.trace.fileformat import FORMAT_VERSION, TraceHeader, TraceWriter
from tests.ops.environments import ROOT, SETPAY


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SETPAY_CONFIG": "", "SETPAY_DATA_DIR": str(tmp / "data"),
           "SETPAY_BROKER_USER_PREFIX": "mine-", "PYTHONPATH": str(ROOT)}  # fmt: skip
    return subprocess.run([*SETPAY, "trace", "replay", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def test_usage_errors(tmp_path: Path) -> None:
    trace = tmp_path / "t.trace"
    TraceWriter(trace, TraceHeader(FORMAT_VERSION, 0, "v", "theirs-", [])).close()
    cases = {
        ("--attack", "--regression"): "choose one mode",
        (): "choose one mode",
        ("--regression",): "needs --snapshot",
        ("--regression", "--snapshot", str(tmp_path), "--speed", "0"): "--speed",
        ("--regression", "--snapshot", str(tmp_path)): "'theirs-'",
    }
    for args, text in cases.items():
        proc = _run(tmp_path, str(trace), *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and text in lines[0], (args, lines)
    assert not (tmp_path / "data").exists()  # nothing restored
