"""One live environment for the demo tests: `setpay demo` in a throw-away vhost and data dir,
left running for the tests that act on it, brought down once the package is done.

Rule 1: broker users are broker-wide and have no test prefix in the supervisor yet, so the
run reuses the machine's identity passwords (the checkout's ``var/broker/credentials.json``)
instead of resetting them; users it had to create are deleted, with the vhost, afterwards.
Rule 2: package scope, so every module of tests/demo shares the one (slow) run.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import admin

ROOT = Path(__file__).resolve().parents[2]
SETPAY = (sys.executable, "-c", "import sys; from setpay.cli import main; sys.exit(main())")
IDENTITIES = ("keystore.main", "ca.main", "gateway.pg1", "issuer.host1", "merchant.pos1",
              "wallet.main")  # fmt: skip


@pytest.fixture(scope="package")
def demo_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment variables of the package's throw-away environment (data dir, vhost)."""
    data_dir = tmp_path_factory.mktemp("demo-var")
    vhost = f"setpay-test-demo-{secrets.token_hex(4)}"
    return {**os.environ, "SETPAY_DATA_DIR": str(data_dir), "SETPAY_BROKER_VHOST": vhost,
            "SETPAY_KEYSTORE_WORKERS": "1", "SETPAY_LOG_FORMAT": "json"}  # fmt: skip


@pytest.fixture(scope="package")
def demo_run(demo_env: dict[str, str]) -> Iterator[tuple[Path, str]]:
    """(data dir, demo output) of `setpay demo`; the environment stays up until teardown."""
    env = demo_env
    data_dir, vhost = Path(env["SETPAY_DATA_DIR"]), env["SETPAY_BROKER_VHOST"]
    shared = ROOT / "var" / "broker" / "credentials.json"
    if shared.exists():
        (data_dir / "broker").mkdir()
        shutil.copy2(shared, data_dir / "broker" / "credentials.json")
    existing = set(admin.list_users())
    try:
        proc = subprocess.run(
            [*SETPAY, "demo"], env=env, capture_output=True, text=True, timeout=300,
            cwd=ROOT, check=False,
        )  # fmt: skip
        yield data_dir, proc.stdout + "\n--stderr--\n" + proc.stderr
    finally:
        subprocess.run([*SETPAY, "down", "--grace", "5"], env=env, capture_output=True,
                       timeout=120, check=False)  # fmt: skip
        for user in set(IDENTITIES) - existing:
            if user in set(admin.list_users()):
                admin.delete_user(user)
        admin.delete_vhost(vhost)
