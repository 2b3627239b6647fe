"""End-to-end issuance through the CA actor over RabbitMQ + SoftHSM2; PAN never in clear."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from actors.ca.hierarchy import export_pem, pem
from broker.topology import TRACE_EXCHANGE
from protocol import ids, pan
from protocol.certs import CertType, KeyUse, set_extension
from protocol.errors import ErrorCode
from protocol.messages import (
    AccountKind,
    CardCInitReq,
    CardCInitRes,
    CertRes,
    EntityKind,
    IDData,
)
from protocol.requester import (
    CAClient,
    CARequestError,
    build_cardholder_cert_req,
    card_cinit,
    check_cardholder_cert_res,
    register_cardholder,
    register_entity,
)
from tests.fixtures_ca import CAEnv, files_bytes, new_key

PAN = "4111111111111111"  # alpha BIN 411111, Luhn-valid
EXPIRY = "3012"
FORM = {"name": "Hanako Test", "postal_code": "100-0001"}
MERCHANT_FORM = {"merchant_id": "M-2001", "merchant_name": "Example Books", "mcc": "5942"}
GATEWAY_FORM = {"gateway_id": "P-1", "currencies": "JPY,USD", "pin_debit": "yes", "sale": "no"}


def openssl_verify(tmp: Path, ca_env: CAEnv, leaf_pem: bytes, brand: str, ca: str) -> None:
    pems = export_pem(ca_env.hierarchy)
    (tmp / "root.pem").write_bytes(pems["root.pem"])
    (tmp / "chain.pem").write_bytes(pems[f"{brand}.brand.pem"] + pems[f"{brand}.{ca}.pem"])
    (tmp / "leaf.pem").write_bytes(leaf_pem)
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp / "root.pem"), "-untrusted",
         str(tmp / "chain.pem"), str(tmp / "leaf.pem")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


async def collect(trace: Any, wanted: set[bytes], timeout: float = 5.0) -> list[bytes]:
    """Trace copies until every one of ``wanted`` arrived (copies follow the confirmed
    publish, so they may trail the reply), or the deadline passes."""
    got: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while not wanted <= set(got) and asyncio.get_running_loop().time() < deadline:
        message = await trace.get(no_ack=True, fail=False)
        if message is None:
            await asyncio.sleep(0.02)  # polling the recorder queue
        else:
            got.append(message.body)
    return got


async def until_traced(client: CAClient, trace: Any) -> None:
    """Probe with harmless CardCInit requests until the CA's reply reaches the recorder (the
    tap of each publisher notices a new recorder within its probe interval)."""
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        rrpid = ids.new_rrpid()
        body = CardCInitReq(
            rrpid, ids.new_lid(), ids.new_challenge(), "alpha", AccountKind.CARD, []
        )
        await client.request(body, rrpid, CardCInitRes)
        reply = client.traffic[-1]
        seen = await collect(trace, {reply}, timeout=0.5)
        client.traffic.clear()
        if reply in seen:
            return
    raise AssertionError("the trace tap never recorded the CA's replies")


def pan_forms(number: str) -> list[bytes]:
    """Byte forms a leaked PAN could take: ASCII, UTF-16, packed BCD."""
    return [number.encode(), number.encode("utf-16-le"), bytes.fromhex(number)]


async def test_cardholder_registration_end_to_end(ca_env: CAEnv, tmp_path: Path) -> None:
    client, keystore = await ca_env.requester("wallet.reg1", record=True)
    key = await new_key(keystore, "card-1")
    account = pan.Account(pan.AccountKind.CARD, PAN)
    # The broker's trace tap copies every SET message; record them all.
    channel = await client.link.bus.channel(confirms=False)
    trace = await channel.declare_queue(exclusive=True)
    await trace.bind(TRACE_EXCHANGE)
    await until_traced(client, trace)
    with capture_logs() as logs:
        reg = await register_cardholder(
            client, root=ca_env.root, brand="alpha", account=account, expiry=EXPIRY,
            key=key, values=FORM,
        )  # fmt: skip
    ext = set_extension(reg.cert)
    assert (ext.cert_type, ext.key_use, ext.brand) == (
        CertType.CARDHOLDER,
        KeyUse.SIGNATURE,
        "alpha",
    )
    # The hash is of our account under PANSecret; without PANSecret it matches nothing.
    assert ext.account_hash == pan.account_hash(reg.pan_secret, account, EXPIRY)
    assert ext.account_hash != pan.account_hash(bytes(32), account, EXPIRY)
    row = ca_env.store.cert(reg.cert.serial_number)
    assert row is not None and row.cert_type == "cardholder" and row.issuer == "alpha.cca"
    openssl_verify(tmp_path, ca_env, pem(reg.cert), "alpha", "cca")
    # Least knowledge: no PAN in the database, the CA's logs or the traffic.
    ca_env.store.db.checkpoint()
    blobs = files_bytes(ca_env.store.path.parent)
    log_text = repr(logs).encode()
    assert b"ca_cert_issued" in log_text  # the logs were captured, not empty
    assert len(client.traffic) == 6  # 3 requests, 3 replies
    traced = await collect(trace, set(client.traffic))
    await channel.close()
    assert sorted(traced) == sorted(client.traffic)  # every envelope, nothing else
    blobs += [log_text, *client.traffic]
    for blob in blobs:
        for form in pan_forms(PAN):
            assert form not in blob


async def test_merchant_and_gateway_issuance(ca_env: CAEnv, tmp_path: Path) -> None:
    client, keystore = await ca_env.requester("merchant.reg1")
    sig, kx = await new_key(keystore, "sig-1"), await new_key(keystore, "kx-1", exchange=True)
    reg = await register_entity(
        client, root=ca_env.root, brand="beta", requester=EntityKind.MERCHANT,
        id_data=IDData("M-2001", "555555", None), sig_key=sig, kx_key=kx, values=MERCHANT_FORM,
    )  # fmt: skip
    for cert, use in ((reg.sig_cert, KeyUse.SIGNATURE), (reg.kx_cert, KeyUse.KEY_EXCHANGE)):
        ext = set_extension(cert)
        assert (ext.cert_type, ext.key_use, ext.brand) == (CertType.MERCHANT, use, "beta")
        assert ext.merchant is not None and ext.merchant.merchant_id == "M-2001"
        openssl_verify(tmp_path, ca_env, pem(cert), "beta", "mca")

    gclient, gkeys = await ca_env.requester("gateway.reg1")
    gsig, gkx = await new_key(gkeys, "sig-1"), await new_key(gkeys, "kx-1", exchange=True)
    greg = await register_entity(
        gclient, root=ca_env.root, brand="alpha", requester=EntityKind.GATEWAY,
        id_data=IDData(None, "411111", "acq-1"), sig_key=gsig, kx_key=gkx, values=GATEWAY_FORM,
    )  # fmt: skip
    ext = set_extension(greg.kx_cert)
    assert (ext.cert_type, ext.key_use) == (CertType.GATEWAY, KeyUse.KEY_EXCHANGE)
    assert ext.gateway is not None and ext.gateway.currencies == ["JPY", "USD"]
    # The certificate carries what the CA granted (ca_env's auto-approve policy), not what
    # the request asked (sale "no"): the CA decides (actors/ca/service.py Rule 8).
    assert ext.gateway.pin_debit and ext.gateway.sale
    openssl_verify(tmp_path, ca_env, pem(greg.sig_cert), "alpha", "pca")
    openssl_verify(tmp_path, ca_env, pem(greg.kx_cert), "alpha", "pca")


@pytest.mark.parametrize("number", ["5555555555554444"])
async def test_two_brands_serve_their_bins(ca_env: CAEnv, number: str) -> None:
    client, keystore = await ca_env.requester("wallet.reg2")
    key = await new_key(keystore, "card-beta")
    reg = await register_cardholder(
        client, root=ca_env.root, brand="beta", account=pan.Account(pan.AccountKind.CARD, number),
        expiry=EXPIRY, key=key, values=FORM,
    )  # fmt: skip
    assert set_extension(reg.cert).brand == "beta"


async def test_cardholder_renewal_signed_with_old_key(ca_env: CAEnv) -> None:
    client, keystore = await ca_env.requester("wallet.renew1")
    old_key, new_key_ = await new_key(keystore, "card-old"), await new_key(keystore, "card-new")
    account = pan.Account(pan.AccountKind.CARD, PAN)
    reg = await register_cardholder(
        client, root=ca_env.root, brand="alpha", account=account, expiry=EXPIRY, key=old_key,
        values=FORM,
    )  # fmt: skip
    lid = ids.new_lid()
    ca = await card_cinit(client, ca_env.root, "alpha", lid)
    pending = await build_cardholder_cert_req(
        ca, None, key=new_key_, account=account, expiry=EXPIRY, values={}, lid=lid,
        renew=(old_key, [reg.cert, *reg.chain]),
    )  # fmt: skip
    res = await client.request(pending.req, pending.data.rrpid, CertRes)
    renewed = check_cardholder_cert_res(
        res, pending, ca, key=new_key_, account=account, expiry=EXPIRY,
        now_ms=client.clock.now_ms(),
    )  # fmt: skip
    assert renewed.cert.serial_number != reg.cert.serial_number
    # A fresh PANSecret: the two certificates cannot be linked through their hashes.
    assert set_extension(renewed.cert).account_hash != set_extension(reg.cert).account_hash
    # Renewing someone else's certificate (old-key signature by another key) is refused.
    thief = await new_key(keystore, "card-thief")
    stolen = await build_cardholder_cert_req(
        ca, None, key=thief, account=account, expiry=EXPIRY, values={}, lid=lid,
        renew=(thief, [renewed.cert, *renewed.chain]),
    )  # fmt: skip
    with pytest.raises(CARequestError) as info:
        await client.request(stolen.req, stolen.data.rrpid, CertRes)
    assert info.value.code is ErrorCode.SIGNATURE_FAILURE


async def test_ope_bank_account_registers_under_a_brand_serving_its_bank(ca_env: CAEnv) -> None:
    """A bank account (no Luhn, no BIN) registers under alpha, which lists bank 0001; a bank
    no brand lists, or a brand listing no bank, is refused with invalidField, issuing nothing."""
    client, keystore = await ca_env.requester("wallet.bank1")
    key = await new_key(keystore, "bank-1")
    account = pan.Account(pan.AccountKind.BANK, "1234567", bank_code="0001", branch="123")
    reg = await register_cardholder(
        client, root=ca_env.root, brand="alpha", account=account, expiry=EXPIRY, key=key,
        values=FORM,
    )  # fmt: skip
    ext = set_extension(reg.cert)
    assert (ext.cert_type, ext.brand) == (CertType.CARDHOLDER, "alpha")
    assert ext.account_hash == pan.account_hash(reg.pan_secret, account, EXPIRY)
    issued = len(ca_env.store.certs())
    for brand, bank in (("alpha", "0005"), ("beta", "0001")):
        other = pan.Account(pan.AccountKind.BANK, "7654321", bank_code=bank, branch="001")
        with pytest.raises(CARequestError) as info:
            await register_cardholder(
                client, root=ca_env.root, brand=brand, account=other, expiry=EXPIRY, key=key,
                values=FORM,
            )  # fmt: skip
        assert info.value.code is ErrorCode.INVALID_FIELD, (brand, bank)
    assert len(ca_env.store.certs()) == issued
