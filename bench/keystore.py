"""`setpay bench keystore`: RSA signs/s and decrypts/s over the bus (single and batched),
next to the same operations direct on PKCS#11 (1 and N processes) and in `cryptography`.

Rule 1: every figure comes from the same run, on a throw-away token and a throw-away vhost
(both removed afterwards); ratios are against direct PKCS#11 with the same process count.
Rule 2: bus figures include the keystore's audit logging (written to a temporary file).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing as mp
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from setpay.config import Settings

SIG, KEX = "bench-merchant.bench/sig", "bench-merchant.bench/kex"
PREFIX = "bench-"


def _loop(fn: Any, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        for _ in range(16):
            fn()
        n += 16
    return n / (time.perf_counter() - start)


def _direct_rates(settings: Settings, ct: bytes, seconds: float) -> tuple[float, float]:
    from keystore.hsm import Hsm, TokenConfig
    from keystore.messages import OaepHash
    from keystore.token import token_pin

    hsm = Hsm(TokenConfig(settings.keystore_module, settings.keystore_token_label,
                          token_pin(settings)))  # fmt: skip
    hsm.open()
    digest = hashlib.sha256(b"bench").digest()
    try:
        return (
            _loop(lambda: hsm.sign(SIG, digest), seconds),
            _loop(lambda: hsm.decrypt(KEX, ct, OaepHash.SHA1), seconds),
        )
    finally:
        hsm.close()


def _direct_child(settings: Settings, ct: bytes, seconds: float, out: Any) -> None:
    os.environ["SOFTHSM2_CONF"] = str(settings.softhsm_conf.resolve())
    out.put(_direct_rates(settings, ct, seconds))


def _direct_processes(settings: Settings, ct: bytes, seconds: float, n: int) -> tuple[float, ...]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_direct_child, args=(settings, ct, seconds, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds * 4 + 60) for _ in procs]
    for p in procs:
        p.join()
    return tuple(sum(r[i] for r in results) for i in range(2))


def _software(seconds: float) -> tuple[float, float]:
    key = rsa.generate_private_key(65537, 2048)
    digest = hashlib.sha256(b"bench").digest()
    from cryptography.hazmat.primitives.asymmetric import utils

    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    oaep = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)  # noqa: S303
    ct = key.public_key().encrypt(b"k" * 32, oaep)
    return (
        _loop(lambda: key.sign(digest, pss, utils.Prehashed(hashes.SHA256())), seconds),
        _loop(lambda: key.decrypt(ct, oaep), seconds),
    )


async def _bus_rates(url: str, ct: bytes, seconds: float, inflight: int, batch: int) -> tuple:
    from broker.connection import connect
    from keystore.client import KeystoreClient
    from keystore.messages import BatchItem, OaepHash, Op

    bus = await connect(url, name="bench-keystore-client", prefix=PREFIX)
    client = await KeystoreClient.create(bus, timeout=30.0, batching=0)
    digest = hashlib.sha256(b"bench").digest()
    rates = []
    try:
        for op in (Op.SIGN, Op.DECRYPT):
            done = 0
            end = time.perf_counter() + seconds

            async def worker(op: Op = op, end: float = end) -> None:
                nonlocal done
                while time.perf_counter() < end:
                    if batch == 1:
                        if op is Op.SIGN:
                            await client.sign(SIG, digest)
                        else:
                            await client.decrypt(KEX, ct)
                        done += 1
                    else:
                        item = (BatchItem(Op.SIGN, SIG, digest, None) if op is Op.SIGN
                                else BatchItem(Op.DECRYPT, KEX, ct, OaepHash.SHA1))  # fmt: skip
                        results = await client.batch([item] * batch)
                        if any(not isinstance(r, bytes) for r in results):
                            raise RuntimeError("a batched keystore operation failed")
                        done += batch

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(inflight)))
            rates.append(done / (time.perf_counter() - start))
    finally:
        await client.close()
        await bus.close()
    return tuple(rates)


def _url(base: str, user: str, password: str, vhost: str) -> str:
    parts = urlsplit(base)
    host = f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}"
    return (
        f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{host}/{quote(vhost, safe='')}"
    )


async def _run(settings: Settings, seconds: float, workers: int, batch: int) -> list[tuple]:
    from broker import admin
    from keystore.hsm import Hsm, TokenConfig
    from keystore.messages import KeyKind, KeyUsage
    from keystore.token import init_token, token_pin, use_softhsm_conf
    from keystore.worker import KeystorePool, WorkerSpec

    rows: list[tuple] = []
    with tempfile.TemporaryDirectory(prefix="setpay-bench-") as tmp:
        settings = settings.replace(data_dir=Path(tmp), keystore_token_label="bench",  # noqa: S106
                                    log_format="json", log_level="info")  # fmt: skip
        init_token(settings)
        use_softhsm_conf(settings)
        hsm = Hsm(TokenConfig(settings.keystore_module, "bench", token_pin(settings)))
        hsm.open()
        hsm.create_key(SIG, KeyKind.RSA2048, KeyUsage.SIGN)
        kex = hsm.create_key(KEX, KeyKind.RSA2048, KeyUsage.EXCHANGE)
        hsm.close()
        pub: Any = serialization.load_der_public_key(kex.public_key)
        ct = pub.encrypt(b"k" * 32, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))  # noqa: S303

        print("measuring cryptography (OpenSSL) …", flush=True)
        rows.append(("cryptography, 1 process", *_software(seconds), None))
        print("measuring direct PKCS#11 …", flush=True)
        direct1 = _direct_processes(settings, ct, seconds, 1)
        rows.append(("PKCS#11 direct, 1 process", *direct1, None))
        directn = _direct_processes(settings, ct, seconds, workers)
        rows.append((f"PKCS#11 direct, {workers} processes", *directn, None))

        vhost = f"setpay-bench-{secrets.token_hex(4)}"
        users = {
            n: secrets.token_urlsafe(12)
            for n in (PREFIX + "keystore.main", PREFIX + "merchant.bench")
        }
        admin.create_vhost(vhost)
        pool = None
        try:
            for user, password in users.items():
                admin.add_user(user, password)
                admin.set_permissions(vhost, user, ".*", ".*", ".*")
            ks_user, caller = list(users)
            ks_url = _url(settings.amqp_url, ks_user, users[ks_user], vhost)
            log_file = str(Path(tmp) / "audit.log")
            spec = WorkerSpec(settings, amqp_url=ks_url, identity_prefix=PREFIX, log_file=log_file)
            pool = KeystorePool(spec, workers)
            await pool.start()
            url = _url(settings.amqp_url, caller, users[caller], vhost)
            print("measuring over the bus …", flush=True)
            single = await _bus_rates(url, ct, seconds, 64, 1)
            rows.append((f"bus, single ops, 64 in flight, {workers} workers", *single, directn))
            batched = await _bus_rates(url, ct, seconds, 4, batch)
            rows.append(
                (f"bus, batches of {batch}, 4 in flight, {workers} workers", *batched, directn)
            )
        finally:
            if pool is not None:
                await pool.stop()
            for user in users:
                admin.delete_user(user)
            admin.delete_vhost(vhost)
    return rows


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    rows = asyncio.run(_run(settings, args.seconds, args.workers or settings.keystore_workers,
                            args.batch))  # fmt: skip
    print()
    print("| RSA-2048 (SoftHSM2) | signs/s (PSS) | decrypts/s (OAEP-SHA1) "
          "| vs direct PKCS#11, same processes |")  # fmt: skip
    print("|---|---:|---:|---:|")
    for name, sign, dec, base in rows:
        ratio = f"{sign / base[0]:.0%} / {dec / base[1]:.0%}" if base else "—"
        print(f"| {name} | {sign:,.0f} | {dec:,.0f} | {ratio} |")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `setpay bench keystore`."""
    p = sub.add_parser("keystore", help="keystore signs/decrypts per second vs raw PKCS#11")
    p.add_argument("--seconds", type=float, default=2.5, help="duration of each measurement")
    p.add_argument("--workers", type=int, default=0, help="keystore processes (default setting)")
    p.add_argument("--batch", type=int, default=32, help="operations per batched request")
    p.set_defaults(func=_cmd)
