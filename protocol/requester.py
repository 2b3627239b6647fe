"""The end-entity side of registration: what a wallet, merchant POS or gateway runs.

Rule 1: every CA response is checked before it is used: the CA certificate chains to the
trusted root with the right role and brand, the signature verifies, our challenge and RRPID
come back, the certificate issued holds *our* public key (and, for a cardholder, the hash of
our account under PANSecret).
Rule 2: the requester's private keys are ``PrivateKey`` objects (the HSM through the keystore);
the PAN travels only inside EXH/EncX extra parts to the CA's key-exchange key.
Rule 3: ``CAClient`` wraps and reads; the bytes move over an injected ``Transport`` (the
actors' ``broker.peer.PeerLink`` to the ``ca`` role), so this module does no I/O itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography import x509

from protocol import codec, ids, pan
from protocol.certreq import CERT_REQ, inquiry_key, pop_signer, renewal_content, spki_der
from protocol.certs import (
    CertType,
    cert_thumbprint,
    certificate_der,
    load_certificate,
    public_key_of,
    set_extension,
)
from protocol.certs import (
    KeyUse as CertKeyUse,
)
from protocol.chain import Expect, validate_path
from protocol.envelope import make_exh
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import to_dt
from protocol.keys import PrivateKey, PublicKey, Suite, suite_for_public_key
from protocol.messages import (
    AccountKind,
    AcctInfo,
    BackKeyData,
    CardCInitReq,
    CardCInitRes,
    CardCInitResData,
    CertInqReq,
    CertInqReqData,
    CertInqRes,
    CertReq,
    CertReqData,
    CertRes,
    CertResData,
    CertStatusCode,
    EntityKind,
    IDData,
    KeyUse,
    MeAqCInitReq,
    MeAqCInitRes,
    MeAqCInitResData,
    MessageType,
    PublicKeyInfo,
    RegFieldValue,
    RegFormReq,
    RegFormReqData,
    RegFormRes,
    RegFormResData,
    RequestType,
)
from protocol.revocation import RevocationState
from protocol.set_error import RemoteError, expect_reply
from protocol.signed import SignedData, open_signed, sign_data
from protocol.treatments import make_enc, make_encx, open_enck
from protocol.wrapper import amqp_type, encode_message, make_header

LANGUAGE = "en"


class CARequestError(Exception):
    """The CA answered a SET Error (``code``; ``verified``: signed by a CA certificate we
    trust) or a refusal status (``status``)."""

    def __init__(
        self,
        detail: str,
        *,
        code: ErrorCode | None = None,
        status: CertStatusCode | None = None,
        verified: bool = False,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.status = status
        self.verified = verified


class Transport(Protocol):
    """Moves one wrapped request to its party and returns (reply type, reply bytes); in the
    actors this is ``broker.peer.PeerLink``."""

    traffic: list[bytes]

    async def request_raw(self, msg_type: str, data: bytes) -> tuple[str, bytes]: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class CAClient:
    """Wraps requests to a CA and reads its replies over ``link`` (Rule 3)."""

    link: Transport
    clock: ids.Clock = field(default_factory=ids.SystemClock)
    oaep_hash: str = "sha1"  # the requester's suite (its key ring's), for what it seals

    @property
    def traffic(self) -> list[bytes]:
        """Every body sent and received, when the link records (tests grep it)."""
        return self.link.traffic

    async def close(self) -> None:
        await self.link.close()

    async def request_raw(self, msg_type: MessageType | str, data: bytes) -> tuple[str, bytes]:
        """Send ``data`` as ``msg_type``; (reply type, reply bytes)."""
        kind = msg_type if isinstance(msg_type, str) else amqp_type(msg_type)
        return await self.link.request_raw(kind, data)

    async def request(
        self,
        body: Any,
        rrpid: bytes,
        expect: type,
        *,
        ca: CAView | None = None,
        root: x509.Certificate | None = None,
    ) -> Any:
        """Wrap ``body``, send it, decode the reply; a SET Error raises ``CARequestError``
        (a signed one is verified under ``ca``'s certificate or a chain to ``root``)."""
        data = encode_message(make_header(self.clock.now_ms(), rrpid=rrpid), body)
        _, reply = await self.request_raw(_type_of(body), data)
        return decode_reply(reply, self.clock.now_ms(), expect, ca=ca, root=root)


def _type_of(body: Any) -> MessageType:
    from protocol.messages import MESSAGE_TYPES

    return MESSAGE_TYPES[type(body)]


def decode_reply(
    reply: bytes,
    now_ms: int,
    expect: type,
    *,
    ca: CAView | None = None,
    root: x509.Certificate | None = None,
) -> Any:
    """Decode a CA reply; a SET Error (read by ``protocol.set_error.read_error``) raises
    ``CARequestError`` with its code."""
    trusted = None if ca is None else ca.ca_cert
    try:
        decoded = expect_reply(reply, now_ms, expect, who="CA", trusted=trusted, root=root)
    except RemoteError as exc:
        raise CARequestError(str(exc), code=exc.code, verified=exc.verified) from None
    return decoded.body


# --- checking what the CA sent -------------------------------------------------------------


@dataclass
class CAView:
    """What a requester learnt about one CA: its certificates, checked to the root."""

    root: x509.Certificate
    brand: str
    ca_cert: x509.Certificate
    kx_cert: x509.Certificate
    brand_cert: x509.Certificate
    bci: bytes | None
    crls: list[bytes]
    oaep_hash: str = "sha1"  # the requester's suite: what it seals to the CA's key under

    @property
    def suite(self) -> Suite:
        return suite_for_public_key(public_key_of(self.kx_cert), self.oaep_hash)

    def revocation(self, now_ms: int) -> RevocationState | None:
        if self.bci is None:
            return None
        return RevocationState.load(self.bci, self.brand_cert, self.crls, _dt(now_ms))


def _dt(ms: int) -> Any:
    return to_dt(ms)


def _verify_ca(
    root: x509.Certificate,
    brand: str,
    ca_type: CertType,
    certs: list[bytes],
    bci: bytes | None,
    crls: list[bytes],
    now_ms: int,
) -> CAView:
    parsed = [load_certificate(c) for c in certs]
    by_role: dict[tuple[CertType, CertKeyUse], x509.Certificate] = {}
    for cert in parsed:
        ext = set_extension(cert)
        by_role[(ext.cert_type, ext.key_use)] = cert
    try:
        ca = by_role[(ca_type, CertKeyUse.SIGNATURE)]
        kx = by_role[(ca_type, CertKeyUse.KEY_EXCHANGE)]
        brand_cert = by_role[(CertType.BRAND, CertKeyUse.SIGNATURE)]
    except KeyError:
        raise ProtocolError(ErrorCode.MISSING_CERTIFICATE, "CA certificates missing") from None
    now = _dt(now_ms)
    validate_path(
        brand_cert,
        [],
        root=root,
        now=now,
        expect=Expect(CertType.BRAND, CertKeyUse.SIGNATURE, brand),
        revocation=None,
    )
    revocation = RevocationState.load(bci, brand_cert, crls, now) if bci is not None else None
    for cert, use in ((ca, CertKeyUse.SIGNATURE), (kx, CertKeyUse.KEY_EXCHANGE)):
        validate_path(
            cert,
            [brand_cert],
            root=root,
            now=now,
            expect=Expect(ca_type, use, brand),
            revocation=revocation,
        )
    return CAView(root, brand, ca, kx, brand_cert, bci, list(crls))


def _open_signed(data: bytes, cert: x509.Certificate, content_type: str, record: type) -> Any:
    signed = codec.decode(SignedData, data)
    if signed.signer != cert_thumbprint(cert):
        raise ProtocolError(ErrorCode.SIGNATURE_FAILURE, "signed by another certificate")
    return codec.decode(record, open_signed(signed, public_key_of(cert), content_type))


def _check_echo(got: bytes, sent: bytes, what: str) -> None:
    if got != sent:
        raise ProtocolError(ErrorCode.CHALLENGE_MISMATCH, f"{what} not echoed")


def _check_issued(cert: x509.Certificate, public_key: PublicKey) -> None:
    if spki_der(public_key_of(cert)) != spki_der(public_key):
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "certificate holds another key")


# --- cardholder --------------------------------------------------------------------------


@dataclass
class CardholderRegistration:
    """The result of a cardholder registration (``pan_secret`` stays with the wallet)."""

    cert: x509.Certificate
    chain: list[x509.Certificate]
    pan_secret: bytes = field(repr=False)
    ca: CAView


async def card_cinit(
    client: CAClient, root: x509.Certificate, brand: str, lid: bytes,
    account_kind: AccountKind = AccountKind.CARD,
) -> CAView:  # fmt: skip
    """CardCInit for an ``account_kind`` account: the CCA's certificates, checked to ``root``,
    and its signed answer."""
    rrpid, chall = ids.new_rrpid(), ids.new_challenge()
    res: CardCInitRes = await client.request(
        CardCInitReq(rrpid, lid, chall, brand, account_kind, []), rrpid, CardCInitRes,
        root=root,
    )  # fmt: skip
    ca = _verify_ca(root, brand, CertType.CCA, res.certs, res.bci, res.crls, client.clock.now_ms())
    ca.oaep_hash = client.oaep_hash
    data: CardCInitResData = _open_signed(res.signed, ca.ca_cert, "CardCInitRes", CardCInitResData)
    _check_echo(data.chall_ee, chall, "Chall-EE")
    _check_echo(data.rrpid, rrpid, "RRPID")
    if data.ca_e_thumb != cert_thumbprint(ca.kx_cert):
        raise ProtocolError(ErrorCode.THUMBS_MISMATCH, "CAEThumb is not the CA's kx cert")
    return ca


async def build_reg_form_req(
    ca: CAView, lid: bytes, account: pan.Account
) -> tuple[RegFormReq, RegFormReqData]:
    """RegFormReq = EXH(CCA, RegFormReqData, PANOnly): the PAN only in the extra part."""
    data = RegFormReqData(
        ids.new_rrpid(), lid, ids.new_challenge(), RequestType.INITIAL, LANGUAGE, _held(ca)
    )
    enc = await make_exh(
        ca.suite,
        public_key_of(ca.kx_cert),
        cert_thumbprint(ca.kx_cert),
        "RegFormReq",
        codec.encode(data),
        codec.encode(pan.make_pan_only(account)),
    )
    return RegFormReq(enc), data


def check_reg_form_res(res: RegFormRes, sent: RegFormReqData, ca: CAView) -> RegFormResData:
    data: RegFormResData = _open_signed(res.signed, ca.ca_cert, "RegFormRes", RegFormResData)
    _check_echo(data.chall_ee2, sent.chall_ee2, "Chall-EE2")
    if data.form is None:
        raise CARequestError("CA referred the registration", status=CertStatusCode.REQUEST_PENDED)
    return data


@dataclass
class PendingCertReq:
    """A cardholder CertReq built, with what the requester keeps to read the answer."""

    req: CertReq
    data: CertReqData
    back_key: bytes = field(repr=False)
    card_secret: bytes = field(repr=False)


async def build_cardholder_cert_req(
    ca: CAView,
    form: RegFormResData | None,
    *,
    key: PrivateKey,
    account: pan.Account,
    expiry: str,
    values: dict[str, str],
    lid: bytes,
    renew: tuple[PrivateKey, list[x509.Certificate]] | None = None,
) -> PendingCertReq:
    """CertReq = EncX(new key, CCA, CertReqData, AcctInfo{account, CardSecret}); a renewal
    (no form: ``form=None``) also carries the request signed with the old key and chain."""
    if (form is None) != (renew is not None):
        raise ValueError("a registration needs the form, a renewal the old key and chain")
    card_secret, back_key = pan.new_secret(), pan.new_secret()
    data = CertReqData(
        ids.new_rrpid(),
        lid,
        ids.new_challenge(),
        None if form is None else form.chall_ca,
        RequestType.INITIAL if renew is None else RequestType.RENEWAL,
        0 if form is None or form.form is None else form.form.reg_form_id,
        [RegFieldValue(k, v) for k, v in values.items()],
        BackKeyData("aes-256-gcm", back_key),
        [PublicKeyInfo(KeyUse.SIGNATURE, spki_der(key.public_key()))],
        None if renew is None else cert_thumbprint(renew[1][0]),
        _held(ca),
    )
    content = codec.encode(data)
    certs: list[bytes] = []
    if renew is not None:
        content = await renewal_content(renew[0], cert_thumbprint(renew[1][0]), content)
        certs = [certificate_der(c) for c in renew[1]]
    acct = AcctInfo(codec.encode(pan.make_pan_token(account, expiry)), card_secret)
    enc = await make_encx(
        key,
        pop_signer(key.public_key()),
        key.suite,
        public_key_of(ca.kx_cert),
        cert_thumbprint(ca.kx_cert),
        CERT_REQ,
        content,
        codec.encode(acct),
    )
    return PendingCertReq(CertReq(enc, certs), data, back_key, card_secret)


def check_cardholder_cert_res(
    res: CertRes,
    pending: PendingCertReq,
    ca: CAView,
    *,
    key: PrivateKey,
    account: pan.Account,
    expiry: str,
    now_ms: int,
) -> CardholderRegistration:
    """Open the EncK CertRes with our CABackKey and check the certificate (Rule 1)."""
    return _check_cardholder_answer(
        res, pending, ca, key=key, account=account, expiry=expiry, now_ms=now_ms,
        enck_key=pending.back_key, rrpid=pending.data.rrpid, chall_ee3=pending.data.chall_ee3,
    )  # fmt: skip


def _check_cardholder_answer(
    res: CertRes | CertInqRes,
    pending: PendingCertReq,
    ca: CAView,
    *,
    key: PrivateKey,
    account: pan.Account,
    expiry: str,
    now_ms: int,
    enck_key: bytes,
    rrpid: bytes,
    chall_ee3: bytes,
) -> CardholderRegistration:
    content_type = "CertRes" if isinstance(res, CertRes) else "CertInqRes"
    opened = open_enck(
        enck_key, res.protected, public_key_of(ca.ca_cert), content_type, context=rrpid
    )
    data = codec.decode(CertResData, opened.content)
    _check_echo(data.chall_ee3, chall_ee3, "Chall-EE3")
    _check_echo(data.rrpid, rrpid, "RRPID")
    status = data.status
    if status.code is not CertStatusCode.REQUEST_COMPLETE or status.nonce_cca is None:
        raise CARequestError(f"CA refused: {status.code.name}", status=status.code)
    certs = [load_certificate(c) for c in res.certs]
    cert = next((c for c in certs if cert_thumbprint(c) in data.cert_thumbs), None)
    if cert is None:
        raise ProtocolError(ErrorCode.MISSING_CERTIFICATE, "issued certificate not attached")
    _check_issued(cert, key.public_key())
    secret = pan.pan_secret(pending.card_secret, status.nonce_cca)
    if set_extension(cert).account_hash != pan.account_hash(secret, account, expiry):
        raise ProtocolError(ErrorCode.LINKAGE_FAILURE, "certificate holds another account hash")
    chain = [ca.ca_cert, ca.brand_cert]
    validate_path(
        cert,
        chain,
        root=ca.root,
        now=_dt(now_ms),
        expect=Expect(CertType.CARDHOLDER, CertKeyUse.SIGNATURE, ca.brand),
        revocation=ca.revocation(now_ms),
    )
    return CardholderRegistration(cert, chain, secret, ca)


async def register_cardholder(
    client: CAClient,
    *,
    root: x509.Certificate,
    brand: str,
    account: pan.Account,
    expiry: str,
    key: PrivateKey,
    values: dict[str, str],
) -> CardholderRegistration:
    """CardCInit → RegForm → CertReq → CertRes, checking every answer (Rule 1)."""
    lid = ids.new_lid()
    ca = await card_cinit(client, root, brand, lid, account.kind)
    req2, data2 = await build_reg_form_req(ca, lid, account)
    form = check_reg_form_res(await client.request(req2, data2.rrpid, RegFormRes, ca=ca), data2, ca)
    pending = await build_cardholder_cert_req(
        ca, form, key=key, account=account, expiry=expiry, values=values, lid=lid
    )
    res: CertRes = await client.request(pending.req, pending.data.rrpid, CertRes, ca=ca)
    return check_cardholder_cert_res(
        res,
        pending,
        ca,
        key=key,
        account=account,
        expiry=expiry,
        now_ms=client.clock.now_ms(),
    )


async def inquire_cardholder(
    client: CAClient,
    pending: PendingCertReq,
    ca: CAView,
    *,
    key: PrivateKey,
    account: pan.Account,
    expiry: str,
) -> CardholderRegistration:
    """CertInq about a pended cardholder CertReq, signed with the key awaiting its certificate;
    the answer is EncK under ``inquiry_key(CABackKey, inquiry RRPID)``. Still pending or
    refused raises ``CARequestError`` with the status."""
    data = CertInqReqData(ids.new_rrpid(), pending.data.lid_ee, ids.new_challenge())
    signed = await sign_data(key, pop_signer(key.public_key()), "CertInqReq", codec.encode(data))
    res: CertInqRes = await client.request(
        CertInqReq(codec.encode(signed), []), data.rrpid, CertInqRes, ca=ca
    )
    return _check_cardholder_answer(
        res, pending, ca, key=key, account=account, expiry=expiry,
        now_ms=client.clock.now_ms(), enck_key=inquiry_key(pending.back_key, data.rrpid),
        rrpid=data.rrpid, chall_ee3=data.chall_ee3,
    )  # fmt: skip


def _held(ca: CAView) -> list[bytes]:
    from protocol import primitives
    from protocol.revocation import bci_thumbprint

    thumbs = [cert_thumbprint(c) for c in (ca.ca_cert, ca.kx_cert, ca.brand_cert)]
    thumbs += [primitives.thumbprint(c) for c in ca.crls]
    if ca.bci is not None:
        thumbs.append(bci_thumbprint(ca.bci))
    return thumbs


# --- merchant and gateway ------------------------------------------------------------------


@dataclass
class EntityRegistration:
    sig_cert: x509.Certificate
    kx_cert: x509.Certificate
    chain: list[x509.Certificate]
    ca: CAView


async def me_aq_init(
    client: CAClient,
    *,
    root: x509.Certificate,
    brand: str,
    requester: EntityKind,
    id_data: IDData,
    request_type: RequestType = RequestType.INITIAL,
) -> tuple[CAView, MeAqCInitResData]:
    """Me-AqCInit: the CA's certificates (checked) and its registration form."""
    rrpid, chall = ids.new_rrpid(), ids.new_challenge()
    res: MeAqCInitRes = await client.request(
        MeAqCInitReq(
            rrpid, ids.new_lid(), chall, request_type, requester, id_data, brand, LANGUAGE, []
        ),
        rrpid,
        MeAqCInitRes,
        root=root,
    )
    ca_type = CertType.MCA if requester is EntityKind.MERCHANT else CertType.PCA
    ca = _verify_ca(root, brand, ca_type, res.certs, res.bci, res.crls, client.clock.now_ms())
    ca.oaep_hash = client.oaep_hash
    data: MeAqCInitResData = _open_signed(res.signed, ca.ca_cert, "Me-AqCInitRes", MeAqCInitResData)
    _check_echo(data.chall_ee, chall, "Chall-EE")
    return ca, data


async def build_me_aq_cert_req(
    ca: CAView,
    form_id: int,
    *,
    sig_key: PrivateKey,
    kx_key: PrivateKey,
    values: dict[str, str],
    renew: tuple[PrivateKey, list[x509.Certificate]] | None = None,
) -> tuple[CertReq, CertReqData]:
    """An Enc CertReq for a signature and a key-exchange key (renewal: old key and chain)."""
    rrpid = ids.new_rrpid()
    data = CertReqData(
        rrpid,
        ids.new_lid(),
        ids.new_challenge(),
        None,
        RequestType.RENEWAL if renew else RequestType.INITIAL,
        form_id,
        [RegFieldValue(k, v) for k, v in values.items()],
        None,
        [
            PublicKeyInfo(KeyUse.SIGNATURE, spki_der(sig_key.public_key())),
            PublicKeyInfo(KeyUse.KEY_EXCHANGE, spki_der(kx_key.public_key())),
        ],
        cert_thumbprint(renew[1][0]) if renew else None,
        _held(ca),
    )
    content = codec.encode(data)
    certs: list[bytes] = []
    if renew is not None:
        old_key, old_chain = renew
        content = await renewal_content(old_key, cert_thumbprint(old_chain[0]), content)
        certs = [certificate_der(c) for c in old_chain]
    enc = await make_enc(
        sig_key,
        pop_signer(sig_key.public_key()),
        sig_key.suite,
        public_key_of(ca.kx_cert),
        cert_thumbprint(ca.kx_cert),
        CERT_REQ,
        content,
    )
    return CertReq(enc, certs), data


def check_me_aq_cert_res(
    res: CertRes | CertInqRes,
    data: CertReqData | CertInqReqData,
    ca: CAView,
    cert_type: CertType,
    sig_key: PrivateKey,
    kx_key: PrivateKey,
    now_ms: int,
) -> EntityRegistration:
    """Verify a merchant/gateway CertRes (or CertInqRes): signature, echo, both certificates
    hold our keys. A pended request raises ``CARequestError`` with ``status`` REQUEST_PENDED."""
    content_type = "CertRes" if isinstance(res, CertRes) else "CertInqRes"
    out: CertResData = _open_signed(res.protected, ca.ca_cert, content_type, CertResData)
    _check_echo(out.chall_ee3, data.chall_ee3, "Chall-EE3")
    if out.status.code is not CertStatusCode.REQUEST_COMPLETE:
        raise CARequestError(f"CA answered {out.status.code.name}", status=out.status.code)
    issued = [c for c in map(load_certificate, res.certs) if cert_thumbprint(c) in out.cert_thumbs]
    by_use = {set_extension(c).key_use: c for c in issued}
    sig, kx = by_use.get(CertKeyUse.SIGNATURE), by_use.get(CertKeyUse.KEY_EXCHANGE)
    if sig is None or kx is None:
        raise ProtocolError(ErrorCode.MISSING_CERTIFICATE, "issued certificates not attached")
    _check_issued(sig, sig_key.public_key())
    _check_issued(kx, kx_key.public_key())
    chain = [ca.ca_cert, ca.brand_cert]
    for cert, use in ((sig, CertKeyUse.SIGNATURE), (kx, CertKeyUse.KEY_EXCHANGE)):
        validate_path(
            cert,
            chain,
            root=ca.root,
            now=_dt(now_ms),
            expect=Expect(cert_type, use, ca.brand),
            revocation=ca.revocation(now_ms),
        )
    return EntityRegistration(sig, kx, chain, ca)


async def inquire(
    client: CAClient,
    pended: CertReqData,
    ca: CAView,
    cert_type: CertType,
    sig_key: PrivateKey,
    kx_key: PrivateKey,
) -> EntityRegistration:
    """CertInq about a pended CertReq, signed with the key awaiting its certificate."""
    data = CertInqReqData(ids.new_rrpid(), pended.lid_ee, ids.new_challenge())
    signed = await sign_data(
        sig_key, pop_signer(sig_key.public_key()), "CertInqReq", codec.encode(data)
    )
    res: CertInqRes = await client.request(
        CertInqReq(codec.encode(signed), []), data.rrpid, CertInqRes, ca=ca
    )
    return check_me_aq_cert_res(res, data, ca, cert_type, sig_key, kx_key, client.clock.now_ms())


async def register_entity(
    client: CAClient,
    *,
    root: x509.Certificate,
    brand: str,
    requester: EntityKind,
    id_data: IDData,
    sig_key: PrivateKey,
    kx_key: PrivateKey,
    values: dict[str, str],
    renew: tuple[PrivateKey, list[x509.Certificate]] | None = None,
) -> EntityRegistration:
    """Me-AqCInit → CertReq (Enc) → CertRes S(CA): a merchant's or gateway's two certs."""
    ca, init = await me_aq_init(
        client,
        root=root,
        brand=brand,
        requester=requester,
        id_data=id_data,
        request_type=RequestType.RENEWAL if renew else RequestType.INITIAL,
    )
    if init.form is None:
        raise CARequestError("CA referred the registration", status=CertStatusCode.REQUEST_PENDED)
    req, data = await build_me_aq_cert_req(
        ca, init.form.reg_form_id, sig_key=sig_key, kx_key=kx_key, values=values, renew=renew
    )
    res: CertRes = await client.request(req, data.rrpid, CertRes, ca=ca)
    cert_type = CertType.MERCHANT if requester is EntityKind.MERCHANT else CertType.GATEWAY
    return check_me_aq_cert_res(res, data, ca, cert_type, sig_key, kx_key, client.clock.now_ms())
