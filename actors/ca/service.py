"""The CA's request handling: registration and issuance over SET messages (no transport).

Rule 1: every handler runs all its checks (wrapper, decryption, signatures, challenges,
replay, form, BIN, Luhn, expiry, key novelty) before it changes state; a failed check raises
``ProtocolError`` (a SET Error reply) or, for a refusal of the request's content, answers a
CertRes with a ``CertStatusCode`` and ``failed_items``; neither stores anything.
Rule 2: effects and the reply are committed in one transaction keyed by the RRPID; the same
request again gets the stored reply, another request under a seen RRPID or a used Chall-CA
is refused (``replay``).
Rule 3: the PAN is used in memory only: to check Luhn, BIN and brand and to compute the
account hash keyed by PANSecret = CardSecret xor Nonce-CCA. It is never logged or stored.
An OPE bank account is registered under a brand that lists its bank code (no Luhn, BIN or
expiry check: those are card properties); the same account hash covers it.
Rule 4: every response carries the brand's current BCI and the CRLs it names, minus what the
requester's thumbprints show it already holds; a BCI past half its life is replaced first.
Rule 5: a merchant request in a category the acquirer reviews (``Brand.review_mccs``) or a
cardholder request under a BIN its issuer reviews (``Brand.review_bins``) is pended; a CertInq
signed with the key awaiting its certificate gets the operator's decision (``setpay ca
approve|reject``), and the certificates once issued. A pended cardholder's CABackKey and
Nonce-CCA are kept only sealed (``actors.ca.vault``).
Rule 6: a SET Error answering a request addressed to one of our CAs (by brand and role, the
envelope's recipient, or the pending request asked about) is signed by that CA, S(CA,
ErrorTBS), with its certificate and brand certificate attached; otherwise it is unsigned.
Rule 7: the CA decides, not the requester. Merchant and gateway certificates are asked for
only by ``merchant.*`` and ``gateway.*`` broker identities (the sender the entrypoint gives,
``actors.entrypoint.sender``), else ``unauthorizedSender``; a merchant or gateway id is bound
to the first identity the CA accepted a request from and refused (``unauthorizedSender``) to
any other; the CertInq of a pended request must come from the identity that asked.
Rule 8: a merchant or gateway CertReq is pended until the operator approves it (``setpay ca
approve``), unless the recorded auto-approve policy names it (``actors.ca.approval``); a
gateway certificate carries the operator's grant (currencies, PIN debit, sale), and a request
asking for more than the grant is refused (``rejectedByCA`` naming each item). A renewal keeps
what the renewed certificate was granted.
Rule 9: before it certifies a card or bank account the CCA asks the issuer host for an
account verification (``verify_account``); an account the host does not know, or no answer
(no issuer host configured, unreachable), gets no certificate (``rejectedByIssuer``) and
nothing is stored. Only ``verify_cards=False`` (a test setting) skips the check. The card's
standing (stolen, expired) is decided by the issuer at each authorization.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from cryptography import x509

from actors import entrypoint
from actors.ca.approval import (
    POLICY_KEY,
    PolicyError,
    Rule,
    excess,
    match,
    parse_policy,
    requester_role,
)
from actors.ca.brands import (
    CARDHOLDER_FORM,
    GATEWAY_FORM,
    MERCHANT_FORM,
    TEST_BRANDS,
    Brand,
    brand_named,
    check_account,
    check_form,
    reviewed_bin,
    takes_banks,
)
from actors.ca.errors import CAError
from actors.ca.hierarchy import Hierarchy, ca_name
from actors.ca.vault import HeldSecrets, open_held, seal_held
from actors.entrypoint import SetHandler
from actors.iso8583.codes import ResponseCode
from protocol import codec, ids, pan, primitives
from protocol.certreq import (
    OpenedCertReq,
    inquiry_key,
    load_spki,
    open_cert_req,
    open_renewal,
    pop_signer,
    spki_der,
)
from protocol.certs import (
    CertType,
    GatewayCaps,
    MerchantData,
    cert_thumbprint,
    certificate_der,
    load_certificate,
    public_key_of,
    set_extension,
    spki_hash,
)
from protocol.certs import KeyUse as CertKeyUse
from protocol.chain import Expect, validate_path
from protocol.codec import MaxLen, ShortStr
from protocol.envelope import open_exh, recipient_of
from protocol.errors import ErrorCode, ProtocolError
from protocol.ids import to_dt
from protocol.keys import PublicKey
from protocol.messages import (
    AccountKind,
    AcctInfo,
    CardCInitReq,
    CardCInitRes,
    CardCInitResData,
    CertInqReq,
    CertInqReqData,
    CertInqRes,
    CertReq,
    CertRes,
    CertResData,
    CertStatus,
    CertStatusCode,
    EntityKind,
    FailedItem,
    KeyUse,
    MeAqCInitReq,
    MeAqCInitRes,
    MeAqCInitResData,
    MessageType,
    PublicKeyInfo,
    RegFieldValue,
    RegForm,
    RegFormReq,
    RegFormReqData,
    RegFormRes,
    RegFormResData,
    RequestType,
)
from protocol.revocation import Bci, RevocationState, bci_thumbprint
from protocol.set_error import ErrorSigner
from protocol.signed import SignedData, open_signed, sign_data
from protocol.treatments import make_enck
from protocol.wrapper import (
    Decoded,
    amqp_type,
    encode_message,
    make_header,
)
from setpay.clock import CLOCK
from setpay.logs import get_logger
from setpay.store import IntegrityError

log = get_logger(component="ca")

CHALLENGE_LIFETIME_MS = 30 * 60 * 1000  # a RegFormRes's Chall-CA is good for 30 minutes


class Refusal(Exception):
    """The request is well-formed and authentic but its content is refused (a CertStatus)."""

    def __init__(self, code: CertStatusCode, items: tuple[FailedItem, ...] = ()) -> None:
        super().__init__(code.name)
        self.code = code
        self.items = items


Handler = Callable[[Decoded, bytes], Awaitable[tuple[MessageType, bytes]]]
# The issuer host's answer to an account verification of a PAN or ``bank-branch-number``.
AccountCheck = Callable[[str], Awaitable[ResponseCode]]
# Verification answers that leave the certificate to be issued (Rule 9): the account is on file.
ON_FILE = frozenset({ResponseCode.APPROVED, ResponseCode.STOLEN_CARD, ResponseCode.EXPIRED_CARD})


class CAService:
    """Answers CardCInit, Me-AqCInit, RegForm, CertReq requests for every brand of ``h``."""

    def __init__(
        self,
        h: Hierarchy,
        *,
        brands: tuple[Brand, ...] = TEST_BRANDS,
        clock: ids.Clock | None = None,
        window_ms: int = ids.DEFAULT_WINDOW_MS,
        identity_prefix: str = "",
        verify_account: AccountCheck | None = None,
        verify_cards: bool = True,
    ) -> None:
        """``identity_prefix``: what precedes ``role.instance`` in broker user names (test
        vhosts); ``verify_account``: the issuer host's account verification (Rule 9)."""
        self.identity_prefix = identity_prefix
        self.verify_account = verify_account
        self.verify_cards = verify_cards
        self.h = h
        self.store = h.store
        self.brands = brands
        self.clock = clock or CLOCK
        self.window_ms = window_ms
        self._handlers: dict[MessageType, Handler] = {
            MessageType.CARD_CINIT_REQ: self._card_cinit,
            MessageType.ME_AQ_CINIT_REQ: self._me_aq_cinit,
            MessageType.REG_FORM_REQ: self._reg_form,
            MessageType.CERT_REQ: self._cert_req,
            MessageType.CERT_INQ_REQ: self._cert_inq,
        }
        # What the entrypoint dispatches to: each handler behind the stored-reply check (Rule 2).
        self.handlers: dict[MessageType, SetHandler] = {
            t: functools.partial(self._answer, handler) for t, handler in self._handlers.items()
        }
        self._kx_names: dict[bytes, str] = {}
        self._bci_windows: dict[str, tuple[int, int]] = {}  # brand -> (sequence, half-life ms)
        self._refresh_lock = asyncio.Lock()

    # -- what the SET entrypoint asks (actors/entrypoint.py) -----------------------------------

    party = "CA"

    async def _answer(self, handler: Handler, decoded: Decoded) -> tuple[str, bytes]:
        digest = hashlib.sha256(codec.encode(decoded.body)).digest()
        await self.renew_stale_bcis()
        stored = self._stored(decoded, digest)
        if stored is not None:
            return stored
        msg_type, reply = await handler(decoded, digest)
        return amqp_type(msg_type), reply

    def _stored(self, decoded: Decoded, digest: bytes) -> tuple[str, bytes] | None:
        """The stored reply of an identical earlier request (Rule 2)."""
        rrpid = getattr(decoded.body, "rrpid", None) or decoded.header.rrpid
        if rrpid is None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE_HEADER, "request without RRPID")
        stored = self.store.reply_for(rrpid)
        if stored is None:
            return None
        if stored.digest != digest:
            raise ProtocolError(ErrorCode.REPLAY, "RRPID already used by another request")
        log.info("ca_duplicate_answered")
        return stored.reply_type, stored.reply

    async def error_signer(self, decoded: Decoded) -> ErrorSigner | None:
        """The CA the request was addressed to signs the Error, its certificate and brand
        certificate attached (Rule 6); ``None`` (unsigned) when that CA cannot be told."""
        ca = self._addressed_ca(decoded)
        if ca is None:
            return None
        certs = [certificate_der(c) for c in (self.h.cert(ca), *self.h.chain(ca)[1:2])]
        return ErrorSigner(await self.h.key(ca), cert_thumbprint(self.h.cert(ca)), certs)

    def _addressed_ca(self, d: Decoded) -> str | None:
        """The signing CA a decoded request was addressed to, if it can be told without
        trusting anything in it beyond names we serve; None otherwise."""
        body = d.body
        served = set(self.h.brands())
        try:
            if isinstance(body, CardCInitReq):
                return ca_name(body.brand_id, "cca") if body.brand_id in served else None
            if isinstance(body, MeAqCInitReq):
                role = {EntityKind.MERCHANT: "mca", EntityKind.GATEWAY: "pca"}.get(body.requester)
                return ca_name(body.brand_id, role) if role and body.brand_id in served else None
            if isinstance(body, (RegFormReq, CertReq)):
                row = self.h.ca_row(self._ca_of_envelope(body.enc))
                return ca_name(row.brand, row.role)
            if isinstance(body, CertInqReq):
                signed = codec.decode(SignedData, body.signed)
                found = self.store.pending_by_lid(
                    codec.decode(CertInqReqData, signed.content).lid_ee
                )
                if found is None:
                    return None
                detail = codec.decode(PendingDetail, found[2])
                role = {CertType.CARDHOLDER: "cca", CertType.MERCHANT: "mca"}.get(
                    CertType(detail.cert_type), "pca"
                )
                return ca_name(detail.brand, role)
        except (ProtocolError, CAError, KeyError, ValueError):
            return None
        return None

    def _wrap(self, body: Any, rrpid: bytes) -> bytes:
        return encode_message(make_header(self.clock.now_ms(), rrpid=rrpid), body)

    def _commit(
        self,
        rrpid: bytes,
        digest: bytes,
        req: MessageType,
        res: MessageType,
        reply: bytes,
        effects: Callable[[Any], None] | None = None,
    ) -> None:
        with self.store.transaction() as db:
            if self.store.reply_for(rrpid) is not None:
                raise ProtocolError(ErrorCode.REPLAY, "RRPID already used")
            if effects is not None:
                effects(db)
            self.store.save_reply(
                db, rrpid, digest, req.name, amqp_type(res), reply, self.clock.now_ms()
            )

    # -- who asks, what is granted (Rules 7-9) -------------------------------------------------

    def _sender(self) -> str | None:
        """The broker identity (``role.instance``) that sent the request being handled."""
        raw = entrypoint.sender()
        if raw is None or not raw.startswith(self.identity_prefix):
            return None
        return raw[len(self.identity_prefix) :]

    def _entity_requester(self, cert_type: CertType) -> str:
        """The sender, if its role may ask for ``cert_type`` (Rule 7)."""
        identity = self._sender()
        wanted = "merchant" if cert_type is CertType.MERCHANT else "gateway"
        if identity is None or requester_role(identity) != wanted:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED_SENDER,
                f"{wanted} certificates are asked for by {wanted} identities only",
            )
        return identity

    def _check_owner(self, brand: str, cert_type: CertType, subject: str, identity: str) -> None:
        """Refuse an id bound to another identity (Rule 7)."""
        kind = cert_type.name.lower()
        owner = self.store.entity_owner(brand, kind, subject)
        if owner is not None and owner != identity:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED_SENDER, f"{kind} id is registered to another identity"
            )

    def _auto_rule(self, cert_type: CertType, subject: str) -> Rule | None:
        """The auto-approve rule naming this request, if the operator recorded one."""
        try:
            rules = parse_policy(self.store.meta(POLICY_KEY) or "")
        except PolicyError as exc:  # recorded through the CLI, which checks it: be safe
            log.error("ca_auto_approve_unreadable", error=str(exc))
            return None
        return match(rules, cert_type.name.lower(), subject)

    @staticmethod
    def _granted(
        profile: tuple[str, MerchantData | None, GatewayCaps | None], grant: GatewayCaps | None
    ) -> tuple[str, MerchantData | None, GatewayCaps | None]:
        """The profile to certify: a gateway's capabilities are the grant; ``Refusal``
        naming what the request asks beyond it (Rule 8)."""
        subject, merchant, asked = profile
        if asked is None:
            return profile
        if grant is None:
            raise Refusal(CertStatusCode.REJECTED_BY_CA, (FailedItem("capabilities", "none"),))
        items = excess(asked, grant)
        if items:
            raise Refusal(CertStatusCode.REJECTED_BY_CA, items)
        return subject, merchant, grant

    async def _check_account(self, account: pan.Account) -> None:
        """The issuer host knows the account (Rule 9); ``Refusal`` otherwise."""
        if not self.verify_cards:
            return
        if self.verify_account is None:
            item = FailedItem("account", "no issuer host to verify with")
            raise Refusal(CertStatusCode.REJECTED_BY_ISSUER, (item,))
        if account.kind is pan.AccountKind.CARD:
            reference = account.number
        else:
            parts = (account.bank_code, account.branch, account.number)
            reference = "-".join(p for p in parts if p)
        code = await self.verify_account(reference)
        if code in ON_FILE:
            return
        reason = (
            "unknown to the issuer"
            if code is ResponseCode.INVALID_CARD
            else f"issuer cannot verify it ({code.value})"
        )
        log.info("ca_account_not_verified", code=code.value)
        raise Refusal(CertStatusCode.REJECTED_BY_ISSUER, (FailedItem("account", reason),))

    # -- freshness --------------------------------------------------------------------------

    async def renew_stale_bcis(self) -> None:
        """Publish new CRLs and a new BCI for a brand whose BCI is past half its life, so a
        long-running CA never hands out an expired BCI (Rule 4)."""
        now = self.clock.now_ms()
        for brand in self.h.brands():
            latest = self.store.latest_bci(brand)
            if latest is None:
                continue
            seq, data = latest
            if self._bci_windows.get(brand, (0, 0))[0] != seq:
                bci = codec.decode(Bci, codec.decode(SignedData, data).content)  # our own
                self._bci_windows[brand] = (seq, (bci.not_before + bci.not_after) // 2)
            if now < self._bci_windows[brand][1]:
                continue
            async with self._refresh_lock:
                if self.store.latest_bci(brand) != latest:
                    continue  # refreshed meanwhile
                try:
                    await self.h.publish_revocation(self.h.ca_names_of_brand(brand), [brand], now)
                except IntegrityError:
                    continue  # another CA process published the same numbers first
                log.info("ca_bci_refreshed", brand=brand, sequence=seq + 1)

    # -- attachments ------------------------------------------------------------------------

    def _attach(
        self, brand: str, certs: list[x509.Certificate], thumbs: list[bytes]
    ) -> tuple[list[bytes], list[bytes], bytes | None]:
        """Certificates, CRLs and BCI to send, minus what ``thumbs`` says is held (Rule 4)."""
        held = set(thumbs)
        cert_list = [certificate_der(c) for c in certs if cert_thumbprint(c) not in held]
        crls = [d for d in self.h.current_crls(brand) if primitives.thumbprint(d) not in held]
        bci = self.h.current_bci(brand)
        if bci is not None and bci_thumbprint(bci) in held:
            bci = None
        return cert_list, crls, bci

    def _bci_thumb(self, brand: str) -> bytes | None:
        bci = self.h.current_bci(brand)
        return None if bci is None else bci_thumbprint(bci)

    async def _signed(self, ca: str, content_type: str, record: Any) -> bytes:
        key = await self.h.key(ca)
        signed = await sign_data(
            key, cert_thumbprint(self.h.cert(ca)), content_type, codec.encode(record)
        )
        return codec.encode(signed)

    def _ca_of_envelope(self, enc: bytes) -> str:
        """The CA key-exchange certificate an envelope is addressed to (its store name)."""
        if not self._kx_names:
            for row in self.store.cas():
                if row.key_use == "kx":
                    self._kx_names[cert_thumbprint(self.h.cert(row.name))] = row.name
        recipient = recipient_of(enc)
        name = self._kx_names.get(recipient)
        if name is None:
            raise ProtocolError(ErrorCode.THUMBS_MISMATCH, "envelope not for a CA key of ours")
        return name

    # -- CardCInit --------------------------------------------------------------------------

    async def _card_cinit(self, d: Decoded, digest: bytes) -> tuple[MessageType, bytes]:
        req: CardCInitReq = d.body
        served = brand_named(self.brands, req.brand_id)
        brand = served.name
        if req.account_kind is AccountKind.BANK and not takes_banks(served):
            raise ProtocolError(ErrorCode.INVALID_FIELD, "this CCA registers cards only")
        cca, kx = ca_name(brand, "cca"), ca_name(brand, "cca", True)
        data = CardCInitResData(
            req.rrpid,
            req.lid_ee,
            req.chall_ee,
            cert_thumbprint(self.h.cert(kx)),
            self._bci_thumb(brand),
        )
        certs, crls, bci = self._attach(
            brand, [self.h.cert(cca), self.h.cert(kx), *self.h.chain(cca)[1:]], req.thumbs
        )
        body = CardCInitRes(await self._signed(cca, "CardCInitRes", data), certs, crls, bci)
        reply = self._wrap(body, req.rrpid)
        self._commit(req.rrpid, digest, d.msg_type, MessageType.CARD_CINIT_RES, reply)
        return MessageType.CARD_CINIT_RES, reply

    # -- Me-AqCInit -------------------------------------------------------------------------

    async def _me_aq_cinit(self, d: Decoded, digest: bytes) -> tuple[MessageType, bytes]:
        req: MeAqCInitReq = d.body
        brand = brand_named(self.brands, req.brand_id).name
        if req.requester is EntityKind.MERCHANT:
            role, form = "mca", MERCHANT_FORM
            self._entity_requester(CertType.MERCHANT)
            if not req.id_data.merchant_id:
                raise ProtocolError(ErrorCode.INVALID_FIELD, "merchant id required")
        elif req.requester is EntityKind.GATEWAY:
            role, form = "pca", GATEWAY_FORM
            self._entity_requester(CertType.GATEWAY)
        else:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "cardholders use CardCInit")
        ca, kx = ca_name(brand, role), ca_name(brand, role, True)
        data = MeAqCInitResData(
            req.rrpid, req.lid_ee, req.chall_ee, cert_thumbprint(self.h.cert(kx)), form, None
        )
        certs, crls, bci = self._attach(
            brand, [self.h.cert(ca), self.h.cert(kx), *self.h.chain(ca)[1:]], req.thumbs
        )
        body = MeAqCInitRes(await self._signed(ca, "Me-AqCInitRes", data), certs, crls, bci)
        reply = self._wrap(body, req.rrpid)
        self._commit(req.rrpid, digest, d.msg_type, MessageType.ME_AQ_CINIT_RES, reply)
        return MessageType.ME_AQ_CINIT_RES, reply

    # -- RegForm ----------------------------------------------------------------------------

    async def _reg_form(self, d: Decoded, digest: bytes) -> tuple[MessageType, bytes]:
        req: RegFormReq = d.body
        kx = self._ca_of_envelope(req.enc)
        row = self.h.ca_row(kx)
        if row.role != "cca":
            raise ProtocolError(ErrorCode.THUMBS_MISMATCH, "RegFormReq goes to a CCA")
        content, extra = await open_exh(
            await self.h.key(kx), cert_thumbprint(self.h.cert(kx)), req.enc, "RegFormReq"
        )
        data = codec.decode(RegFormReqData, content)
        _check_header_rrpid(d, data.rrpid)
        account = pan.decode_pan_only(extra).account  # Luhn (cards) and shape
        check_account(brand_named(self.brands, row.brand), account)
        if data.request_type is not RequestType.INITIAL:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "renewals skip the registration form")
        chall_ca = ids.new_challenge()
        cca = ca_name(row.brand, "cca")
        res = RegFormResData(
            data.rrpid,
            data.lid_ee,
            data.chall_ee2,
            chall_ca,
            cert_thumbprint(self.h.cert(kx)),
            CARDHOLDER_FORM,
            None,
        )
        certs, crls, bci = self._attach(row.brand, [], data.thumbs)
        body = RegFormRes(await self._signed(cca, "RegFormRes", res), certs, crls, bci)
        reply = self._wrap(body, data.rrpid)
        now = self.clock.now_ms()

        def effects(db: Any) -> None:
            self.store.add_challenge(db, chall_ca, row.brand, CARDHOLDER_FORM.reg_form_id, now)

        self._commit(data.rrpid, digest, d.msg_type, MessageType.REG_FORM_RES, reply, effects)
        return MessageType.REG_FORM_RES, reply

    # -- CertReq ----------------------------------------------------------------------------

    async def _cert_req(self, d: Decoded, digest: bytes) -> tuple[MessageType, bytes]:
        req: CertReq = d.body
        kx = self._ca_of_envelope(req.enc)
        row = self.h.ca_row(kx)
        cardholder = row.role == "cca"
        cert_type = {"cca": CertType.CARDHOLDER, "mca": CertType.MERCHANT}.get(
            row.role, CertType.GATEWAY
        )
        # Who may ask is checked before any work on the request (Rule 7).
        identity = self._sender() if cardholder else self._entity_requester(cert_type)
        opened = await open_cert_req(
            await self.h.key(kx),
            cert_thumbprint(self.h.cert(kx)),
            req.enc,
            extra=cardholder,
            renewal=bool(req.certs),
        )
        data = opened.data
        _check_header_rrpid(d, data.rrpid)
        if self.store.reply_for(data.rrpid) is not None:
            raise ProtocolError(ErrorCode.REPLAY, "RRPID already used")
        old = self._check_renewal(req, opened, cert_type, row.brand)
        if cardholder:
            return await self._cardholder_cert(d, digest, row.brand, opened, old, identity)
        assert identity is not None  # _entity_requester returned it
        return await self._me_aq_cert(d, digest, row.brand, cert_type, opened, old, identity)

    def _check_renewal(
        self, req: CertReq, opened: OpenedCertReq, cert_type: CertType, brand: str
    ) -> x509.Certificate | None:
        """The certificate being renewed, after every check; None for an initial request."""
        data = opened.data
        if opened.renewal is None:
            if data.request_type is not RequestType.INITIAL or data.ee_thumb is not None:
                raise ProtocolError(ErrorCode.INVALID_FIELD, "renewal without the old chain")
            return None
        if data.request_type is not RequestType.RENEWAL or data.ee_thumb is None:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "old chain given but not a renewal")
        certs = [load_certificate(c) for c in req.certs]
        old = certs[0]
        if cert_thumbprint(old) != data.ee_thumb or opened.renewal.signer != data.ee_thumb:
            raise ProtocolError(ErrorCode.THUMBS_MISMATCH, "EEThumb is not the renewed cert")
        revocation = RevocationState.load(
            self.h.current_bci(brand) or b"",
            self.h.cert(ca_name(brand, "brand")),
            self.h.current_crls(brand),
            self._now(),
        )
        validate_path(
            old,
            certs[1:],
            root=self.h.root,
            now=self._now(),
            expect=Expect(cert_type, CertKeyUse.SIGNATURE, brand),
            revocation=revocation,
        )
        stored = self.store.cert_by_thumb(data.ee_thumb)
        if stored is None or stored.revoked_at is not None:
            raise ProtocolError(ErrorCode.REVOKED_CERTIFICATE, "renewed certificate not current")
        if open_renewal(opened.renewal, public_key_of(old)) != opened.data_bytes:
            raise ProtocolError(ErrorCode.SIGNATURE_FAILURE, "old-key signature over other data")
        return old

    def _now(self) -> datetime:
        return to_dt(self.clock.now_ms())

    def _check_keys_new(self, opened: OpenedCertReq, wanted: set[KeyUse]) -> None:
        if set(opened.keys) != wanted:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "wrong set of public keys to certify")
        for key in opened.keys.values():
            if self.store.key_certified(spki_hash(key)):
                raise Refusal(CertStatusCode.KEY_ALREADY_CERTIFIED)

    async def _cardholder_cert(
        self,
        d: Decoded,
        digest: bytes,
        brand_name: str,
        opened: OpenedCertReq,
        old: x509.Certificate | None,
        identity: str | None,
    ) -> tuple[MessageType, bytes]:
        data = opened.data
        if data.ca_back_key is None:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "cardholder CertReq needs CABackKey")
        back_key = data.ca_back_key.key
        cca = ca_name(brand_name, "cca")
        chall_ca = data.chall_ca
        if old is None:
            if chall_ca is None:
                raise ProtocolError(ErrorCode.CHALLENGE_MISMATCH, "Chall-CA missing")
            known = self.store.challenge(chall_ca)
            if known is None or known[0] != brand_name:
                raise ProtocolError(ErrorCode.CHALLENGE_MISMATCH, "Chall-CA not issued here")
            if known[3] is not None:
                raise ProtocolError(ErrorCode.REPLAY, "Chall-CA already used")
            if self.clock.now_ms() - known[2] > CHALLENGE_LIFETIME_MS:
                raise ProtocolError(ErrorCode.CHALLENGE_MISMATCH, "Chall-CA expired")
        nonce_cca = pan.new_secret()
        sealed: bytes | None = None
        try:
            acct = codec.decode(AcctInfo, opened.extra or b"")
            token = pan.decode_pan_token(acct.account)  # Luhn, expiry format
            self._check_keys_new(opened, {KeyUse.SIGNATURE})
            if old is None:
                check_form(CARDHOLDER_FORM, data.reg_form_id, data.values)
            brand = brand_named(self.brands, brand_name)
            _check_card(brand, token, self.clock.now_ms())
            if len(acct.card_secret) != pan.SECRET_BYTES:
                raise ProtocolError(ErrorCode.INVALID_FIELD, "CardSecret size")
            await self._check_account(token.account)  # the issuer knows it (Rule 9)
            secret = pan.pan_secret(acct.card_secret, nonce_cca)
            account_hash = pan.account_hash(secret, token.account, token.expiry)
            del secret
            if old is None and reviewed_bin(brand, token.account):
                # The issuer reviews this BIN by hand (Rule 5): keep what the later answer
                # needs sealed to our own key-exchange key, issue nothing yet.
                sealed = await self._seal_held(
                    brand_name, data.rrpid, HeldSecrets(back_key, nonce_cca, account_hash)
                )
                status = CertStatus(CertStatusCode.REQUEST_PENDED, None, ["issuer review"], [])
                new_certs, row = [], None
            else:
                issued, row = await self._issue_cardholder(
                    brand_name, opened.signature_key, account_hash
                )
                status = CertStatus(CertStatusCode.REQUEST_COMPLETE, nonce_cca, [], [])
                new_certs = [issued.cert]
        except Refusal as refusal:
            status = CertStatus(refusal.code, None, [], list(refusal.items))
            new_certs, row = [], None
        except ProtocolError as exc:
            if exc.code is not ErrorCode.INVALID_FIELD:
                raise
            status = CertStatus(
                CertStatusCode.INVALID_FORM_FIELDS
                if "form" in exc.detail
                else CertStatusCode.REJECTED_BY_CA,
                None,
                [exc.detail[:64]],
                [],
            )
            new_certs, row = [], None
        res = CertResData(
            data.rrpid,
            data.lid_ee,
            data.chall_ee3,
            status,
            [cert_thumbprint(c) for c in new_certs],
        )
        protected = await make_enck(
            back_key,
            await self.h.key(cca),
            cert_thumbprint(self.h.cert(cca)),
            "CertRes",
            codec.encode(res),
            context=data.rrpid,
        )
        certs, crls, bci = self._attach(brand_name, self.h.chain(cca), data.thumbs)
        body = CertRes(protected, [certificate_der(c) for c in new_certs] + certs, crls, bci)
        reply = self._wrap(body, data.rrpid)
        if row is None and sealed is None:
            log.info("ca_cert_refused", status=status.code.name)
            return MessageType.CERT_RES, reply  # a refusal changes nothing (Rule 1)
        detail = PendingDetail(
            brand_name, CertType.CARDHOLDER, data.reg_form_id, [],
            spki_der(opened.signature_key), b"",
        )  # fmt: skip
        now = self.clock.now_ms()

        def effects(db: Any) -> None:
            if chall_ca is not None and old is None:
                if not self.store.use_challenge(db, chall_ca, data.rrpid):
                    raise ProtocolError(ErrorCode.REPLAY, "Chall-CA already used")
            if row is not None:
                self.h.commit_cert(db, row)
            if sealed is not None:
                if self.store.pending_by_lid(data.lid_ee) is not None:
                    raise ProtocolError(ErrorCode.REPLAY, "LID-EE already has a pending request")
                self.store.add_pending(
                    db, data.rrpid, data.lid_ee, codec.encode(detail), now, identity
                )
                self.store.add_held(db, data.rrpid, sealed)

        self._commit(data.rrpid, digest, d.msg_type, MessageType.CERT_RES, reply, effects)
        if row is None:
            log.info("ca_cert_pended", cert_type="cardholder", brand=brand_name)
        else:
            log.info(
                "ca_cert_issued", cert_type="cardholder", brand=brand_name, serial=row["serial"]
            )
        return MessageType.CERT_RES, reply

    async def _issue_cardholder(
        self, brand_name: str, key: PublicKey, account_hash: bytes
    ) -> tuple[Any, dict[str, object]]:
        return await self.h.issue_ee(
            CertType.CARDHOLDER,
            brand_name,
            CertKeyUse.SIGNATURE,
            key,
            "ch-" + secrets.token_hex(8),  # opaque: the subject names no person or card
            self.clock.now_ms(),
            account_hash=account_hash,
        )

    async def _held_key(self, brand_name: str) -> tuple[Any, bytes]:
        kx = ca_name(brand_name, "cca", True)
        return await self.h.key(kx), cert_thumbprint(self.h.cert(kx))

    async def _seal_held(self, brand_name: str, rrpid: bytes, held: HeldSecrets) -> bytes:
        key, thumb = await self._held_key(brand_name)
        return await seal_held(key, thumb, rrpid, held)

    async def _open_held(self, brand_name: str, rrpid: bytes) -> HeldSecrets:
        sealed = self.store.held(rrpid)
        if sealed is None:  # a pended cardholder request always has one (same transaction)
            raise ProtocolError(ErrorCode.UNSPECIFIED_FAILURE, "pended request lost its seal")
        key, thumb = await self._held_key(brand_name)
        return await open_held(key, thumb, rrpid, sealed)

    def _entity_profile(
        self,
        cert_type: CertType,
        reg_form_id: int,
        values_in: list[RegFieldValue],
        old: x509.Certificate | None,
    ) -> tuple[str, MerchantData | None, GatewayCaps | None]:
        """Subject, merchant data, gateway capabilities from the form; ``Refusal`` if bad."""
        form: RegForm = MERCHANT_FORM if cert_type is CertType.MERCHANT else GATEWAY_FORM
        try:
            values = check_form(form, reg_form_id, values_in)
        except ProtocolError as exc:
            raise Refusal(
                CertStatusCode.INVALID_FORM_FIELDS, (FailedItem("form", exc.detail[:64]),)
            ) from None
        if cert_type is CertType.MERCHANT:
            if not values["mcc"].isdigit() or len(values["mcc"]) != 4:
                raise Refusal(
                    CertStatusCode.INVALID_FORM_FIELDS, (FailedItem("mcc", "four digits"),)
                )
            merchant = MerchantData(values["merchant_id"], values["merchant_name"], values["mcc"])
            subject, gateway = values["merchant_id"], None
        else:
            currencies = [c.strip() for c in values["currencies"].split(",") if c.strip()]
            if not currencies or any(len(c) != 3 or not c.isalpha() for c in currencies):
                raise Refusal(
                    CertStatusCode.INVALID_FORM_FIELDS,
                    (FailedItem("currencies", "ISO 4217 codes"),),
                )
            gateway = GatewayCaps(
                currencies, values.get("pin_debit") == "yes", values.get("sale") == "yes"
            )
            subject, merchant = values["gateway_id"], None
        if old is not None:
            old_ext = set_extension(old)
            if old_ext.merchant is not None and old_ext.merchant.merchant_id != subject:
                item = FailedItem("merchant_id", "differs from the renewed")
                raise Refusal(CertStatusCode.REJECTED_BY_CA, (item,))
        return subject, merchant, gateway

    async def _issue_pair(
        self,
        cert_type: CertType,
        brand_name: str,
        keys: dict[KeyUse, PublicKey],
        profile: tuple[str, MerchantData | None, GatewayCaps | None],
    ) -> tuple[list[x509.Certificate], list[dict[str, object]]]:
        subject, merchant, gateway = profile
        certs, rows = [], []
        for use, cert_use, suffix in (
            (KeyUse.SIGNATURE, CertKeyUse.SIGNATURE, "sig"),
            (KeyUse.KEY_EXCHANGE, CertKeyUse.KEY_EXCHANGE, "kx"),
        ):
            issued, row = await self.h.issue_ee(
                cert_type, brand_name, cert_use, keys[use], f"{subject} {suffix}",
                self.clock.now_ms(), merchant=merchant, gateway=gateway,
            )  # fmt: skip
            rows.append(row)
            certs.append(issued.cert)
        return certs, rows

    async def _entity_reply(
        self,
        content_type: str,
        brand_name: str,
        ca: str,
        rrpid: bytes,
        lid_ee: bytes,
        chall_ee3: bytes,
        thumbs: list[bytes],
        status: CertStatus,
        new_certs: list[x509.Certificate],
    ) -> bytes:
        res = CertResData(rrpid, lid_ee, chall_ee3, status, [cert_thumbprint(c) for c in new_certs])
        certs, crls, bci = self._attach(brand_name, self.h.chain(ca), thumbs)
        cls = CertRes if content_type == "CertRes" else CertInqRes
        body = cls(
            await self._signed(ca, content_type, res),
            [certificate_der(c) for c in new_certs] + certs,
            crls,
            bci,
        )
        return self._wrap(body, rrpid)

    async def _me_aq_cert(
        self,
        d: Decoded,
        digest: bytes,
        brand_name: str,
        cert_type: CertType,
        opened: OpenedCertReq,
        old: x509.Certificate | None,
        identity: str,
    ) -> tuple[MessageType, bytes]:
        data = opened.data
        ca = ca_name(brand_name, "mca" if cert_type is CertType.MERCHANT else "pca")
        rows: list[dict[str, object]] = []
        new_certs: list[x509.Certificate] = []
        pended = False
        profile: tuple[str, MerchantData | None, GatewayCaps | None] | None = None
        try:
            self._check_keys_new(opened, {KeyUse.SIGNATURE, KeyUse.KEY_EXCHANGE})
            profile = self._entity_profile(cert_type, data.reg_form_id, data.values, old)
            self._check_owner(brand_name, cert_type, profile[0], identity)
            brand = brand_named(self.brands, brand_name)
            reviewed = profile[1] is not None and profile[1].category in brand.review_mccs
            rule = None if old is not None else self._auto_rule(cert_type, profile[0])
            if old is None and (reviewed or rule is None):
                # The operator decides (the acquirer reviews this category, or nothing
                # approves it in advance): pend, answer CertInq later (Rule 8).
                pended = True
                why = "acquirer review" if reviewed else "operator approval"
                status = CertStatus(CertStatusCode.REQUEST_PENDED, None, [why], [])
            else:
                # A renewal keeps what the renewed certificate was granted.
                if old is not None:
                    grant = set_extension(old).gateway
                else:
                    assert rule is not None
                    grant = rule.caps
                profile = self._granted(profile, grant)
                new_certs, rows = await self._issue_pair(
                    cert_type, brand_name, opened.keys, profile
                )
                status = CertStatus(CertStatusCode.REQUEST_COMPLETE, None, [], [])
        except Refusal as refusal:
            status = CertStatus(refusal.code, None, [], list(refusal.items))
            rows, new_certs = [], []
        reply = await self._entity_reply(
            "CertRes", brand_name, ca, data.rrpid, data.lid_ee, data.chall_ee3, data.thumbs,
            status, new_certs,
        )  # fmt: skip
        if not rows and not pended:
            log.info("ca_cert_refused", status=status.code.name,
                     items=[i.field for i in status.failed_items])  # fmt: skip
            return MessageType.CERT_RES, reply
        assert profile is not None
        subject = profile[0]
        detail = PendingDetail(
            brand_name, cert_type, data.reg_form_id, data.values,
            spki_der(opened.keys[KeyUse.SIGNATURE]), spki_der(opened.keys[KeyUse.KEY_EXCHANGE]),
        )  # fmt: skip
        now = self.clock.now_ms()

        def effects(db: Any) -> None:
            kind = cert_type.name.lower()
            if not self.store.bind_entity(db, brand_name, kind, subject, identity, now):
                raise ProtocolError(
                    ErrorCode.UNAUTHORIZED_SENDER, f"{kind} id registered to another identity"
                )
            for row in rows:
                self.h.commit_cert(db, row)
            if pended:
                if self.store.pending_by_lid(data.lid_ee) is not None:
                    raise ProtocolError(ErrorCode.REPLAY, "LID-EE already has a pending request")
                self.store.add_pending(
                    db, data.rrpid, data.lid_ee, codec.encode(detail), now, identity
                )

        self._commit(data.rrpid, digest, d.msg_type, MessageType.CERT_RES, reply, effects)
        if pended:
            log.info("ca_cert_pended", cert_type=cert_type.name.lower(), brand=brand_name,
                     requester=identity)  # fmt: skip
        else:
            log.info(
                "ca_cert_issued",
                cert_type=cert_type.name.lower(),
                brand=brand_name,
                requester=identity,
                serials=[r["serial"] for r in rows],
            )
        return MessageType.CERT_RES, reply

    # -- CertInq ----------------------------------------------------------------------------

    async def _cert_inq(self, d: Decoded, digest: bytes) -> tuple[MessageType, bytes]:
        req: CertInqReq = d.body
        signed = codec.decode(SignedData, req.signed)
        # Which pending request is asked about decides which key must have signed: read the
        # LID-EE first, then verify under that request's signature key before anything else.
        peek = codec.decode(CertInqReqData, signed.content)
        found = self.store.pending_by_lid(peek.lid_ee)
        if found is None:
            raise ProtocolError(ErrorCode.UNKNOWN_LID, "no pending request for this LID-EE")
        rrpid_req, state, raw = found
        detail = codec.decode(PendingDetail, raw)
        sig_key = load_spki(PublicKeyInfo(KeyUse.SIGNATURE, detail.sig_spki))
        if signed.signer != pop_signer(sig_key):
            raise ProtocolError(ErrorCode.SIGNATURE_FAILURE, "CertInq not signed by the key")
        data = codec.decode(CertInqReqData, open_signed(signed, sig_key, "CertInqReq"))
        _check_header_rrpid(d, data.rrpid)
        requester, grant = self.store.pending_party(rrpid_req)
        if requester is not None and requester != self._sender():
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED_SENDER, "a pended request is asked about by its requester"
            )
        cert_type = CertType(detail.cert_type)
        if cert_type is CertType.CARDHOLDER:
            return await self._cardholder_inq(d, digest, data, rrpid_req, state, detail, sig_key)
        ca = ca_name(detail.brand, "mca" if cert_type is CertType.MERCHANT else "pca")
        rows: list[dict[str, object]] = []
        new_certs: list[x509.Certificate] = []
        if state == "pending":
            status = CertStatus(CertStatusCode.REQUEST_PENDED, None, ["operator approval"], [])
        elif state == "rejected":
            status = CertStatus(CertStatusCode.REJECTED_BY_AGENT, None, [], [])
        elif state == "approved":
            keys = {
                KeyUse.SIGNATURE: sig_key,
                KeyUse.KEY_EXCHANGE: load_spki(PublicKeyInfo(KeyUse.KEY_EXCHANGE, detail.kx_spki)),
            }
            try:
                profile = self._granted(
                    self._entity_profile(cert_type, detail.reg_form_id, detail.values, None),
                    None if grant is None else codec.decode(GatewayCaps, grant),
                )
                new_certs, rows = await self._issue_pair(cert_type, detail.brand, keys, profile)
                status = CertStatus(CertStatusCode.REQUEST_COMPLETE, None, [], [])
            except Refusal as refusal:  # asks for more than the operator granted (Rule 8)
                status = CertStatus(refusal.code, None, [], list(refusal.items))
                log.info("ca_cert_refused", status=refusal.code.name,
                         items=[i.field for i in refusal.items])  # fmt: skip
        else:  # issued: answer again with the certificates issued then
            serials = [int(s) for s in state.split(":", 1)[1].split(",")]
            new_certs = [self.h.cert_of_serial(s) for s in serials]
            status = CertStatus(CertStatusCode.REQUEST_COMPLETE, None, [], [])
        reply = await self._entity_reply(
            "CertInqRes", detail.brand, ca, data.rrpid, data.lid_ee, data.chall_ee3, [],
            status, new_certs,
        )  # fmt: skip
        self._commit_inq(d, digest, data.rrpid, rrpid_req, rows, reply)
        return MessageType.CERT_INQ_RES, reply

    def _commit_inq(
        self,
        d: Decoded,
        digest: bytes,
        rrpid: bytes,
        rrpid_req: bytes,
        rows: list[dict[str, object]],
        reply: bytes,
    ) -> None:
        """Commit a CertInq answer; certificates issued on approval mark the request issued."""

        def effects(db: Any) -> None:
            if rows and self.store.pending_state(db, rrpid_req) != "approved":
                # Another inquiry issued meanwhile: this one issues nothing (ask again).
                raise ProtocolError(ErrorCode.UNSPECIFIED_FAILURE, "request answered meanwhile")
            for row in rows:
                self.h.commit_cert(db, row)
            if rows:
                issued = "issued:" + ",".join(str(r["serial"]) for r in rows)
                self.store.set_pending_state(db, rrpid_req, issued)

        self._commit(rrpid, digest, d.msg_type, MessageType.CERT_INQ_RES, reply, effects)

    async def _cardholder_inq(
        self,
        d: Decoded,
        digest: bytes,
        data: CertInqReqData,
        rrpid_req: bytes,
        state: str,
        detail: PendingDetail,
        sig_key: PublicKey,
    ) -> tuple[MessageType, bytes]:
        """CertInq of a pended cardholder request: answered EncK under a key derived from the
        request's CABackKey (``vault.inquiry_key``), with Nonce-CCA once issued."""
        held = await self._open_held(detail.brand, rrpid_req)
        cca = ca_name(detail.brand, "cca")
        rows: list[dict[str, object]] = []
        new_certs: list[x509.Certificate] = []
        if state == "pending":
            status = CertStatus(CertStatusCode.REQUEST_PENDED, None, ["issuer review"], [])
        elif state == "rejected":
            status = CertStatus(CertStatusCode.REJECTED_BY_AGENT, None, [], [])
        else:
            if state == "approved":
                issued, row = await self._issue_cardholder(detail.brand, sig_key, held.account_hash)
                new_certs, rows = [issued.cert], [row]
            else:  # issued: answer again with the certificate issued then
                new_certs = [self.h.cert_of_serial(int(state.split(":", 1)[1]))]
            status = CertStatus(CertStatusCode.REQUEST_COMPLETE, held.nonce_cca, [], [])
        res = CertResData(
            data.rrpid, data.lid_ee, data.chall_ee3, status, [cert_thumbprint(c) for c in new_certs]
        )
        protected = await make_enck(
            inquiry_key(held.back_key, data.rrpid),
            await self.h.key(cca),
            cert_thumbprint(self.h.cert(cca)),
            "CertInqRes",
            codec.encode(res),
            context=data.rrpid,
        )
        del held
        certs, crls, bci = self._attach(detail.brand, self.h.chain(cca), [])
        body = CertInqRes(protected, [certificate_der(c) for c in new_certs] + certs, crls, bci)
        reply = self._wrap(body, data.rrpid)
        self._commit_inq(d, digest, data.rrpid, rrpid_req, rows, reply)
        if rows:
            log.info("ca_cert_issued", cert_type="cardholder", brand=detail.brand)
        return MessageType.CERT_INQ_RES, reply


@dataclass(frozen=True, slots=True)
class PendingDetail:
    """What a pended merchant/gateway CertReq needs to be issued later (no secrets)."""

    brand: ShortStr
    cert_type: CertType
    reg_form_id: int
    values: Annotated[list[RegFieldValue], MaxLen(64)]
    sig_spki: Annotated[bytes, MaxLen(2048)]
    kx_spki: Annotated[bytes, MaxLen(2048)]


codec.validate_schema(PendingDetail)


def _check_header_rrpid(d: Decoded, rrpid: bytes) -> None:
    if d.header.rrpid != rrpid:
        raise ProtocolError(ErrorCode.WRAPPER_MSG_MISMATCH, "header RRPID differs from body")


def _check_card(brand: Brand, token: pan.PANToken, now_ms: int) -> None:
    """BIN (bank code) of the brand; a card not expired (YYMM, valid through that month)."""
    check_account(brand, token.account)
    if token.account.kind is not pan.AccountKind.CARD:
        return
    year, month = 2000 + int(token.expiry[:2]), int(token.expiry[2:])
    now = to_dt(now_ms)
    if (year, month) < (now.year, now.month):
        raise Refusal(CertStatusCode.REJECTED_BY_CA, (FailedItem("expiry", "card expired"),))
