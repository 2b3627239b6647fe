"""`setpay up --roles ca` under the supervisor, with logins from `setpay broker init`, serves a
registration; `setpay down` stops it.

Rule 1: a throwaway vhost and ``--user-prefix`` users (broker users are machine-wide); both are
deleted afterwards, and `setpay down` runs even when an assertion fails.
Rule 2: the keystore runs here as worker processes of the test (``setpay run keystore`` does
not exist yet, and the keystore's policy must strip the user prefix); the CA child gets the
provisioned ``<prefix>ca.main`` login through ``SETPAY_AMQP_URL``, because the supervisor
looks up logins without the prefix (both reported to the lead).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
from pathlib import Path

from cryptography import x509

from actors.ca.store import CAStore
from actors.supervisor import SETPAY
from broker import admin
from broker.connection import connect
from broker.credentials import credentials_path
from broker.peer import PeerLink
from broker.provision import identity_url
from keystore.client import KeystoreClient
from keystore.messages import KeyKind, KeyUsage
from keystore.worker import KeystorePool, WorkerSpec
from protocol import pan
from protocol.certs import CertType, set_extension
from protocol.requester import CAClient, register_cardholder
from setpay.config import Settings

BASE = "amqp://guest:guest@127.0.0.1:5672/"
ROOT = Path(__file__).resolve().parents[2]
PAN = "4111111111111111"


def setpay(env: dict[str, str], *args: str, timeout: float = 90) -> str:
    out = subprocess.run(
        [*SETPAY, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"setpay {' '.join(args)}: {out.stdout}{out.stderr}"
    return out.stdout


def root_cert(data_dir: Path) -> x509.Certificate:
    store = CAStore.open(data_dir)
    try:
        row = store.ca("root")
        assert row is not None
        cert = store.cert(row.serial)
        assert cert is not None
        return x509.load_der_x509_certificate(cert.der)
    finally:
        store.close()


async def test_setpay_up_ca_serves_a_registration(
    keystore_settings: Settings, tmp_path: Path
) -> None:
    vhost, prefix = f"setpay-test-up-{secrets.token_hex(4)}", f"t{secrets.token_hex(3)}-"
    data_dir = tmp_path / "var"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SETPAY_DATA_DIR": str(data_dir),
        "SETPAY_BROKER_VHOST": vhost,
        "SETPAY_BROKER_USER_PREFIX": prefix,
        "SETPAY_SUITE": "p256",
        "SETPAY_LOG_FORMAT": "json",
        "SETPAY_ISSUER_HOST": "",  # no issuer host: the explicit test setting below
        "SETPAY_CA_VERIFY_CARDS": "0",
    }

    def url(identity: str) -> str:
        return identity_url(data_dir, identity, vhost, BASE, user_prefix=prefix)

    pool: KeystorePool | None = None
    up = False
    try:
        setpay(env, "broker", "init", "--vhost", vhost, "--user-prefix", prefix)
        spec = WorkerSpec(
            keystore_settings.replace(log_format="json"), amqp_url=url("keystore.main"),
            queue="keystore.rpc", identity_prefix=prefix, log_file=str(tmp_path / "ks.log"),
        )  # fmt: skip
        pool = KeystorePool(spec, 1)
        await pool.start()
        env["SETPAY_AMQP_URL"] = url("ca.main")
        await asyncio.to_thread(setpay, env, "ca", "init")
        out = await asyncio.to_thread(setpay, env, "up", "--roles", "ca", "--timeout", "60")
        up = True
        assert "ready: ca.main" in out

        bus = await connect(url("wallet.main"), name="wallet.main")
        try:
            keystore = await KeystoreClient.create(bus, timeout=10)
            info = await keystore.create_key(
                f"card-{secrets.token_hex(3)}", KeyKind.P256, KeyUsage.SIGN
            )
            key = await keystore.private_key(info.label)
            client = CAClient(await PeerLink(bus, "wallet", "main").start())
            reg = await register_cardholder(
                client, root=root_cert(data_dir), brand="alpha",
                account=pan.Account(pan.AccountKind.CARD, PAN), expiry="3012", key=key,
                values={"name": "Up Test", "postal_code": "100-0001"},
            )  # fmt: skip
            assert set_extension(reg.cert).cert_type is CertType.CARDHOLDER
            await client.close()
            await keystore.close()
        finally:
            await bus.close()

        run = data_dir / "run"
        ca_pid = int((run / "ca.main.pid").read_text())
        out = await asyncio.to_thread(setpay, env, "down", "--grace", "20")
        up = False
        # The supervisor drains and stops its child; down then finds the CA already gone.
        assert "supervisor: terminated" in out and "ca.main: " in out
        assert not list(run.glob("*.pid"))
        assert not Path(f"/proc/{ca_pid}").exists()
        log = (run / "ca.main.log").read_bytes()
        assert b"ca_cert_issued" in log and PAN.encode() not in log
    finally:
        if up:
            await asyncio.to_thread(setpay, env, "down", "--grace", "5")
        if pool is not None:
            await pool.stop()
        users = credentials_path(data_dir)
        for user in json.loads(users.read_text()) if users.exists() else []:
            admin.delete_user(user)
        admin.delete_vhost(vhost)
