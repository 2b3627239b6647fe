"""`setpay bench protocol` runs through the CLI and reports each step against its raw crypto."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import protocol as bench_protocol

ROOT = Path(__file__).resolve().parents[2]


def test_bench_protocol_cli_prints_ratios() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "bench", "protocol", "--n", "3", "--suite", "p256", "--json"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    figures = result["p256"]
    assert set(figures["raw_us"]) == {"sign", "verify", "gcm_seal", "gcm_open", "wrap", "unwrap"}
    steps = [m["step"] for m in figures["messages"]]
    assert steps[0].startswith("PReq build") and steps[-1].startswith("AuthReq verify")
    for m in figures["messages"]:
        raw = sum(figures["raw_us"][op] * c for op, c in m["contains"].items())
        assert m["raw_us"] == pytest.approx(raw)
        assert m["ratio"] == pytest.approx(m["us_per_msg"] / m["raw_us"])
        assert m["us_per_msg"] > 0


def test_bench_keys_work_as_private_keys() -> None:
    """The in-bench software key satisfies the PrivateKey protocol the treatments use."""
    from protocol.keys import SUITES, PrivateKey

    for name in ("rsa2048", "p256"):
        assert isinstance(bench_protocol.BenchKey(SUITES[name], "k"), PrivateKey)
