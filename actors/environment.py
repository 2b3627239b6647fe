"""The test environment `setpay demo` needs: found running, or provisioned and started.

Rule 1: an environment started by `setpay up` (its supervisor reports every role ready) is
used as it is; nothing is provisioned or restarted.
Rule 2: otherwise every process is started by one supervisor (actors/supervisor.py), started
first so that it holds the vhost's environment lock before anything changes on the broker
and so that `setpay down` stops the environment at any point of its start-up; roles are added
to it as their prerequisites are met: keystore, then the CA (after `setpay ca init`), then
the gateway, issuer host, merchant POS and wallet (after registration and seeding). Every
step is idempotent and uses the project's own commands where they exist: `setpay keystore
init`, `setpay broker init`, key ceremonies with `setpay keystore create-key`, `setpay ca
init`. A start-up that fails stops what it started.
Rule 3: broker logins and key labels carry ``broker_user_prefix``, so a second environment
beside another (own vhost, user prefix, issuer port and data dir) never touches the first's.
Rule 4: what is printed names steps and identities only: no password, PAN or key material.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from actors import supervisor
from actors.iso8583.security import ZPK_LABEL
from actors.issuer.seed import SeedAccount
from setpay.clock import CLOCK
from setpay.config import Settings

WALLET_INSTANCE = "main"
POS_INSTANCE = "pos1"
GATEWAY_INSTANCE = "pg1"
ISSUER_INSTANCE = "host1"
BRAND = "alpha"
# Merchants the POS hosts in the test environment: (merchant id, name, MCC).
MERCHANTS: tuple[tuple[str, str, str], ...] = (
    ("M-1001", "Example Books", "5942"),
    ("M-1002", "Example Coffee", "5814"),
    ("M-1003", "Example Music", "5735"),
)
# The POS operators of the test environment: one per merchant (`setpay pos operator add`).
OPERATOR_PASSPHRASE = "demo operator passphrase, test environment only"  # noqa: S105


def operator_name(merchant_id: str) -> str:
    """The test environment's operator of ``merchant_id``."""
    return f"op-{merchant_id}"


# The test environment's explicit auto-approve policy (actors/ca/approval.py Rule 3): its
# merchants, and its gateway with what the gateway asks for at registration.
AUTO_APPROVE = " ".join(
    [f"merchant:{m[0]}" for m in MERCHANTS] + ["gateway:P-0001=JPY,USD,sale,pin-debit"]
)
# Roles added once the CA has registered the gateway and merchants and the issuer is seeded.
SERVICE_ROLES = ("gateway", "issuer", "merchant", "wallet")
READY_TIMEOUT = 120.0


class SetupError(Exception):
    """The environment cannot be brought up; the message names the step and why."""


def _valid(now: datetime) -> str:
    return f"{(now.year + 3) % 100:02d}12"


def demo_accounts(now: datetime) -> list[SeedAccount]:
    """Issuer accounts under the CA's test brand ``alpha`` (BINs 411111/400000), so their
    cards can enrol: an expired and a stolen card, and load-test cards with high limits.
    Published-style test numbers, Luhn-valid; the test environment only."""
    lapsed = f"{(now.year - 1) % 100:02d}12"
    valid = _valid(now)
    big = 10**12
    accounts = [
        SeedAccount("alpha-expired", "card", BRAND, "4000000000000010", lapsed, 500_000, 0),
        SeedAccount(
            "alpha-stolen", "card", BRAND, "4000000000000028", valid, 500_000, 0, stolen=True
        ),
    ]
    accounts += [
        SeedAccount(f"alpha-load{i}", "card", BRAND, number, valid, big, 0, velocity_count=10**9)
        for i, number in enumerate(LOAD_PANS)
    ]
    # Load testing (`setpay bench auth --mix`): a card every purchase is declined on
    # (insufficient funds: limit below any bench amount) and an OPE bank account with a PIN,
    # both without velocity limits, so a long run keeps its expected outcomes.
    accounts += [
        SeedAccount("alpha-load-decline", "card", BRAND, LOAD_DECLINE_PAN, valid, 1, 0,
                    velocity_count=10**9),
        SeedAccount("bank-load", "bank", "ope", LOAD_DEBIT_REFERENCE, None, 0, big,
                    pin=LOAD_DEBIT_PIN, velocity_count=10**9),
    ]  # fmt: skip
    # OPE debit uses the catalogue's bank account (DEBIT_NAME, seeded by seed_environment).
    return accounts


def _luhn_complete(prefix: str) -> str:
    """``prefix`` plus its Luhn check digit."""
    total = 0
    for i, ch in enumerate(reversed(prefix)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return prefix + str((10 - total % 10) % 10)


LOAD_PANS: tuple[str, ...] = tuple(_luhn_complete(f"411111000000{i:03d}") for i in range(8))
LOAD_DECLINE_PAN = _luhn_complete("411111000000900")
# Bank 0001, branch 123 like the catalogue's account; the PIN is test data.
LOAD_DEBIT_REFERENCE = "0001-123-7654000"
LOAD_DEBIT_PIN = "482916"  # a test-environment PIN (test data, like DEBIT_PIN)


def _debit_account() -> SeedAccount:
    from actors.issuer.seed import environment_accounts

    return next(a for a in environment_accounts(datetime.now(UTC)) if a.name == DEBIT_NAME)


# OPE PIN debit: the issuer catalogue's bank account (actors/issuer/seed.py), registered with
# the CA under brand alpha (bank 0001) and enrolled by the wallet as a PIN account.
DEBIT_NAME = "bank-ok"
DEBIT_BANK, DEBIT_BRANCH, DEBIT_NUMBER = _debit_account().reference.split("-")
DEBIT_PIN: str = _debit_account().pin or ""  # the seeded PIN (test data)


@dataclass
class Environment:
    """Where the environment runs and whether this call started it."""

    settings: Settings
    started: bool


def running(settings: Settings) -> bool:
    """An environment `setpay up` started is up: its supervisor reports every role ready."""
    states = supervisor.supervisor_health(settings) or {}
    return all(
        states.get(supervisor.child_of(role).identity) == "ready" for role in supervisor.UP_ROLES
    )


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, "SETPAY_DATA_DIR": str(settings.data_dir.resolve())}


def _setpay(settings: Settings, *args: str, ok_if: str | None = None) -> str:
    """Run one `setpay` command; its stdout. ``ok_if``: a failure whose text has it is fine."""
    proc = subprocess.run(  # noqa: S603 - our own interpreter and CLI, no shell
        [*supervisor.SETPAY, *args], capture_output=True, text=True, env=_env(settings),
        timeout=300, check=False,
    )  # fmt: skip
    if proc.returncode != 0 and not (ok_if and ok_if in proc.stderr + proc.stdout):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SetupError(f"`setpay {' '.join(args[:2])}` failed: {tail[0]}")
    return proc.stdout


def _url(settings: Settings, identity: str) -> str:
    from broker.provision import identity_url

    return identity_url(settings.data_dir, identity, settings.broker_vhost, settings.amqp_url,
                        user_prefix=settings.broker_user_prefix)  # fmt: skip


def _start_roles(settings: Settings, roles: tuple[str, ...]) -> None:
    """Have the environment's supervisor run ``roles`` too; wait until they are ready."""
    try:
        supervisor.add_roles(settings, roles)
        supervisor.wait_ready(settings, roles, READY_TIMEOUT)
    except supervisor.SupervisorError as exc:
        raise SetupError(f"starting {', '.join(roles)}: {exc}") from None


def _root_der(settings: Settings) -> bytes:
    from actors.ca.hierarchy import Hierarchy
    from actors.ca.store import CAStore
    from protocol.certs import certificate_der

    store = CAStore.open(settings.data_dir)
    try:
        return certificate_der(Hierarchy(store, keys=None).root)  # type: ignore[arg-type]
    finally:
        store.close()


async def _register_parties(settings: Settings, say: Callable[[str], None]) -> None:
    """Gateway and merchants obtain certificates as their own identities; the POS learns
    the gateway's key-exchange certificate."""
    from actors.gateway import identity as gw_ident
    from actors.merchant.enroll import enroll_merchant
    from actors.merchant.operators import add_operator, operator
    from actors.merchant.store import MerchantStore
    from broker.connection import connect
    from broker.peer import PeerLink
    from keystore.client import KeystoreClient
    from keystore.keyring import KeyRing
    from protocol.certs import certificate_der, load_certificate
    from protocol.keys import get_suite
    from protocol.requester import CAClient

    root = load_certificate(_root_der(settings))
    path = gw_ident.identity_path(settings.data_dir, GATEWAY_INSTANCE)
    if path.exists():
        gateway = gw_ident.GatewayIdentity.load(path)
        say(f"gateway.{GATEWAY_INSTANCE}: registered already")
    else:
        bus = await connect(_url(settings, f"gateway.{GATEWAY_INSTANCE}"), name="gateway.env-register")
        try:
            keystore = await KeystoreClient.create(bus, timeout=settings.broker_rpc_timeout)
            client = CAClient(
                await PeerLink(bus, "gateway", GATEWAY_INSTANCE).start(),
                oaep_hash=get_suite(settings.suite).oaep_hash, clock=CLOCK,
            )
            gateway = await gw_ident.register(
                client, KeyRing(keystore, get_suite(settings.suite)), root=root, brand=BRAND,
                gateway_id="P-0001",
                acquirer_bin="411111", currencies="JPY,USD",
            )  # fmt: skip
            await client.close()
            await keystore.close()
        finally:
            await bus.close()
        gateway.save(path)
        say(f"gateway.{GATEWAY_INSTANCE}: certificates issued by the CA")
    store = MerchantStore.open(settings.data_dir, POS_INSTANCE)
    bus = await connect(_url(settings, f"merchant.{POS_INSTANCE}"), name="merchant.env-register")
    try:
        keystore = await KeystoreClient.create(bus, timeout=settings.broker_rpc_timeout)
        keys = KeyRing(keystore, get_suite(settings.suite))
        client = CAClient(
            await PeerLink(bus, "merchant", POS_INSTANCE).start(),
            oaep_hash=get_suite(settings.suite).oaep_hash, clock=CLOCK,
        )
        for merchant_id, name, mcc in MERCHANTS:
            if store.merchant(merchant_id) is not None:
                continue
            await enroll_merchant(store, keys, client, root=root, brand=BRAND,
                                  merchant_id=merchant_id, name=name, mcc=mcc)  # fmt: skip
            say(f"merchant {merchant_id} at merchant.{POS_INSTANCE}: certificates issued")
        for merchant_id, _name, _mcc in MERCHANTS:
            if operator(store.db, operator_name(merchant_id)) is None:
                add_operator(store.db, operator_name(merchant_id), merchant_id,
                             OPERATOR_PASSPHRASE, client.clock.now_ms())  # fmt: skip
                say(f"POS operator {operator_name(merchant_id)} of {merchant_id}")
        store.save_gateway(
            BRAND, certificate_der(gateway.kx_cert), [certificate_der(c) for c in gateway.chain],
            client.clock.now_ms(),
        )  # fmt: skip
        await client.close()
        await keystore.close()
    finally:
        await bus.close()
        store.close()


async def _seed_issuer(settings: Settings) -> list[str]:
    """`setpay issuer seed` (the catalogue) plus this demo's alpha-brand accounts."""
    from actors.issuer.accounts import Store
    from actors.issuer.errors import SecurityUnavailable
    from actors.issuer.seed import seed, seed_environment
    from actors.issuer.service import IssuerService

    svc = IssuerService(settings, ISSUER_INSTANCE, url=_url(settings, f"issuer.{ISSUER_INSTANCE}"))
    try:
        security = await svc.open_keystore_security()
        svc.db_path.parent.mkdir(parents=True, exist_ok=True)
        store = Store(svc.db_path)
        try:
            now = CLOCK.now()
            client = getattr(security, "client", None)
            pvk = getattr(security, "pvk_label", "")

            async def pvv_for(number: str, pin: str) -> bytes:
                # PIN issuance inside the keystore: only the PVV comes back, never a PIN block.
                from actors.issuer.errors import SecurityUnavailable
                from keystore.errors import KeystoreError

                assert client is not None
                try:
                    return bytes(await client.pin_issue(pvk, number, pin))
                except KeystoreError as exc:  # the account is reported skipped, not fatal
                    raise SecurityUnavailable(f"pin_issue: {type(exc).__name__}") from None

            source = pvv_for if client is not None else None
            report = await seed_environment(store, security, now, pvv_for=source)
            for account in demo_accounts(now):
                if account.pin is not None and source is None:
                    report.append((account, "skipped: no PIN block source"))
                    continue
                try:
                    await seed(store, security, [account], pvv_for=source)
                except SecurityUnavailable as exc:
                    report.append((account, f"skipped: {exc}"))
                    continue
                report.append((account, "created"))
        finally:
            store.close()
    finally:
        await svc.stop()
    created = [a.name for a, status in report if status == "created"]
    if DEBIT_NAME not in created:  # the OPE rows need its PVV, made inside the keystore
        why = next((status for a, status in report if a.name == DEBIT_NAME), "not seeded")
        raise SetupError(f"issuer seed: OPE account {DEBIT_NAME} {why}")
    return created


def _has_operator_login(settings: Settings) -> bool:
    from broker.credentials import CredentialStore, credentials_path
    from broker.provision import OPERATOR

    store = CredentialStore(credentials_path(settings.data_dir))
    return store.get(settings.broker_user_prefix + OPERATOR) is not None


def _broker_init(settings: Settings, say: Callable[[str], None]) -> None:
    _setpay(settings, "broker", "init")
    say("broker: vhost, identities and permissions applied")


def ensure(settings: Settings, say: Callable[[str], None] = print) -> Environment:
    """The running environment (Rule 1), or provision and start one (Rule 2)."""
    from broker import admin

    if running(settings):
        say(f"using the environment `setpay up` started under {settings.data_dir}")
        return Environment(settings, started=False)
    say(f"bringing up the test environment in {settings.data_dir}, vhost {settings.broker_vhost}")
    _setpay(settings, "keystore", "init")
    say("keystore: token ready")
    # The supervisor takes the vhost's lock before `broker init` may reset any password, but
    # it needs the vhost to exist and the operators' login (it takes the lock as that login):
    # a vhost that does not exist yet, or one where no supervisor holds the lock while this
    # data dir has no operator password yet, is nobody else's.
    fresh = settings.broker_vhost not in admin.list_vhosts() or (
        not _has_operator_login(settings)
        and supervisor.LOCK_QUEUE not in admin.list_names("queues", settings.broker_vhost)
    )
    if fresh:
        _broker_init(settings, say)
    try:
        supervisor.start_detached(settings, ())
        supervisor.wait_ready(settings, (), READY_TIMEOUT)
    except supervisor.SupervisorError as exc:
        raise SetupError(f"supervisor: {exc}") from None
    try:
        _provision_and_start(settings, say, broker_init=not fresh)
    except BaseException:
        supervisor.down(settings, grace=10.0)
        raise
    return Environment(settings, started=True)


def _provision_and_start(settings: Settings, say: Callable[[str], None], *,
                         broker_init: bool) -> None:  # fmt: skip
    if broker_init:
        _broker_init(settings, say)
    prefix = settings.broker_user_prefix
    for label, kind in ((f"{prefix}issuer.{ISSUER_INSTANCE}/issuer-pan-index", "hmac-sha256"),
                        (f"{prefix}issuer.{ISSUER_INSTANCE}/issuer-pvk", "hmac-sha256"),
                        (f"{prefix}{ZPK_LABEL}", "aes256")):  # fmt: skip
        _setpay(settings, "keystore", "create-key", "--label", label, "--kind", kind,
                "--usage", "secret", ok_if="exists")  # fmt: skip
    say("keystore: issuer and zone keys present (key ceremony)")
    _start_roles(settings, ("keystore",))
    say("keystore: serving")
    out = _setpay(settings, "ca", "init", "--url", _url(settings, "ca.main"),
                  "--auto-approve", AUTO_APPROVE)  # fmt: skip
    say(f"ca: {out.strip() or 'hierarchy ready'}")
    _start_roles(settings, ("ca",))
    asyncio.run(_register_parties(settings, say))
    accounts = asyncio.run(_seed_issuer(settings))
    say(f"issuer.{ISSUER_INSTANCE}: {len(accounts)} accounts seeded")
    wallet_root = Path(settings.data_dir) / "wallet" / "root.der"
    wallet_root.parent.mkdir(parents=True, exist_ok=True)
    wallet_root.write_bytes(_root_der(settings))
    _start_roles(settings, SERVICE_ROLES)
    say(f"up: keystore, ca, {', '.join(SERVICE_ROLES)}; `setpay down` stops them")
