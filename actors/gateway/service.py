"""The gateway's AuthReq handling: every set-protocol.md §3.4 check, then one authorization.

Rule 1: checks run in §3.2/§3.4 order before any state change: wrapper and date; EncB unseal
with the key-exchange key; merchant signature chain (certType merchant, this brand);
baggage linkage; header ids = body ids; merchant id = signer's; PI dual signature with the
cardholder chain (certType cardholder); HOIData, HOD2, XID, merchant and gateway names;
AuthReqAmt ≤ PurchAmt in the same currency; cardholder certificate account hash. A failed
cryptographic or structural check answers a SET Error (nothing stored); a failed business
check answers AuthRes with an AuthCode (stored by RRPID, PI not consumed).
Rule 2: exactly-once effects: the ledger keys every request by RRPID (a duplicate with the same
bytes gets the stored AuthRes, other bytes get Error ``replay``) and every PI by its id (a
second use under another RRPID gets ``piPreviouslyUsed``). The host RRN is derived from the
RRPID, so a redelivered request mid-flight reaches the host's idempotency, not a second auth.
Rule 3: a host timeout answers ``noReply`` (retryable; the link stores and forwards the
reversal) and releases the PI for a new attempt under a new RRPID.
Rule 4 (OPE hook): PIs open through the keystore's ``open_pi_account`` (an ``AccountOpener``),
so a PIN block never reaches this process in clear. Without a zone PIN key (``zpk_label``)
the keystore refuses a PIN-bearing PI and the gateway answers AuthCode ``invalidTransaction``,
reason ``pinDebitUnavailable``; with one, the format 4 block under the ZPK comes back and goes
to the host as field 52 of an 0200 (OPE purchases are sales; bank accounts as field 102).
A bank account without a PIN is refused (``pinRequired``). A second opening of a PIN-bearing
PI refused by the keystore's used-PI register answers ``piPreviouslyUsed``.
Rule 5: logs and the ledger name XID, RRPID, codes and amounts, never PAN, expiry or secrets.
Rule 6 (split shipment, set-protocol.md §3.4, §5): where the brand allows subsequent
authorizations (``subsequent_auth``), an approved card authorization that leaves part of the
purchase unauthorized (PurchAmt - AuthReqAmt > 0; never an OPE debit) carries an AuthToken in
its AuthRes baggage: EncX(P, P, "AuthToken" → ``AuthTokenData`` {TransIDs, AuthRRPID, AuthAmt
= the amount that may still be authorized, TokenOpaque = the RRN}, PANToken), sealed to this
gateway's own key-exchange key and signed by it, opaque to the merchant. A later AuthReq with
``SubsequentAuthInd`` carries the token as its baggage instead of a PI (no CheckDigests, no
cardholder): a token that does not open under this gateway's key and signature is
``decryptionFailure``; one of another purchase (XID) or of another merchant's authorization
is ``unknownXID``; one already spent by an earlier AuthReq (another RRPID) is ``replay``
(each token is spent once, like a PI: its id is held in the ledger's ``pi_id``, released when
the host did not approve, so the merchant may try again); each an Error, nothing stored. An
amount above the token's is AuthCode ``amountError``. An approved subsequent authorization is
a new authorization at the issuer host (0100 under its own RRN) with its own CapToken, and a
new AuthToken for what is left, if anything.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from cryptography import x509

from actors.entrypoint import SetHandler
from actors.gateway.identity import GatewayIdentity
from actors.gateway.ledger import AUTHS, Entry, Ledger, NewAuth, Outcome, PiUsed
from actors.iso8583 import spec
from actors.iso8583.codes import ResponseCode
from actors.iso8583.link import IsoLink, LinkRequest
from actors.trust import RevocationCache
from keystore.errors import BadRequest
from protocol import codec, dualsig, ids, pan, primitives
from protocol import payment as pw
from protocol.certs import (
    CertType,
    KeyUse,
    cert_thumbprint,
    certificate_der,
    load_certificate,
    public_key_of,
    set_extension,
)
from protocol.chain import Expect, validate_path
from protocol.envelope import Envelope
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import to_dt
from protocol.keys import PrivateKey, PublicKey, Suite, suite_for_public_key
from protocol.messages import (
    AuthCode,
    AuthReq,
    AuthReqData,
    AuthResBaggage,
    AuthResData,
    AuthResPayload,
    AuthTokenData,
    CapCode,
    CapResPayload,
    CapTokenData,
    CurrAmt,
    MessageType,
    PIHead,
    ResponseData,
)
from protocol.set_error import ErrorSigner
from protocol.treatments import make_enc, make_encx, open_encx
from protocol.wrapper import Decoded, MessageHeader
from setpay.clock import CLOCK
from setpay.durability import GROUP
from setpay.logs import get_logger

log = get_logger(component="gateway")

CAP_TOKEN = "CapToken"  # noqa: S105 - a content type, not a secret
PI_ID_LABEL = "gateway/PI-id"
AUTH_TOKEN = "AuthToken"  # noqa: S105 - a content type, not a secret
AUTH_TOKEN_ID_LABEL = "gateway/AuthToken-id"  # noqa: S105 - a digest label
PIN_DEBIT_UNAVAILABLE = "pinDebitUnavailable"
# ISO 4217 alphabetic → numeric (ISO 8583 field 49) for the currencies the test brands use.
CURRENCY_NUMERIC = {"JPY": "392", "USD": "840", "EUR": "978", "GBP": "826"}
HOST_CODES: dict[ResponseCode, AuthCode] = {
    ResponseCode.APPROVED: AuthCode.APPROVED,
    ResponseCode.INVALID_TRANSACTION: AuthCode.INVALID_TRANSACTION,
    ResponseCode.INVALID_AMOUNT: AuthCode.AMOUNT_ERROR,
    ResponseCode.INVALID_CARD: AuthCode.INVALID_TRANSACTION,
    ResponseCode.FORMAT_ERROR: AuthCode.SYSTEM_ERROR,
    ResponseCode.STOLEN_CARD: AuthCode.DECLINED,
    ResponseCode.INSUFFICIENT_FUNDS: AuthCode.DECLINED,
    ResponseCode.EXPIRED_CARD: AuthCode.EXPIRED_CARD,
    ResponseCode.WRONG_PIN: AuthCode.DECLINED,
    ResponseCode.VELOCITY_EXCEEDED: AuthCode.DECLINED,
    ResponseCode.PIN_TRIES_EXCEEDED: AuthCode.DECLINED,
    ResponseCode.ISSUER_UNAVAILABLE: AuthCode.NO_REPLY,
    ResponseCode.DUPLICATE_TRANSMISSION: AuthCode.DECLINED,
    ResponseCode.SYSTEM_MALFUNCTION: AuthCode.SYSTEM_ERROR,
}


# Opens a PI's wrap for one transaction (``use_key``): the keystore's ``HsmAccountOpener`` in
# the actor, or a plain key for card-only PIs.
PiOpenerFactory = Callable[[bytes], "dualsig.AccountOpener | PrivateKey"]


@dataclass(frozen=True)
class Refusal:
    """A business refusal: the AuthCode and a reason word for ResponseData."""

    code: AuthCode
    reason: str


@dataclass
class Checked:
    """An AuthReq that passed every cryptographic and structural check (Rule 1)."""

    data: AuthReqData
    merchant_id: str
    merchant_kx: x509.Certificate
    refusal: Refusal | None = None
    pi_head: bytes = b""
    account: pan.PANData | pan.PANToken | None = field(default=None, repr=False)
    pin_block: bytes | None = field(default=None, repr=False)  # format 4 under the ZPK
    purchase: CurrAmt | None = None  # PurchAmt, or what the AuthToken still allows (Rule 6)
    spend_id: bytes | None = None  # what marks the PI or the AuthToken as spent


def host_account(account: pan.Account) -> str:
    """The host's account reference: the PAN, or ``bank-branch-number`` (field 102)."""
    if account.kind is pan.AccountKind.CARD:
        return account.number
    return "-".join(part for part in (account.bank_code, account.branch, account.number) if part)


def rrn_of(rrpid: bytes) -> str:
    """The host RRN (field 37) of an RRPID: stable, so a retry reaches host idempotency."""
    return rrpid[:6].hex().upper()


def brand_allows(brands: str, brand: str) -> bool:
    """``subsequent_auth_brands`` (a comma list, ``*`` every brand) names ``brand``."""
    names = {b.strip() for b in brands.split(",") if b.strip()}
    return "*" in names or brand in names


def pi_id_of(pi_head: bytes) -> bytes:
    """What marks a PI as used: a labelled digest of its PIHead (no account data in it)."""
    return primitives.labelled_digest(PI_ID_LABEL, pi_head)


class GatewayService:
    """Answers wrapped AuthReqs; the caller (the actor) moves bytes and acks."""

    def __init__(
        self,
        identity: GatewayIdentity,
        sig_key: PrivateKey,
        kx_key: PrivateKey,
        ledger: Ledger,
        link: IsoLink,
        *,
        pi_opener: PiOpenerFactory | None = None,
        zpk_label: str | None = None,
        clock: ids.Clock | None = None,
        window_ms: int = ids.DEFAULT_WINDOW_MS,
        trust: RevocationCache | None = None,
        require_bci: bool = False,
        peer_suite: Callable[[PublicKey], Suite] = suite_for_public_key,
        subsequent_auth: bool = True,
    ) -> None:
        self.identity = identity
        self.subsequent_auth = subsequent_auth  # Rule 6: AuthTokens for this brand
        # Revocation (actors/trust.py): the BCI/CRLs held beside the ledger. Without a
        # BCI held, ``require_bci`` refuses (missingCertificate); otherwise CRLs are skipped
        # until the operator's refresh brings one (see trust.refresh_from_ca).
        self.trust = trust or RevocationCache(ledger.path.parent / "trust.sqlite", identity.root)
        if identity.bci is not None and self.trust.held(identity.brand) is None:
            # start from what the CA handed out at registration; newer ones replace it
            try:
                self.trust.offer(
                    identity.chain, identity.bci, identity.crls,
                    (clock or CLOCK).now_ms(),
                )  # fmt: skip
            except ProtocolError as exc:  # out of date by now: the feed pulls one at start
                log.warning("gateway_registration_bci_refused", code=exc.code.name)
        self.require_bci = require_bci
        self.peer_suite = peer_suite  # the key ring's: peers' keys under our suite's OAEP hash
        self.pi_opener: PiOpenerFactory = pi_opener or (lambda _use_key: kx_key)
        self.zpk_label = zpk_label
        self.sig_key = sig_key
        self.kx_key = kx_key
        self.ledger = ledger
        self.link = link
        self.clock = clock or CLOCK
        self.window_ms = window_ms
        self.sig_thumb = cert_thumbprint(identity.sig_cert)
        self.kx_thumb = cert_thumbprint(identity.kx_cert)
        self.kx_public: PublicKey = public_key_of(identity.kx_cert)
        self.own_certs = [certificate_der(c) for c in (identity.sig_cert, *identity.chain)]
        caps = set_extension(identity.kx_cert).gateway
        self.currencies = frozenset(caps.currencies if caps else ())
        self.sale = bool(caps and caps.sale)
        self._handlers: dict[MessageType, SetHandler] = {MessageType.AUTH_REQ: self._on_auth_req}

    # -- what the SET entrypoint asks (actors/entrypoint.py) -----------------------------------

    party = "gateway"

    @property
    def handlers(self) -> dict[MessageType, SetHandler]:
        return self._handlers

    def serve(self, handlers: dict[MessageType, SetHandler]) -> None:
        """Answer ``handlers``' message types too (capture.py, batch.py: after authorization)."""
        self._handlers.update(handlers)

    async def error_signer(self, decoded: Decoded) -> ErrorSigner | None:
        """The gateway answers its Errors unsigned."""
        return None

    async def _on_auth_req(self, decoded: Decoded) -> tuple[str, bytes]:
        rrpid = decoded.header.rrpid
        if rrpid is None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE_HEADER, "AuthReq without RRPID")
        return await self._auth_req(decoded.header, decoded.body, rrpid)

    async def _auth_req(
        self, header: MessageHeader, req: AuthReq, rrpid: bytes
    ) -> tuple[str, bytes]:
        digest = hashlib.sha256(codec.encode(req)).digest()
        known = self.ledger.get(rrpid)
        if known is not None:
            if not hmac.compare_digest(known.request_digest, digest):
                raise ProtocolError(ErrorCode.REPLAY, "RRPID already used by another request")
            if known.state == "done":
                log.info("gateway_duplicate_answered")
                return self._stored(known)
        checked = await self._check(header, req)
        return await self._authorize(checked, rrpid, digest)

    # -- checks (Rule 1) ----------------------------------------------------------------------

    def _validate(
        self, cert: x509.Certificate, pool: list[x509.Certificate], expect: Expect
    ) -> None:
        now_ms = self.clock.now_ms()
        revocation = self.trust.state(self.identity.brand, now_ms)
        if revocation is None and self.require_bci:
            raise ProtocolError(ErrorCode.MISSING_CERTIFICATE, "gateway holds no BCI")
        validate_path(
            cert,
            pool,
            root=self.identity.root,
            now=_dt(now_ms),
            expect=expect,
            revocation=revocation,
        )

    async def _check(self, header: MessageHeader, req: AuthReq) -> Checked:
        certs = [_load(der) for der in req.certs]
        by_thumb = {cert_thumbprint(c): c for c in certs}
        brand = self.identity.brand
        signers: dict[bytes, x509.Certificate] = {}

        def merchant_key(thumb: bytes) -> PublicKey:
            cert = by_thumb.get(thumb)
            if cert is None:
                raise ProtocolError(ErrorCode.MISSING_CERTIFICATE, "merchant certificate not sent")
            self._validate(cert, certs, Expect(CertType.MERCHANT, KeyUse.SIGNATURE, brand))
            signers[thumb] = cert
            return public_key_of(cert)

        data, pi, signer = await pw.open_auth_req(self.kx_key, self.kx_thumb, req, merchant_key)
        pw.check_auth_header(header, data.auth_tags)
        merchant = set_extension(signers[signer]).merchant
        if merchant is None or merchant.merchant_id != data.auth_tags.mer_term_ids.merchant_id:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "merchant id is not the signer's")
        merchant_kx = self._merchant_kx(certs, merchant.merchant_id)
        checked = Checked(data, merchant.merchant_id, merchant_kx)
        if data.payload.subsequent_auth or data.check_digests is None:
            if not (data.payload.subsequent_auth and self.subsequent_auth):
                checked.refusal = Refusal(AuthCode.INVALID_TRANSACTION, "authTokenUnsupported")
                return checked
            return await self._check_token(checked, pi)
        try:
            pid = codec.decode(dualsig.PIDualSigned, pi)
        except ProtocolError:
            env = codec.decode(Envelope, pi)  # PIUnsigned: an EXH envelope; else decodingFailure
            if env.content_type != dualsig.PI_UNSIGNED:
                raise
            checked.refusal = Refusal(AuthCode.SIGNATURE_REQUIRED, "cardholderCertRequired")
            return checked
        ch_cert = by_thumb.get(pid.signature.signer)
        if ch_cert is None:
            raise ProtocolError(ErrorCode.MISSING_CERTIFICATE, "cardholder certificate not sent")
        self._validate(ch_cert, certs, Expect(CertType.CARDHOLDER, KeyUse.SIGNATURE, brand))
        use_key = primitives.labelled_digest(
            PI_ID_LABEL, data.auth_tags.trans_ids.xid + data.auth_tags.rrpid
        )
        try:
            view = await dualsig.open_at_gateway(
                pi, self.pi_opener(use_key), self.kx_thumb, public_key_of(ch_cert), signer
            )
        except BadRequest:
            if self.zpk_label is not None:
                raise
            # Rule 4: without a zone PIN key the keystore refuses to open a PIN-bearing PI.
            checked.refusal = Refusal(AuthCode.INVALID_TRANSACTION, PIN_DEBIT_UNAVAILABLE)
            return checked
        except ProtocolError as exc:
            if exc.code is not ErrorCode.REPLAY:  # the keystore's used-PI register said so
                raise
            checked.refusal = Refusal(AuthCode.PI_PREVIOUSLY_USED, "piUsed")
            return checked
        head = codec.decode(PIHead, view.pi_head)
        account = pan.decode_pan_data(view.pan_data)
        checked.pi_head = view.pi_head
        checked.account = account
        checked.pin_block = view.pin_block
        checked.purchase = head.inputs.purch_amt
        checked.spend_id = pi_id_of(view.pi_head)
        checked.refusal = self._business(data, head, view.oi_digest, signer, account, ch_cert)
        if checked.refusal is None and account.account.kind is not pan.AccountKind.CARD:
            if view.pin_block is None:
                checked.refusal = Refusal(AuthCode.INVALID_TRANSACTION, "pinRequired")
        return checked

    async def _check_token(self, checked: Checked, token: bytes) -> Checked:
        """Rule 6: the AuthToken of a subsequent AuthReq, opened and matched."""
        try:
            opened = await open_encx(
                self.kx_key, self.kx_thumb, token, public_key_of(self.identity.sig_cert),
                AUTH_TOKEN,
            )  # fmt: skip
            assert opened.extra is not None
            data = codec.decode(AuthTokenData, opened.content)
            account = pan.decode_pan_token(opened.extra)
        except (ProtocolError, BadRequest) as exc:
            log.info("gateway_auth_token_refused", error=type(exc).__name__)
            raise ProtocolError(
                ErrorCode.DECRYPTION_FAILURE, "AuthToken does not open under this gateway"
            ) from None
        tags = checked.data.auth_tags
        if data.trans_ids != tags.trans_ids:
            raise ProtocolError(ErrorCode.UNKNOWN_XID, "AuthToken of another purchase")
        a = AUTHS.c
        origin = self.ledger.db.one(
            sa.select(a.merchant_id, a.xid, a.rrn).where(a.rrpid == data.auth_rrpid)
        )
        if (
            origin is None
            or origin.merchant_id != checked.merchant_id
            or bytes(origin.xid) != tags.trans_ids.xid
            or (origin.rrn or "").encode("ascii") != data.token_opaque
        ):
            raise ProtocolError(ErrorCode.UNKNOWN_XID, "AuthToken of no authorization of yours")
        checked.account = account
        checked.purchase = data.auth_amt
        checked.spend_id = primitives.labelled_digest(AUTH_TOKEN_ID_LABEL, data.auth_rrpid)
        asked = checked.data.payload.auth_req_amt
        if asked.currency != data.auth_amt.currency or not 0 < asked.amount <= data.auth_amt.amount:
            checked.refusal = Refusal(AuthCode.AMOUNT_ERROR, "amountAboveAuthToken")
        elif asked.currency not in self.currencies or asked.currency not in CURRENCY_NUMERIC:
            checked.refusal = Refusal(AuthCode.INVALID_TRANSACTION, "currencyNotSupported")
        elif checked.data.capture_now and not self.sale:
            checked.refusal = Refusal(AuthCode.CAPTURE_NOT_SUPPORTED, "saleNotSupported")
        return checked

    def _merchant_kx(self, certs: list[x509.Certificate], merchant_id: str) -> x509.Certificate:
        for cert in certs:
            ext = set_extension(cert)
            if (
                ext.cert_type is CertType.MERCHANT
                and ext.key_use is KeyUse.KEY_EXCHANGE
                and ext.merchant is not None
                and ext.merchant.merchant_id == merchant_id
            ):
                self._validate(
                    cert, certs, Expect(CertType.MERCHANT, KeyUse.KEY_EXCHANGE, self.identity.brand)
                )
                return cert
        raise ProtocolError(ErrorCode.MISSING_CERTIFICATE, "merchant key-exchange cert not sent")

    def _business(
        self,
        data: AuthReqData,
        head: PIHead,
        oi_digest: bytes,
        signer: bytes,
        account: pan.PANData,
        ch_cert: x509.Certificate,
    ) -> Refusal | None:
        digests = data.check_digests
        assert digests is not None
        tags = data.auth_tags
        mismatches = (
            ("HOIData", not hmac.compare_digest(oi_digest, digests.hoi_data)),
            ("HOD2", not hmac.compare_digest(head.inputs.hod, digests.hod2)),
            ("XID", head.trans_ids != tags.trans_ids),
            ("MerchantID", head.merchant_id != tags.mer_term_ids.merchant_id),
            ("MerchantThumb", head.merchant_thumb != signer),
            ("GatewayThumb", head.gateway_thumb != self.kx_thumb),
        )
        for what, bad in mismatches:
            if bad:
                log.info("gateway_pi_mismatch", field=what)
                return Refusal(AuthCode.PI_AUTH_MISMATCH, f"{what}Mismatch")
        expected_hash = set_extension(ch_cert).account_hash
        try:
            if expected_hash is None:
                raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "no account hash")
            pan.check_account_hash(account, expected_hash)
        except ProtocolError:
            return Refusal(AuthCode.PI_AUTH_MISMATCH, "accountHashMismatch")
        asked, agreed = data.payload.auth_req_amt, head.inputs.purch_amt
        if asked.currency != agreed.currency or not 0 < asked.amount <= agreed.amount:
            return Refusal(AuthCode.AMOUNT_ERROR, "amountAbovePurchase")
        if asked.currency not in self.currencies or asked.currency not in CURRENCY_NUMERIC:
            return Refusal(AuthCode.INVALID_TRANSACTION, "currencyNotSupported")
        if data.capture_now and not self.sale:
            return Refusal(AuthCode.CAPTURE_NOT_SUPPORTED, "saleNotSupported")
        return None

    # -- authorization (Rules 2, 3) -------------------------------------------------------------

    async def _authorize(self, checked: Checked, rrpid: bytes, digest: bytes) -> tuple[str, bytes]:
        data = checked.data
        amt = data.payload.auth_req_amt
        new = NewAuth(
            rrpid,
            digest,
            data.auth_tags.trans_ids.xid,
            None,
            checked.merchant_id,
            amt.currency,
            amt.amount,
            data.capture_now,
            None,
        )
        if checked.refusal is not None:
            return await self._refuse(checked, new, checked.refusal)
        try:
            entry = self.ledger.reserve(
                NewAuth(**{**_fields(new), "pi_id": checked.spend_id, "rrn": rrn_of(rrpid)})
            )
        except PiUsed:
            if data.payload.subsequent_auth:  # Rule 6: a spent AuthToken, nothing stored
                log.info("gateway_auth_token_reused")
                raise ProtocolError(ErrorCode.REPLAY, "AuthToken already spent") from None
            log.info("gateway_pi_reused")
            return await self._refuse(checked, new, Refusal(AuthCode.PI_PREVIOUSLY_USED, "piUsed"))
        if entry.state == "done":
            return self._stored(entry)
        # The reservation on disk before the link's journal records the host message: one
        # shared sync round, without holding up the loop (setpay/durability.py Rule 2).
        await GROUP.barrier()
        account = checked.account
        assert account is not None
        debit = checked.pin_block is not None  # OPE: a sale, PIN in field 52 (Rule 4)
        result = await self.link.request(
            LinkRequest(
                rrn_of(rrpid),
                host_account(account.account),
                amt.amount,
                mti=spec.FINANCIAL_REQUEST if data.capture_now or debit else spec.AUTH_REQUEST,
                currency=CURRENCY_NUMERIC[amt.currency],
                expiry=account.expiry if account.account.kind is pan.AccountKind.CARD else None,
                pin_block=checked.pin_block,
                merchant_id=checked.merchant_id[:15].ljust(15),
            )
        )
        code = HOST_CODES.get(result.code, AuthCode.DECLINED)
        approved = code is AuthCode.APPROVED
        auth_amt = CurrAmt(amt.currency, amt.amount if approved else 0)
        response = ResponseData(
            result.approval_code or None,
            None if approved else result.code.name.lower(),
            None,
            rrn_of(rrpid),
        )
        cap_token = await self._cap_token(rrpid, auth_amt) if approved else None
        auth_token = None
        left = 0 if checked.purchase is None else checked.purchase.amount - amt.amount
        if approved and self.subsequent_auth and not debit and left > 0:
            auth_token = await self._auth_token(data, rrpid, CurrAmt(amt.currency, left), account)
        sale = (
            CapResPayload(CapCode.SUCCESS, auth_amt, None, None)
            if approved and data.capture_now
            else None
        )
        reply = await self._auth_res(
            checked,
            AuthResPayload(auth_amt, code, response),
            sale,
            AuthResBaggage(cap_token, None, auth_token),
        )
        await GROUP.barrier()  # the journal's answer on disk before the ledger's (Rule 2)
        done = self.ledger.finish(
            rrpid,
            Outcome(
                int(code),
                auth_amt.amount,
                str(result.code),
                result.approval_code or None,
                pw.AUTH_RES_TYPE,
                reply,
                # a PI may be retried after a timeout; an AuthToken after any non-approval
                release_pi=result.retryable or (data.payload.subsequent_auth and not approved),
            ),
        )
        log.info(
            "gateway_authorized",
            auth_code=code.name,
            host_code=str(result.code),
            sale=data.capture_now,
            duplicate_at_host=result.duplicate,
        )
        return self._stored(done)

    async def _refuse(self, checked: Checked, new: NewAuth, refusal: Refusal) -> tuple[str, bytes]:
        entry = self.ledger.reserve(new)
        if entry.state == "done":
            return self._stored(entry)
        currency = checked.data.payload.auth_req_amt.currency
        payload = AuthResPayload(
            CurrAmt(currency, 0), refusal.code, ResponseData(None, refusal.reason, None, None)
        )
        reply = await self._auth_res(checked, payload, None, pw.EMPTY_BAGGAGE)
        done = self.ledger.finish(
            new.rrpid, Outcome(int(refusal.code), 0, None, None, pw.AUTH_RES_TYPE, reply)
        )
        log.info("gateway_refused", auth_code=refusal.code.name, reason=refusal.reason)
        return self._stored(done)

    async def _cap_token(self, rrpid: bytes, auth_amt: CurrAmt) -> bytes:
        """CapToken = Enc(P, P, CapTokenData): sealed to this gateway's own key-exchange key."""
        token = CapTokenData(rrpid, auth_amt, rrn_of(rrpid).encode("ascii"))
        return await make_enc(
            self.sig_key,
            self.sig_thumb,
            self.peer_suite(self.kx_public),
            self.kx_public,
            self.kx_thumb,
            CAP_TOKEN,
            codec.encode(token),
        )

    async def _auth_token(
        self, data: AuthReqData, rrpid: bytes, left: CurrAmt, account: object
    ) -> bytes:
        """Rule 6: AuthToken = EncX(P, P, AuthTokenData, PANToken), sealed to this gateway."""
        assert isinstance(account, (pan.PANData, pan.PANToken))
        token = AuthTokenData(data.auth_tags.trans_ids, rrpid, left, rrn_of(rrpid).encode("ascii"))
        extra = codec.encode(pan.make_pan_token(account.account, account.expiry))
        return await make_encx(
            self.sig_key, self.sig_thumb, self.peer_suite(self.kx_public), self.kx_public,
            self.kx_thumb, AUTH_TOKEN, codec.encode(token), extra,
        )  # fmt: skip

    async def _auth_res(
        self,
        checked: Checked,
        payload: AuthResPayload,
        sale: CapResPayload | None,
        baggage: AuthResBaggage,
    ) -> bytes:
        data = AuthResData(checked.data.auth_tags, None, payload, None, sale)
        merchant_public = public_key_of(checked.merchant_kx)
        held = self.trust.held(self.identity.brand)  # AuthReq has no Thumbs: send what we hold
        res = await pw.build_auth_res(
            self.sig_key,
            self.sig_thumb,
            self.peer_suite(merchant_public),
            merchant_public,
            cert_thumbprint(checked.merchant_kx),
            data,
            baggage,
            self.own_certs,
            crls=None if held is None else list(held.crls),
            bci=None if held is None else held.bci,
        )
        return pw.wrap_auth_res(self.clock.now_ms(), res, data)

    @staticmethod
    def _stored(entry: Entry) -> tuple[str, bytes]:
        assert entry.reply_type is not None and entry.reply is not None
        return entry.reply_type, entry.reply


def _load(der: bytes) -> x509.Certificate:
    """``load_certificate``, also for the parse errors of ``cryptography`` it lets through."""
    try:
        return load_certificate(der)
    except (x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "malformed certificate") from None


def _fields(new: NewAuth) -> dict[str, object]:
    return {name: getattr(new, name) for name in NewAuth.__dataclass_fields__}


def _dt(ms: int) -> datetime:
    return to_dt(ms)
