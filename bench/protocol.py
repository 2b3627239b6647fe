"""`setpay bench protocol`: cost of building and verifying PReq- and AuthReq-shaped structures.

Rule 1: every figure is printed next to the raw crypto it contains (sign, verify, OAEP
encrypt/decrypt or ECDH, AES-GCM), measured in the same run with the same software keys, so
the ratio shows what the protocol layer (encoding, digests, checks) adds.
Rule 2: keys here are software keys (``protocol.softkey``) made for the measurement only
(bench never touches a real token); nothing is imported from tests/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocol import codec, dualsig, primitives, treatments
from protocol.keys import SUITES, KeyType, Suite
from protocol.softkey import SoftwareKey
from protocol.softkey import oaep as _oaep
from protocol.softkey import raw_sign as _sign

PAYLOAD = 1024  # bytes of AES-GCM plaintext in the raw-op measurement (~ an AuthReq body)


BenchKey = SoftwareKey  # the name the bench and its tests use


def _thumb(key: BenchKey) -> bytes:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return primitives.thumbprint(der)


def _time(n: int, fn: Callable[[], object]) -> float:
    """Mean seconds per call of ``fn`` over ``n`` calls (after one warm-up call)."""
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


async def _atime(n: int, fn: Callable[[], Awaitable[object]]) -> float:
    await fn()
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n


def measure_raw(suite: Suite, n: int) -> dict[str, float]:
    """Seconds per raw operation with the suite's algorithms."""
    key = BenchKey(suite, "raw")
    pub = key.public_key()
    digest = secrets.token_bytes(32)
    sig = _sign(key.private_key, digest)
    gcm_key, nonce, data = secrets.token_bytes(32), secrets.token_bytes(12), bytes(PAYLOAD)
    sealed = AESGCM(gcm_key).encrypt(nonce, data, b"aad")
    raw = {
        "sign": _time(n, lambda: _sign(key.private_key, digest)),
        "verify": _time(n, lambda: primitives.verify_digest(pub, digest, sig)),
        "gcm_seal": _time(n, lambda: AESGCM(gcm_key).encrypt(nonce, data, b"aad")),
        "gcm_open": _time(n, lambda: AESGCM(gcm_key).decrypt(nonce, sealed, b"aad")),
    }
    if isinstance(pub, rsa.RSAPublicKey):
        assert isinstance(key.private_key, rsa.RSAPrivateKey)
        priv = key.private_key
        ct = pub.encrypt(bytes(180), _oaep(suite))
        raw["wrap"] = _time(n, lambda: pub.encrypt(bytes(180), _oaep(suite)))
        raw["unwrap"] = _time(n, lambda: priv.decrypt(ct, _oaep(suite)))
    else:
        assert isinstance(key.private_key, ec.EllipticCurvePrivateKey)
        priv_ec = key.private_key
        other = ec.generate_private_key(ec.SECP256R1()).public_key()
        raw["wrap"] = _time(  # ephemeral key + ECDH, as the sender does
            n, lambda: ec.generate_private_key(ec.SECP256R1()).exchange(ec.ECDH(), pub)
        )
        raw["unwrap"] = _time(n, lambda: priv_ec.exchange(ec.ECDH(), other))
    return raw


@dataclass(frozen=True)
class Row:
    name: str
    seconds: float
    ops: dict[str, int]


def _ops(suite: Suite) -> dict[str, dict[str, int]]:
    """Raw operations each measured step contains (EC seals p under k_extra: one more GCM)."""
    extra = 1 if suite.key_type is KeyType.EC else 0
    return {
        "PReq build (cardholder)": {"sign": 1, "wrap": 1, "gcm_seal": 1 + extra},
        "PReq verify (merchant)": {"verify": 1},
        "AuthReq build (merchant, EncB + PI)": {"sign": 1, "wrap": 1, "gcm_seal": 1},
        "AuthReq verify (gateway, EncB + PI)": {
            "unwrap": 2,
            "gcm_open": 2 + extra,
            "verify": 2,
        },
    }


async def measure_messages(suite: Suite, n: int) -> list[Row]:
    """Seconds per PReq/AuthReq-shaped build and verify, with realistic field sizes."""
    ch, mer, gw = (BenchKey(suite, x) for x in ("cardholder", "merchant", "gateway"))
    cht, mt, gwt = _thumb(ch), _thumb(mer), _thumb(gw)
    pi_head = codec.packb([secrets.token_bytes(32)] * 4 + ["x" * 60])  # ~200 bytes
    pan = codec.packb(["4111111111111111111", "203012", bytes(32), secrets.token_bytes(32)])
    oi_data = codec.packb([secrets.token_bytes(32)] * 6 + ["order" * 20])  # ~300 bytes
    auth_data = codec.packb([secrets.token_bytes(32)] * 6 + ["auth" * 20])
    gw_pub, ch_pub, mer_pub = gw.public_key(), ch.public_key(), mer.public_key()

    async def preq_build() -> dualsig.PurchaseParts:
        return await dualsig.make_dual_signed(
            ch, cht, suite, gw_pub, gwt, mt, pi_head, pan, oi_data
        )

    parts = await preq_build()

    async def preq_verify() -> object:
        return dualsig.verify_at_merchant(parts.pi, parts.oi, ch_pub, mt, gwt)

    async def auth_build() -> bytes:
        return await treatments.make_encb(
            mer, mt, suite, gw_pub, gwt, "AuthReq", auth_data, parts.pi
        )

    auth = await auth_build()
    oi_dig = dualsig.oi_digest(oi_data)

    async def auth_verify() -> object:
        opened = await treatments.open_encb(gw, gwt, auth, mer_pub, "AuthReq")
        assert opened.baggage is not None
        return await dualsig.open_at_gateway(opened.baggage, gw, gwt, ch_pub, mt, oi_dig)

    ops = _ops(suite)
    steps = [preq_build, preq_verify, auth_build, auth_verify]
    return [
        Row(name, await _atime(n, step), ops[name]) for name, step in zip(ops, steps, strict=True)
    ]


def run(suite_names: list[str], n: int) -> dict[str, object]:
    """Measure raw ops and messages for each suite; return the figures as plain data."""
    out: dict[str, object] = {}
    for name in suite_names:
        suite = SUITES[name]
        raw = measure_raw(suite, n)
        rows = asyncio.run(measure_messages(suite, n))
        out[name] = {
            "raw_us": {k: v * 1e6 for k, v in raw.items()},
            "messages": [
                {
                    "step": r.name,
                    "us_per_msg": r.seconds * 1e6,
                    "raw_us": sum(raw[op] * c for op, c in r.ops.items()) * 1e6,
                    "ratio": r.seconds / sum(raw[op] * c for op, c in r.ops.items()),
                    "contains": r.ops,
                }
                for r in rows
            ],
        }
    return out


def _print(result: dict[str, object]) -> None:
    for suite, figures in result.items():
        assert isinstance(figures, dict)
        raw = figures["raw_us"]
        print(f"suite {suite}: raw crypto (µs/op, software, this run)")
        print("  " + "  ".join(f"{k} {v:.1f}" for k, v in raw.items()))
        print(f"  {'step':40} {'µs/msg':>9} {'raw µs':>9} {'ratio':>6}  contains")
        for m in figures["messages"]:
            contains = ", ".join(f"{c} {op}" for op, c in m["contains"].items())
            print(
                f"  {m['step']:40} {m['us_per_msg']:9.1f} {m['raw_us']:9.1f} "
                f"{m['ratio']:6.2f}  {contains}"
            )


def _cmd(args: argparse.Namespace, settings: object) -> int:
    names = list(SUITES) if args.suite == "all" else [args.suite]
    result = run(names, args.n)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `setpay bench protocol`."""
    p = sub.add_parser(
        "protocol", help="build/verify PReq and AuthReq structures vs. the raw crypto inside"
    )
    p.add_argument("--n", type=int, default=300, help="iterations per measurement")
    p.add_argument(
        "--suite",
        default="rsa2048",
        choices=[*SUITES, "all"],
        help="cipher suite (default rsa2048; 'all' runs every suite)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_cmd)
