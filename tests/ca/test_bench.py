"""`setpay bench ca` runs end to end in its own vhost and token and prints its figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_ca_prints_rates(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SETPAY_DATA_DIR": str(tmp_path)}
    env.pop("SOFTHSM2_CONF", None)  # the bench makes its own token
    out = subprocess.run(
        [sys.executable, "-m", "cli", "bench", "ca", "-n", "3", "--concurrency", "2",
         "--sign-n", "50"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rate = re.search(r"registrations/s end to end\s+([0-9.]+)", out.stdout)
    hsm = re.search(r"HSM sign/s via keystore\s+([0-9.]+)", out.stdout)
    assert rate and hsm, out.stdout
    assert float(rate.group(1)) > 0 and float(hsm.group(1)) > float(rate.group(1))
    assert "3 cardholder registrations" in out.stdout
