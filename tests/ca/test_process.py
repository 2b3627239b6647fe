"""The CA as its own OS process (`setpay run ca`), serving a registration; its log has no PAN."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from protocol import pan
from protocol.certs import CertType, set_extension
from protocol.requester import register_cardholder
from tests.fixtures_ca import CA_IDENTITY, CAEnv, new_key

ROOT = Path(__file__).resolve().parents[2]
PAN = "4111111111111111"


def wait_ready(health: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the CA process exited early"
        try:
            if json.loads(health.read_text()).get("ready"):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)  # polling the health file the actor writes
    raise AssertionError("CA process not ready")


async def test_ca_process_serves_registration(ca_env: CAEnv, tmp_path: Path) -> None:
    log_path = tmp_path / "ca.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SETPAY_AMQP_URL": ca_env.deployment.url_for(CA_IDENTITY),
        "SETPAY_DATA_DIR": str(ca_env.settings.data_dir),
        "SETPAY_SUITE": ca_env.settings.suite,
        "SETPAY_LOG_FORMAT": "json",
        "SETPAY_LOG_LEVEL": "debug",
        "SETPAY_ISSUER_HOST": "",  # no issuer host: the explicit test setting below
        "SETPAY_CA_VERIFY_CARDS": "0",
    }
    code = "import sys; from cli.main import main; sys.exit(main(['run', 'ca', '--id', 'p2']))"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=log, stderr=log
        )
    try:
        wait_ready(ca_env.settings.data_dir / "run" / "ca.p2.health", proc)
        client, keystore = await ca_env.requester("wallet.proc1")
        client.link.target = "ca.p2"  # this process's own queue, not the shared one
        key = await new_key(keystore, "card")
        account = pan.Account(pan.AccountKind.CARD, PAN)
        reg = await register_cardholder(
            client, root=ca_env.root, brand="alpha", account=account, expiry="3012", key=key,
            values={"name": "Proc Test", "postal_code": "100-0001"},
        )  # fmt: skip
        assert set_extension(reg.cert).cert_type is CertType.CARDHOLDER
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    text = log_path.read_bytes()
    assert b"ca_cert_issued" in text and b'"actor": "ca.p2"' in text
    assert PAN.encode() not in text
