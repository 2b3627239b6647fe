"""The test environment's accounts and the function that loads them into a ``Store``.

Rule 1: these are published test numbers (Luhn-valid) and test PINs for the test
environment only; the store receives only their index, last four digits and PVV.
Rule 2: expiry dates are relative to ``now`` so the catalogue never ages: the expired card
expired last year, the others expire in three years.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from actors.issuer.accounts import AccountRecord, Store
from actors.issuer.errors import SecurityUnavailable, StoreError
from actors.issuer.security import IssuerSecurity

PinBlockFor = Callable[[str, str], Awaitable[bytes]]  # (binding digits, PIN) -> block under ZPK
PvvFor = Callable[[str, str], Awaitable[bytes]]  # (binding digits, PIN) -> PVV (keystore issuance)


@dataclass(frozen=True, slots=True)
class SeedAccount:
    """One account to create. ``reference`` is a PAN or ``bank-branch-number``."""

    name: str
    kind: str  # card | bank
    brand: str
    reference: str = field(repr=False)
    expiry: str | None
    credit_limit: int
    balance: int
    stolen: bool = False
    pin: str | None = field(default=None, repr=False)
    velocity_count: int = 20
    velocity_window: int = 3600

    @property
    def binding(self) -> str:
        """The digits a PIN block and PVV bind to (PAN, or the bank account number)."""
        return self.reference.split("-")[-1]


def environment_accounts(now: datetime) -> list[SeedAccount]:
    """Cards of two brands (ok, expired, stolen, low limit, velocity) and OPE bank accounts."""
    valid = f"{(now.year + 3) % 100:02d}12"
    lapsed = f"{(now.year - 1) % 100:02d}12"
    return [
        SeedAccount("visa-ok", "card", "visa", "4111111111111111", valid, 500_000, 0),
        SeedAccount("mc-ok", "card", "mastercard", "5555555555554444", valid, 300_000, 0),
        SeedAccount("visa-expired", "card", "visa", "4012888888881881", lapsed, 500_000, 0),
        SeedAccount(
            "mc-stolen",
            "card",
            "mastercard",
            "5105105105105100",
            valid,
            500_000,
            0,
            stolen=True,
        ),
        SeedAccount("visa-low-limit", "card", "visa", "4000000000000002", valid, 5_000, 0),
        SeedAccount(
            "mc-velocity",
            "card",
            "mastercard",
            "2223000048400011",
            valid,
            500_000,
            0,
            velocity_count=2,
        ),
        SeedAccount("bank-ok", "bank", "ope", "0001-123-1234567", None, 0, 200_000, pin="739146"),
        SeedAccount("bank-low", "bank", "ope", "0005-001-7654321", None, 0, 1_000, pin="987654"),
    ]


async def seed(
    store: Store,
    security: IssuerSecurity,
    accounts: list[SeedAccount],
    pin_block_for: PinBlockFor | None = None,
    pvv_for: PvvFor | None = None,
) -> None:
    """Create (or reset) ``accounts`` in ``store``; PINs become PVVs by ``pvv_for`` (the
    keystore's ``pin_issue``) or via ``security`` from ``pin_block_for``'s blocks."""
    for spec in accounts:
        pvv: bytes | None = None
        pan_index = await security.pan_index(spec.reference)
        held = store.account(pan_index) if spec.pin is not None else None
        if held is not None and held.pvv:
            # Seeded before (an environment brought up again): its PIN is the seed's and the
            # PVV the same, so it is kept, not issued again (the keystore allows three PIN
            # issuances per account an hour: keystore/pinguard.py).
            pvv = held.pvv
        elif spec.pin is not None and pvv_for is not None:
            pvv = await pvv_for(spec.binding, spec.pin)
        elif spec.pin is not None:
            if pin_block_for is None:
                raise StoreError(f"account {spec.name} has a PIN but no PIN block source")
            block = await pin_block_for(spec.binding, spec.pin)
            pvv = await security.pvv(spec.binding, block)
        digits = "".join(ch for ch in spec.reference if ch.isdigit())
        store.put_account(
            AccountRecord(
                pan_index=pan_index,
                kind=spec.kind,
                brand=spec.brand,
                last4=digits[-4:],
                expiry=spec.expiry,
                credit_limit=spec.credit_limit,
                balance=spec.balance,
                stolen=spec.stolen,
                pvv=pvv,
                velocity_count=spec.velocity_count,
                velocity_window=spec.velocity_window,
            )
        )


async def seed_environment(
    store: Store,
    security: IssuerSecurity,
    now: datetime,
    pin_block_for: PinBlockFor | None = None,
    pvv_for: PvvFor | None = None,
) -> list[tuple[SeedAccount, str]]:
    """Seed ``environment_accounts``; each with ``created`` or why it was skipped (a PIN
    account needs a PIN block source and a security module that computes PVVs)."""
    report: list[tuple[SeedAccount, str]] = []
    for account in environment_accounts(now):
        if account.pin is not None and pin_block_for is None and pvv_for is None:
            report.append((account, "skipped: no PIN block source"))
            continue
        try:
            await seed(store, security, [account], pin_block_for, pvv_for)
        except SecurityUnavailable as exc:
            report.append((account, f"skipped: {exc}"))
            continue
        report.append((account, "created"))
    return report
