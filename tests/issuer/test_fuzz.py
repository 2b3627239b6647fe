"""Hypothesis: no byte string makes the host raise; answers to garbage are well-formed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.iso8583 import spec
from actors.issuer.accounts import Store
from actors.issuer.host import IssuerHost
from actors.issuer.seed import environment_accounts, seed
from tests.issuer.conftest import request
from tests.issuer.softsecurity import SoftIssuerSecurity

_VISA = {a.name: a for a in environment_accounts(datetime.now(UTC))}["visa-ok"]
VALID = spec.pack(request(_VISA, 100, stan="123456"))


def _host(tmp_path: Path) -> IssuerHost:
    security = SoftIssuerSecurity()
    store = Store(tmp_path / "fuzz.sqlite")
    accounts = environment_accounts(datetime.now(UTC))
    asyncio.run(seed(store, security, accounts, security.pin_block))
    return IssuerHost(store, security)


def _check(host: IssuerHost, raw: bytes) -> None:
    answer = asyncio.run(host.handle(raw))
    if answer is not None:
        message = spec.unpack(answer)  # whatever the host says must itself decode
        assert message["t"] in spec.RESPONSE_TO.values()
        assert message["39"].isdigit() and len(message["39"]) == 2
        assert "2" not in message and "52" not in message


mutation = st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255))


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_requests_never_crash_the_host(tmp_path: Path, edits) -> None:
    """A valid 0100 with up to four bytes replaced: the host answers or drops, never raises."""
    host = _host(tmp_path)
    try:
        raw = bytearray(VALID)
        for pos, value in edits:
            raw[pos] = value
        _check(host, bytes(raw))
    finally:
        host.store.close()
        for p in tmp_path.glob("fuzz.sqlite*"):
            p.unlink()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.one_of(
        st.binary(min_size=1, max_size=200),
        st.sampled_from(list(spec.RESPONSE_TO)).flatmap(
            lambda mti: st.binary(max_size=120).map(lambda b: mti.encode() + b)
        ),
    )
)
def test_random_frames_never_crash_the_host(tmp_path: Path, raw: bytes) -> None:
    """Random bytes, with and without a readable request MTI in front."""
    host = _host(tmp_path)
    try:
        _check(host, raw)
    finally:
        host.store.close()
        for p in tmp_path.glob("fuzz.sqlite*"):
            p.unlink()
