"""Two keystore workers share one log file as in production (stderr of ``setpay keystore
serve`` appended to a file, unbuffered Python): under load every line is whole, none lost."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from broker.connection import connect
from keystore import messages as m
from keystore.client import KeystoreClient
from setpay.config import Settings

pytestmark = pytest.mark.integration

OPERATIONS = 5000
IN_FLIGHT = 64


def _wait_for_line(path: Path, needle: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the keystore logged ``needle`` (its readiness), or fail if it exited."""
    deadline = time.monotonic() + 120
    while needle not in path.read_text(errors="replace"):
        assert proc.poll() is None, path.read_text(errors="replace")[-2000:]
        assert time.monotonic() < deadline, "keystore not ready within 120 s"
        time.sleep(0.2)


async def test_5000_concurrent_ops_leave_5000_whole_audit_lines(
    broker_vhost: Any, keystore_settings: Settings, tmp_path: Path
) -> None:
    """A mix of cheap audited ops over two workers writing to one inherited stderr file:
    every line parses as JSON and each op has exactly one audit line."""
    tag = secrets.token_hex(3)
    queue = f"keystore.log{tag}"
    url = str(broker_vhost.add_user(f"keystore.log{tag}", secrets.token_hex(8)))
    log_path = tmp_path / "keystore.main.log"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",  # as under systemd/the supervisor: every write goes out
        "SETPAY_DATA_DIR": str(keystore_settings.data_dir),
        "SETPAY_KEYSTORE_TOKEN_LABEL": keystore_settings.keystore_token_label,
        "SETPAY_KEYSTORE_PIN": keystore_settings.keystore_pin,
        "SETPAY_BROKER_USER_PREFIX": broker_vhost.prefix,
        "SETPAY_LOG_FORMAT": "json",
    }
    with log_path.open("ab") as log_file:  # O_APPEND, as the supervisor opens it
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "keystore", "serve", "--url", url,
             "--queue", queue, "--workers", "2"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_file, env=env,
        )  # fmt: skip
    buses = []
    try:
        await asyncio.to_thread(_wait_for_line, log_path, '"service_ready"', proc)
        clients = {}
        for role in ("merchant", "wallet", "gateway"):
            user_url = str(broker_vhost.add_user(f"{role}.log{tag}", "pw-" + tag))
            bus = await connect(user_url, name=f"{role}.log{tag}")
            buses.append(bus)
            clients[role] = await KeystoreClient.create(bus, queue=queue, timeout=60)
        merchant, wallet, gateway = clients["merchant"], clients["wallet"], clients["gateway"]
        sig = (await merchant.create_key("sig", m.KeyKind.P256, m.KeyUsage.SIGN)).label
        dek = (await wallet.create_key("dek", m.KeyKind.AES256, m.KeyUsage.SECRET)).label
        mac = (await gateway.create_key("mac", m.KeyKind.HMAC256, m.KeyUsage.SECRET)).label
        digest = hashlib.sha256(b"audit").digest()
        calls = (
            lambda: merchant.sign(sig, digest),
            lambda: merchant.key_info(sig),
            lambda: wallet.seal(dek, b"card data", b"aad"),
            lambda: gateway.hmac(mac, b"account"),
        )
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(i: int) -> None:
            async with gate:
                await calls[i % len(calls)]()

        await asyncio.gather(*(one(i) for i in range(OPERATIONS)))
    finally:
        for bus in buses:
            await bus.close()
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 60)

    lines = log_path.read_bytes().decode().splitlines()
    records = [json.loads(line) for line in lines]  # raises on any torn or merged line
    ours = [
        r for r in records
        if r.get("event") == "keystore_op" and r.get("label") in (sig, dek, mac)
        and r.get("op") != "create"
    ]  # fmt: skip
    assert len(ours) == OPERATIONS
    assert Counter(r["op"] for r in ours) == {
        "sign": OPERATIONS // 4, "public_key": OPERATIONS // 4,
        "seal": OPERATIONS // 4, "hmac": OPERATIONS // 4,
    }  # fmt: skip
    assert {r["outcome"] for r in ours} == {"ok"}
    assert len({r["pid"] for r in ours}) == 2  # both workers wrote into the one file
    assert any(r.get("event") == "service_stopped" for r in records)
