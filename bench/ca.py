"""`setpay bench ca`: cardholder registrations per second end to end, next to the raw costs.

Rule 1: one registration = CardCInit, RegForm, CertReq/CertRes through the real CA actor over
RabbitMQ, every private-key operation in SoftHSM2 through the keystore (7 per registration:
CA signs 4 times and decrypts twice, the cardholder signs once). It is printed next to the raw
HSM sign rate through the keystore and the software sign rate, measured in the same run.
Rule 2: the benchmark works in its own vhost, broker users and token directory and removes
them afterwards; cardholder keys are generated before the clock starts.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from hdrh.histogram import HdrHistogram

from setpay.config import Settings

HSM_OPS_PER_REGISTRATION = 7
PAN = "4111111111111111"


def software_sign_rate(suite_name: str, n: int) -> float:
    """Signatures/s of the suite's algorithm in software (OpenSSL through cryptography)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    digest = secrets.token_bytes(32)
    prehashed = utils.Prehashed(hashes.SHA256())
    if suite_name == "p256":
        ec_key = ec.generate_private_key(ec.SECP256R1())
        start = time.perf_counter()
        for _ in range(n):
            ec_key.sign(digest, ec.ECDSA(prehashed))
    else:
        rsa_key = rsa.generate_private_key(65537, 3072 if suite_name == "rsa3072" else 2048)
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        start = time.perf_counter()
        for _ in range(n):
            rsa_key.sign(digest, pss, prehashed)
    return n / (time.perf_counter() - start)


def _url(user: str, password: str, vhost: str) -> str:
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return f"amqp://{auth}@127.0.0.1:5672/{quote(vhost, safe='')}"


async def _bench(settings: Settings, n: int, concurrency: int, sign_n: int) -> None:
    from actors.ca.actor import CAActor
    from actors.ca.brands import TEST_BRANDS
    from actors.ca.hierarchy import Hierarchy, init_hierarchy
    from actors.ca.store import CAStore
    from broker import admin
    from broker.connection import connect
    from broker.peer import PeerLink
    from keystore import messages as km
    from keystore.client import KeystoreClient
    from keystore.keyring import KeyRing, key_kind
    from keystore.token import init_token, use_softhsm_conf
    from keystore.worker import KeystorePool, WorkerSpec
    from protocol import ids, pan
    from protocol.keys import get_suite
    from protocol.requester import CAClient, register_cardholder

    suite = get_suite(settings.suite)
    vhost = f"setpay-bench-ca-{secrets.token_hex(4)}"
    prefix = f"b{secrets.token_hex(3)}-"
    users: list[str] = []
    admin.create_vhost(vhost)
    admin.set_permissions(vhost, "guest", ".*", ".*", ".*")

    def user(name: str) -> str:
        password = secrets.token_hex(12)
        admin.add_user(prefix + name, password)
        admin.set_permissions(vhost, prefix + name, ".*", ".*", ".*")
        users.append(prefix + name)
        return _url(prefix + name, password, vhost)

    init_token(settings)
    use_softhsm_conf(settings)
    pool = KeystorePool(
        WorkerSpec(
            settings,
            amqp_url=user("keystore.bench"),
            identity_prefix=prefix,
            log_file=str(settings.data_dir / "keystore.log"),  # the audit trail, off screen
        ),
        settings.keystore_workers,
    )
    closers: list[object] = []
    try:
        await pool.start()
        ca_url = user("ca.main")
        ca_bus = await connect(ca_url, name="bench-ca-init", prefix=prefix)
        ca_keys = await KeystoreClient.create(ca_bus)
        store = CAStore.open(settings.data_dir)
        t0 = time.perf_counter()
        await init_hierarchy(Hierarchy(store, KeyRing(ca_keys, suite)), TEST_BRANDS,
                             ids.SystemClock().now_ms())  # fmt: skip
        print(f"hierarchy: {len(store.cas())} CAs in {time.perf_counter() - t0:.1f} s")
        actor = CAActor(settings, "main", url=ca_url)
        await actor.start()
        closers.append(actor)

        wallet_bus = await connect(user("wallet.bench"), name="bench-wallet", prefix=prefix)
        wallet_keys = await KeystoreClient.create(wallet_bus)
        client = CAClient(await PeerLink(wallet_bus, "wallet", "bench", timeout=60).start())

        # Raw costs in the same run: HSM sign through the keystore, then in software.
        sign_label = (
            await wallet_keys.create_key("raw-sign", key_kind(suite), km.KeyUsage.SIGN)
        ).label
        digest = secrets.token_bytes(32)
        start = time.perf_counter()
        await asyncio.gather(*(wallet_keys.sign(sign_label, digest) for _ in range(sign_n)))
        hsm_rate = sign_n / (time.perf_counter() - start)
        soft_rate = software_sign_rate(suite.name, sign_n)

        t0 = time.perf_counter()
        keys = []
        for i in range(n):
            info = await wallet_keys.create_key(f"card-{i}", key_kind(suite), km.KeyUsage.SIGN)
            keys.append(await wallet_keys.private_key(info.label, suite.oaep_hash))
        keygen = time.perf_counter() - t0

        account = pan.Account(pan.AccountKind.CARD, PAN)
        root = Hierarchy(store, KeyRing(ca_keys, suite)).root
        hist = HdrHistogram(1, 60_000_000, 3)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(n):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                began = time.perf_counter()
                await register_cardholder(
                    client, root=root, brand="alpha",
                    account=account, expiry="3012", key=keys[i],
                    values={"name": f"Bench {i}", "postal_code": "100-0001"},
                )  # fmt: skip
                hist.record_value(int((time.perf_counter() - began) * 1e6))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        rate = n / elapsed
        bound = hsm_rate / HSM_OPS_PER_REGISTRATION
        print(f"suite {suite.name}, {n} cardholder registrations, {concurrency} in flight, "
              f"{settings.keystore_workers} keystore workers")  # fmt: skip
        p50 = hist.get_value_at_percentile(50) / 1000
        p99 = hist.get_value_at_percentile(99) / 1000
        print(f"  registrations/s end to end   {rate:10.1f}   (p50 {p50:.1f} ms, p99 {p99:.1f} ms)")
        print(f"  HSM sign/s via keystore      {hsm_rate:10.1f}   ({sign_n} concurrent)")
        print(f"  software sign/s (OpenSSL)    {soft_rate:10.1f}")
        print(f"  bound = HSM sign/s / {HSM_OPS_PER_REGISTRATION}       {bound:10.1f}   "
              f"registrations reach {rate / bound:.0%} of it")  # fmt: skip
        print(f"  (cardholder key generation in the HSM, untimed above: {n / keygen:.1f} keys/s)")
        await client.close()
        for c in (wallet_keys, ca_keys):
            await c.close()
        for b in (wallet_bus, ca_bus):
            await b.close()
        store.close()
    finally:
        for closer in closers:
            await closer.stop()  # type: ignore[attr-defined]
        await pool.stop()
        for name in users:
            admin.delete_user(name)
        admin.delete_vhost(vhost)


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    from setpay import logs

    logs.configure(settings.log_format, "warning")
    with tempfile.TemporaryDirectory(prefix="setpay-bench-ca-") as tmp:
        bench_settings = settings.replace(
            data_dir=Path(tmp),
            keystore_token_label="bench-ca",  # noqa: S106 - a label
            suite=args.suite or settings.suite,
            # The CA's own cost: its random test cards are known to no issuer host, so the
            # account verification (an ISO 8583 round trip) is left out of this figure.
            issuer_host="",
            ca_verify_cards=False,
        )
        asyncio.run(_bench(bench_settings, args.n, args.concurrency, args.sign_n))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `setpay bench ca`."""
    p = sub.add_parser("ca", help="cardholder registrations/s end to end vs raw sign cost")
    p.add_argument("-n", type=int, default=40, help="registrations to run (default 40)")
    p.add_argument("--concurrency", type=int, default=4, help="registrations in flight")
    p.add_argument("--sign-n", type=int, default=400, help="raw signatures to time")
    p.add_argument(
        "--suite", choices=("rsa2048", "rsa3072", "p256"), help="default: settings.suite"
    )
    p.set_defaults(func=_cmd)
