"""The SET/OPE message catalogue: one frozen, slotted record per message and per data record.

Rule 1: a protected part (signed, enveloped, extra-encrypted, baggage) is a ``bytes`` field
holding the exact encoded treatment record; this module never imports the treatments. Each
docstring names the treatment and the content type that produce it, and the data record the
receiver decodes after verifying. Data records here are what treatments sign or encrypt.
Rule 2: every field carries a codec limit (``Nonce``, ``Digest``, ``Amount``, ``MaxLen`` …);
codes are enums, so an unknown code is a decoding failure, not a silent default.
Rule 3: ``MESSAGE_CLASSES`` maps every ``MessageType`` to its body record and
``DATA_RECORDS`` maps every content type to the record inside it. Both are checked with
``codec.validate_schema`` when this module is imported.
Rule 4 (OPE): the account is a card or a bank account (``AccountKind``); a PIN block travels
only inside the PI's extra-encrypted part (``dualsig.AccountPart``), flagged in
``PIHead.pin_entry``. Account records (PANData, PANToken, PANOnly) live in ``protocol/pan.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated

from protocol import codec
from protocol.codec import Amount, Digest, MaxLen, Nonce, Range, ShortStr, Size, Timestamp
from protocol.errors import ErrorCode
from protocol.pan import AccountKind  # card or OPE bank account: one definition

# --- field shapes -----------------------------------------------------------------------

LocalID = Annotated[bytes, MaxLen(64)]  # LID-C, LID-M, LID-EE: the owner's own label
Language = Annotated[str, MaxLen(35)]  # BCP 47 tag
BrandID = Annotated[str, MaxLen(40)]
Bin = Annotated[str, MaxLen(11)]  # bank identification number (6 to 11 digits)
MerchantID = Annotated[str, MaxLen(64)]
CurrencyCode = Annotated[str, Size(3)]  # ISO 4217 alphabetic
SWIdent = Annotated[str, MaxLen(256)]
Text = Annotated[str, MaxLen(4096)]
Protected = Annotated[bytes, MaxLen(262_144)]  # an encoded treatment record
Opaque = Annotated[bytes, MaxLen(1024)]
CertDER = Annotated[bytes, MaxLen(16_384)]
CertList = Annotated[list[CertDER], MaxLen(16)]
CRLList = Annotated[list[Annotated[bytes, MaxLen(262_144)]], MaxLen(16)]
BCIBytes = Annotated[bytes, MaxLen(65_536)]  # exact signed BCI bytes (protocol/revocation.py)
Thumbs = Annotated[list[Digest], MaxLen(64)]
BatchID = Annotated[int, Range(0, 2**32 - 1)]
BatchSeq = Annotated[int, Range(0, 2**32 - 1)]
Count = Annotated[int, Range(0, 2**32 - 1)]
PinBlock = Annotated[bytes, MaxLen(16)]  # ISO 9564 format 0 (8 bytes) or format 4 (16)


# --- codes ------------------------------------------------------------------------------


class MessageType(IntEnum):
    """Every message of the catalogue; the number is what the wrapper carries."""

    PINIT_REQ = 1
    PINIT_RES = 2
    PREQ = 3
    PRES = 4
    INQ_REQ = 5
    INQ_RES = 6
    AUTH_REQ = 10
    AUTH_RES = 11
    AUTH_REV_REQ = 12
    AUTH_REV_RES = 13
    CAP_REQ = 14
    CAP_RES = 15
    CAP_REV_REQ = 16
    CAP_REV_RES = 17
    CRED_REQ = 18
    CRED_RES = 19
    CRED_REV_REQ = 20
    CRED_REV_RES = 21
    PCERT_REQ = 22
    PCERT_RES = 23
    BATCH_ADMIN_REQ = 24
    BATCH_ADMIN_RES = 25
    CARD_CINIT_REQ = 30
    CARD_CINIT_RES = 31
    ME_AQ_CINIT_REQ = 32
    ME_AQ_CINIT_RES = 33
    REG_FORM_REQ = 34
    REG_FORM_RES = 35
    CERT_REQ = 36
    CERT_RES = 37
    CERT_INQ_REQ = 38
    CERT_INQ_RES = 39
    BCI_DISTRIBUTION = 40  # CA→gateways, merchants: one-way, no response
    ERROR = 99


class PinEntry(IntEnum):
    """OPE PI extension: a PIN block rides in the extra-encrypted part, entered on …"""

    PIN_SECURE = 1  # setext-pinSecure: a secure entry device
    PIN_ANY = 2  # setext-pinAny: any device


class PIKind(IntEnum):
    """Which payment instruction a PReq carries (set-protocol.md §2.2)."""

    DUAL_SIGNED = 1  # PIDualSigned: cardholder has a signature certificate
    UNSIGNED = 2  # PIUnsigned: EXH(P, PI-OILink, PANToken)


class CompletionCode(IntEnum):
    MEANINGLESS_RATIO = 1
    ORDER_REJECTED = 2
    ORDER_RECEIVED = 3
    ORDER_NOT_RECEIVED = 4
    AUTHORIZATION_PERFORMED = 5
    CAPTURE_PERFORMED = 6
    CREDIT_PERFORMED = 7


class AuthCode(IntEnum):
    APPROVED = 0
    UNSPECIFIED_FAILURE = 1
    DECLINED = 2
    NO_REPLY = 3
    CALL_ISSUER = 4
    AMOUNT_ERROR = 5
    EXPIRED_CARD = 6
    INVALID_TRANSACTION = 7
    SYSTEM_ERROR = 8
    PI_PREVIOUSLY_USED = 9
    RECURRING_TOO_SOON = 10
    RECURRING_EXPIRED = 11
    PI_AUTH_MISMATCH = 12
    INSTALL_RECUR_MISMATCH = 13
    CAPTURE_NOT_SUPPORTED = 14
    SIGNATURE_REQUIRED = 15
    CARD_MERCH_BRAND_MISMATCH = 16


class AuthRevCode(IntEnum):
    APPROVED = 0
    UNSPECIFIED_FAILURE = 1
    DECLINED = 2
    NO_REPLY = 3
    AMOUNT_ERROR = 4
    ALREADY_CAPTURED = 5
    ORIGINAL_NOT_FOUND = 6
    INVALID_TRANSACTION = 7


class CapCode(IntEnum):
    SUCCESS = 0
    UNSPECIFIED_FAILURE = 1
    DUPLICATE_REQUEST = 2
    AUTH_EXPIRED = 3
    AUTH_DATA_MISSING = 4
    INVALID_AUTH_DATA = 5
    CAP_TOKEN_MISSING = 6
    INVALID_CAP_TOKEN = 7
    BATCH_UNKNOWN = 8
    BATCH_CLOSED = 9
    UNKNOWN_XID = 10
    UNKNOWN_LID = 11
    AMOUNT_ERROR = 12


class CapRevOrCredCode(IntEnum):
    SUCCESS = 0
    UNSPECIFIED_FAILURE = 1
    DUPLICATE_REQUEST = 2
    ORIGINAL_PROCESSED = 3
    ORIGINAL_NOT_FOUND = 4
    CAPTURE_PURGED = 5
    CAPTURE_DATA_MISMATCH = 6
    MISSING_CAPTURE_DATA = 7
    MISSING_CAP_TOKEN = 8
    INVALID_CAP_TOKEN = 9
    BATCH_UNKNOWN = 10
    BATCH_CLOSED = 11
    UNKNOWN_XID = 12
    UNKNOWN_LID = 13
    AMOUNT_EXCEEDED = 14


class PCertCode(IntEnum):
    SUCCESS = 0
    UNSPECIFIED_FAILURE = 1
    BRAND_NOT_SUPPORTED = 2
    UNKNOWN_BIN = 3


class BatchOperation(IntEnum):
    OPEN = 1
    PURGE = 2
    CLOSE = 3


class BAStatus(IntEnum):
    SUCCESS = 0
    UNSPECIFIED_FAILURE = 1
    BRAND_NOT_SUPPORTED = 2
    UNKNOWN_BATCH_ID = 3
    BATCH_ID_UNAVAILABLE = 4
    BATCH_ALREADY_OPEN = 5
    BATCH_CLOSED = 6
    TOTALS_OUT_OF_BALANCE = 7


class TransmissionStatus(IntEnum):
    PENDING = 1
    IN_PROGRESS = 2
    SUCCESS = 3
    FAILED = 4


class BatchItemKind(IntEnum):
    CAPTURE = 1
    CAPTURE_REVERSAL = 2
    CREDIT = 3
    CREDIT_REVERSAL = 4


class EntityKind(IntEnum):
    CARDHOLDER = 1
    MERCHANT = 2
    GATEWAY = 3


class RequestType(IntEnum):
    INITIAL = 1
    RENEWAL = 2


class KeyUse(IntEnum):
    SIGNATURE = 1
    KEY_EXCHANGE = 2


class CertStatusCode(IntEnum):
    REQUEST_COMPLETE = 0
    INVALID_LANGUAGE = 1
    INVALID_BIN = 2
    SIGNATURE_VALIDATION_FAILED = 3
    DECRYPTION_ERROR = 4
    REQUEST_IN_PROGRESS = 5
    REJECTED_BY_ISSUER = 6
    REQUEST_PENDED = 7
    REJECTED_BY_AGENT = 8
    REJECTED_BY_CA = 9
    INVALID_FORM_FIELDS = 10
    KEY_ALREADY_CERTIFIED = 11


# --- shared data records ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CurrAmt:
    """An amount in minor units of an ISO 4217 currency (no floats anywhere)."""

    currency: CurrencyCode
    amount: Amount


@dataclass(frozen=True, slots=True)
class TransIDs:
    """Ids of one purchase: LID-C, [LID-M], XID (merchant-made), PReq date, language."""

    lid_c: LocalID
    lid_m: LocalID | None
    xid: Nonce
    preq_date: Timestamp
    pay_sys_id: ShortStr | None
    language: Language


@dataclass(frozen=True, slots=True)
class MerTermIDs:
    merchant_id: MerchantID
    terminal_id: ShortStr | None
    agent_num: ShortStr | None


@dataclass(frozen=True, slots=True)
class RRTags:
    """Tags of a merchant↔gateway request/response pair: RRPID, merchant ids, date."""

    rrpid: Nonce
    mer_term_ids: MerTermIDs
    date: Timestamp


@dataclass(frozen=True, slots=True)
class BrandAndBIN:
    brand_id: BrandID
    bin: Bin | None


# --- purchase ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PInitReq:
    """C→M, unprotected: asks the merchant to start a purchase."""

    rrpid: Nonce
    language: Language
    lid_c: LocalID
    lid_m: LocalID | None
    chall_c: Nonce
    brand_id: BrandID
    bin: Bin
    account_kind: AccountKind
    thumbs: Thumbs


@dataclass(frozen=True, slots=True)
class PInitResData:
    """Content "PInitRes": new TransIDs (XID), Chall-C echoed, Chall-M, gateway key thumb."""

    trans_ids: TransIDs
    rrpid: Nonce
    chall_c: Nonce
    chall_m: Nonce
    pe_thumb: Digest  # the gateway key-exchange certificate the PI must be encrypted to
    bci_thumb: Digest | None


@dataclass(frozen=True, slots=True)
class PInitRes:
    """M→C. ``signed`` = encoded SignedData, S(M, content "PInitRes" → ``PInitResData``)."""

    signed: Protected
    certs: CertList  # merchant signature chain and gateway key-exchange chain
    crls: CRLList
    bci: BCIBytes | None


@dataclass(frozen=True, slots=True)
class PurchaseInputs:
    """SET Inputs: the order digest and the purchase amount the cardholder agreed to."""

    hod: Digest  # DD({OrderDesc, PurchAmt, ODSalt})
    purch_amt: CurrAmt


@dataclass(frozen=True, slots=True)
class InstallRecurData:
    """Instalment or recurring-payment terms (absent for a one-off purchase)."""

    install_total: Count | None
    recurring_frequency_days: Count | None
    recurring_expiry: Timestamp | None


@dataclass(frozen=True, slots=True)
class BackKeyData:
    """A symmetric key a party hands over for a private reply to itself (EncK)."""

    alg: ShortStr
    key: Annotated[bytes, Size(32)]


@dataclass(frozen=True, slots=True)
class OIData:
    """Content "OIData": the order side of the dual signature; the gateway sees only its hash."""

    trans_ids: TransIDs
    rrpid: Nonce
    chall_c: Nonce
    hod: Digest
    od_salt: Nonce
    chall_m: Nonce | None
    brand_id: BrandID
    bin: Bin


@dataclass(frozen=True, slots=True)
class PIHead:
    """Content "PIHead": the payment side of the dual signature, read only by the gateway.

    ``merchant_thumb``/``gateway_thumb`` name the intended merchant and gateway (the SET
    explicitness fix, set-protocol.md §6.1).
    """

    trans_ids: TransIDs
    inputs: PurchaseInputs
    merchant_id: MerchantID
    merchant_thumb: Digest
    gateway_thumb: Digest
    install_recur: InstallRecurData | None
    trans_stain: Digest  # HMAC(CardSecret, XID)
    sw_ident: SWIdent
    acq_back_key: BackKeyData | None
    account_kind: AccountKind
    pin_entry: PinEntry | None  # OPE: how the PIN was entered; set iff PIData.pin_seal is


@dataclass(frozen=True, slots=True)
class PReq:
    """C→M. ``pi`` = encoded PIDualSigned or PIUnsigned (protocol/dualsig.py, per ``pi_kind``).

    ``oi_data`` = exact encoded ``OIData``; ``pi_data_digest`` = DD(PIData) (OIDualSigned);
    ``certs`` = cardholder signature chain (empty for PIUnsigned).
    """

    pi_kind: PIKind
    pi: Protected
    oi_data: Annotated[bytes, MaxLen(16_384)]
    pi_data_digest: Digest
    certs: CertList


@dataclass(frozen=True, slots=True)
class AuthStatus:
    auth_date: Timestamp
    auth_code: AuthCode
    auth_amt: CurrAmt


@dataclass(frozen=True, slots=True)
class CapStatus:
    cap_date: Timestamp
    cap_code: CapCode
    cap_amt: CurrAmt


@dataclass(frozen=True, slots=True)
class CreditStatus:
    cred_date: Timestamp
    cred_code: CapRevOrCredCode
    cred_amt: CurrAmt


@dataclass(frozen=True, slots=True)
class PResData:
    """Content "PRes" (and "InqRes"): what became of the order, Chall-C echoed.

    ``acq_card_msg`` = encoded EncK(AcqBackKey, P, AcqCardCodeMsg), relayed unread by M.
    """

    trans_ids: TransIDs
    rrpid: Nonce
    chall_c: Nonce
    completion: CompletionCode
    auth_status: AuthStatus | None
    cap_status: CapStatus | None
    credit_status: Annotated[list[CreditStatus], MaxLen(64)]
    acq_card_msg: Annotated[bytes, MaxLen(16_384)] | None


@dataclass(frozen=True, slots=True)
class PRes:
    """M→C. ``signed`` = encoded SignedData, S(M, content "PRes" → ``PResData``)."""

    signed: Protected
    certs: CertList
    crls: CRLList
    bci: BCIBytes | None


@dataclass(frozen=True, slots=True)
class InqReqData:
    """Content "InqReq": which purchase the cardholder asks about, with a fresh Chall-C2."""

    trans_ids: TransIDs
    rrpid: Nonce
    chall_c2: Nonce


@dataclass(frozen=True, slots=True)
class InqReq:
    """C→M. ``signed``: ``content`` is encoded SignedData, S(C, "InqReq" → ``InqReqData``);
    otherwise ``content`` is the encoded ``InqReqData`` itself."""

    signed: bool
    content: Protected
    certs: CertList


@dataclass(frozen=True, slots=True)
class InqRes:
    """M→C. ``signed`` = encoded SignedData, S(M, content "InqRes" → ``PResData``)."""

    signed: Protected
    certs: CertList
    crls: CRLList
    bci: BCIBytes | None


# --- authorization ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthTags:
    """Tags of an authorization pair: RRPID, merchant ids, date, the purchase's TransIDs."""

    rrpid: Nonce
    mer_term_ids: MerTermIDs
    date: Timestamp
    trans_ids: TransIDs


@dataclass(frozen=True, slots=True)
class CheckDigests:
    """What the gateway compares with the PI: DD(OIData) and the HOD the cardholder signed."""

    hoi_data: Digest
    hod2: Digest


@dataclass(frozen=True, slots=True)
class AVSData:
    street: ShortStr | None
    postal_code: Annotated[str, MaxLen(16)] | None
    country: Annotated[str, MaxLen(3)] | None


@dataclass(frozen=True, slots=True)
class AuthReqPayload:
    subsequent_auth: bool  # True: baggage is an AuthToken, not a PI
    auth_req_amt: CurrAmt
    avs: AVSData | None
    install_recur: InstallRecurData | None
    mer_order_num: ShortStr | None


@dataclass(frozen=True, slots=True)
class SaleDetail:
    """Clearing data for a capture or sale: places the item in a batch."""

    batch_id: BatchID | None
    batch_seq: BatchSeq | None
    pay_recur_ind: bool
    mer_order_num: ShortStr | None
    auth_char_ind: ShortStr | None
    market_spec_data: Annotated[bytes, MaxLen(1024)] | None
    order_summary: ShortStr | None
    customer_reference: ShortStr | None
    customer_service_phone: Annotated[str, MaxLen(32)] | None


@dataclass(frozen=True, slots=True)
class AuthReqData:
    """Content "AuthReq". ``check_digests`` is absent when the baggage is an AuthToken."""

    auth_tags: AuthTags
    check_digests: CheckDigests | None
    payload: AuthReqPayload
    capture_now: bool  # a sale: authorize and capture at once (always so under OPE)
    sale_detail: SaleDetail | None


@dataclass(frozen=True, slots=True)
class AuthReq:
    """M→P. ``enc`` = encoded EncB(M, P, content "AuthReq" → ``AuthReqData``, baggage PI
    or AuthToken)."""

    enc: Protected
    certs: CertList


@dataclass(frozen=True, slots=True)
class ResponseData:
    """The issuer's answer details (never a PAN): approval code, reason, AVS, log reference."""

    approval_code: Annotated[str, MaxLen(6)] | None
    reason: ShortStr | None
    avs_result: Annotated[str, MaxLen(4)] | None
    log_ref_id: Annotated[str, MaxLen(32)] | None


@dataclass(frozen=True, slots=True)
class AuthResPayload:
    auth_amt: CurrAmt
    auth_code: AuthCode
    response: ResponseData


@dataclass(frozen=True, slots=True)
class CapResPayload:
    """Outcome of one capture (also inside AuthRes for a sale)."""

    cap_code: CapCode
    cap_amt: CurrAmt
    batch_id: BatchID | None
    batch_seq: BatchSeq | None


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """Totals of one batch; on close the merchant sends its own to balance against."""

    open_date_time: Timestamp
    closed_when: Timestamp | None
    currency: CurrencyCode
    credit_count: Count
    credit_amount: Amount
    debit_count: Count
    debit_amount: Amount


@dataclass(frozen=True, slots=True)
class AuthResData:
    """Content "AuthRes": the gateway's answer, tags echoed; ``pe_thumb`` = newer gateway key."""

    auth_tags: AuthTags
    pe_thumb: Digest | None
    payload: AuthResPayload
    batch_status: BatchStatus | None
    cap_res_payload: CapResPayload | None


@dataclass(frozen=True, slots=True)
class AuthResBaggage:
    """Content "AuthResBaggage": the EncB baggage b of AuthRes/AuthRevRes, opaque to M.

    ``cap_token``/``auth_token`` = encoded Enc/EncX(P, P, "CapToken"/"AuthToken");
    ``acq_card_msg`` = encoded EncK(AcqBackKey, P, …) for the cardholder.
    """

    cap_token: Annotated[bytes, MaxLen(16_384)] | None
    acq_card_msg: Annotated[bytes, MaxLen(16_384)] | None
    auth_token: Annotated[bytes, MaxLen(16_384)] | None


@dataclass(frozen=True, slots=True)
class AuthRes:
    """P→M. ``enc`` = encoded EncB (or EncBX with PANToken) of content "AuthRes" →
    ``AuthResData`` with baggage ``AuthResBaggage``."""

    enc: Protected
    certs: CertList
    crls: CRLList
    bci: BCIBytes | None


@dataclass(frozen=True, slots=True)
class CapTokenData:
    """Content "CapToken": what a gateway seals to a gateway so capture needs no state."""

    auth_rrpid: Nonce
    auth_amt: CurrAmt
    token_opaque: Opaque


@dataclass(frozen=True, slots=True)
class AuthTokenData:
    """Content "AuthToken": replaces the PI in a subsequent AuthReq (split shipment)."""

    trans_ids: TransIDs
    auth_rrpid: Nonce
    auth_amt: CurrAmt
    token_opaque: Opaque


@dataclass(frozen=True, slots=True)
class AuthRevReqData:
    """Content "AuthRevReq": the original authorization and the new amount (0 = full)."""

    auth_tags: AuthTags
    auth_req_data: AuthReqData
    auth_res_payload: AuthResPayload
    auth_new_amt: CurrAmt


@dataclass(frozen=True, slots=True)
class AuthRevReq:
    """M→P. ``enc`` = encoded EncB(M, P, "AuthRevReq" → ``AuthRevReqData``, CapToken)."""

    enc: Protected
    certs: CertList


@dataclass(frozen=True, slots=True)
class AuthRevResData:
    """Content "AuthRevRes": outcome; new tokens travel as ``AuthResBaggage``."""

    auth_tags: AuthTags
    code: AuthRevCode
    auth_new_amt: CurrAmt
    response: ResponseData | None


@dataclass(frozen=True, slots=True)
class AuthRevRes:
    """P→M. ``enc`` = encoded EncB(P, M, "AuthRevRes" → ``AuthRevResData``,
    ``AuthResBaggage``)."""

    enc: Protected
    certs: CertList
    crls: CRLList
    bci: BCIBytes | None


# --- capture, reversal, credit ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CapPayload:
    cap_date: Timestamp
    cap_req_amt: CurrAmt
    sale_detail: SaleDetail | None


@dataclass(frozen=True, slots=True)
class CapItem:
    trans_ids: TransIDs
    auth_rrpid: Nonce
    payload: CapPayload


@dataclass(frozen=True, slots=True)
class CapReqData:
    """Content "CapReq": capture items; the CapTokens travel as baggage, in item order."""

    rr_tags: RRTags
    items: Annotated[list[CapItem], MaxLen(256)]


@dataclass(frozen=True, slots=True)
class TokenSeq:
    """Content "TokenSeq": EncB baggage of a list of encoded CapTokens (one per item)."""

    tokens: Annotated[list[Annotated[bytes, MaxLen(16_384)]], MaxLen(256)]


@dataclass(frozen=True, slots=True)
class CapReq:
    """M→P. ``enc`` = encoded EncB (EncBX with PANToken) of "CapReq" → ``CapReqData``,
    baggage ``TokenSeq``."""

    enc: Protected
    certs: CertList


@dataclass(frozen=True, slots=True)
class CapResItem:
    trans_ids: TransIDs
    auth_rrpid: Nonce
    payload: CapResPayload


@dataclass(frozen=True, slots=True)
class CapResData:
    """Content "CapRes": per-item outcome and the batches touched."""

    rr_tags: RRTags
    items: Annotated[list[CapResItem], MaxLen(256)]
    batch_status: Annotated[list[BatchStatus], MaxLen(16)]


@dataclass(frozen=True, slots=True)
class CapRes:
    """P→M. ``enc`` = encoded Enc(P, M, "CapRes" → ``CapResData``)."""

    enc: Protected
    certs: CertList
    crls: CRLList
    bci: BCIBytes | None


@dataclass(frozen=True, slots=True)
class CapRevOrCredItem:
    """One reversal or credit: the original capture it refers to, and the amount."""

    trans_ids: TransIDs
    auth_rrpid: Nonce
    cap_payload: CapPayload  # the original capture, as sent
    new_batch_id: BatchID | None
    date: Timestamp
    amount: CurrAmt


@dataclass(frozen=True, slots=True)
class CapRevOrCredReqData:
    """Content "CapRevReq", "CredReq" or "CredRevReq" (same shape, told apart by type)."""

    rr_tags: RRTags
    items: Annotated[list[CapRevOrCredItem], MaxLen(256)]


@dataclass(frozen=True, slots=True)
class CapRevOrCredResItem:
    trans_ids: TransIDs
    auth_rrpid: Nonce
    code: CapRevOrCredCode
    actual_amt: CurrAmt
    batch_id: BatchID | None
    batch_seq: BatchSeq | None


@dataclass(frozen=True, slots=True)
class CapRevOrCredResData:
    """Content "CapRevRes", "CredRes" or "CredRevRes"."""

    rr_tags: RRTags
    items: Annotated[list[CapRevOrCredResItem], MaxLen(256)]
    batch_status: Annotated[list[BatchStatus], MaxLen(16)]


@dataclass(frozen=True, slots=True)
class CapRevReq:
    """M→P. ``enc`` = encoded EncB(M, P, "CapRevReq" → ``CapRevOrCredReqData``, TokenSeq)."""

    enc: Protected
    certs: CertList


@dataclass(frozen=True, slots=True)
class CapRevRes:
    """P→M. ``enc`` = encoded Enc(P, M, "CapRevRes" → ``CapRevOrCredResData``)."""

    enc: Protected
    certs: CertList
    crls: CRLList
    bci: BCIBytes | None


@dataclass(frozen=True, slots=True)
class CredReq:
    """M→P. ``enc`` = encoded EncB(M, P, "CredReq" → ``CapRevOrCredReqData``, TokenSeq)."""

    enc: Protected
    certs: CertList


@dataclass(frozen=True, slots=True)
class CredRes:
    """P→M. ``enc`` = encoded Enc(P, M, "CredRes" → ``CapRevOrCredResData``)."""

    enc: Protected
    certs: CertList
    crls: CRLList
    bci: BCIBytes | None


@dataclass(frozen=True, slots=True)
class CredRevReq:
    """M→P. ``enc`` = encoded EncB(M, P, "CredRevReq" → ``CapRevOrCredReqData``, TokenSeq)."""

    enc: Protected
    certs: CertList


@dataclass(frozen=True, slots=True)
class CredRevRes:
    """P→M. ``enc`` = encoded Enc(P, M, "CredRevRes" → ``CapRevOrCredResData``)."""

    enc: Protected
    certs: CertList
    crls: CRLList
    bci: BCIBytes | None


# --- gateway certificates and batches ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class PCertReqData:
    """Content "PCertReq": which brands/BINs the merchant wants gateway certificates for."""

    rr_tags: RRTags
    brand_and_bin: Annotated[list[BrandAndBIN], MaxLen(64)]
    thumbs: Thumbs


@dataclass(frozen=True, slots=True)
class PCertReq:
    """M→P. ``signed`` = encoded SignedData, S(M, "PCertReq" → ``PCertReqData``)."""

    signed: Protected
    certs: CertList


@dataclass(frozen=True, slots=True)
class PCertResData:
    """Content "PCertRes": outcome and the thumbprints of the certificates returned."""

    rr_tags: RRTags
    code: PCertCode
    cert_thumbs: Thumbs


@dataclass(frozen=True, slots=True)
class PCertRes:
    """P→M. ``signed`` = encoded SignedData, S(P, "PCertRes" → ``PCertResData``)."""

    signed: Protected
    certs: CertList
    crls: CRLList
    bci: BCIBytes | None


@dataclass(frozen=True, slots=True)
class ReturnTransactionDetail:
    """Ask for the batch's items, one page at a time."""

    starting_point: Count
    maximum_items: Annotated[int, Range(1, 1000)]
    errors_only: bool


@dataclass(frozen=True, slots=True)
class BatchAdminReqData:
    """Content "BatchAdminReq": open/purge/close a batch, ask for summary or detail."""

    rr_tags: RRTags
    batch_id: BatchID | None
    brand_and_bin: Annotated[list[BrandAndBIN], MaxLen(64)]
    operation: BatchOperation | None
    return_summary: bool
    detail: ReturnTransactionDetail | None
    batch_status: BatchStatus | None  # merchant totals, for balancing on close


@dataclass(frozen=True, slots=True)
class BatchAdminReq:
    """M→P. ``enc`` = encoded Enc(M, P, "BatchAdminReq" → ``BatchAdminReqData``)."""

    enc: Protected
    certs: CertList


@dataclass(frozen=True, slots=True)
class SettlementInfo:
    amount: CurrAmt
    settlement_type: ShortStr
    account: ShortStr  # the merchant's settlement account reference, not a card number
    deposit_date: Timestamp


@dataclass(frozen=True, slots=True)
class TransDetailItem:
    trans_ids: TransIDs
    auth_rrpid: Nonce
    kind: BatchItemKind
    amount: CurrAmt
    batch_seq: BatchSeq
    failed: bool


@dataclass(frozen=True, slots=True)
class TransDetails:
    next_starting_point: Count | None
    items: Annotated[list[TransDetailItem], MaxLen(1000)]


@dataclass(frozen=True, slots=True)
class BatchAdminResData:
    """Content "BatchAdminRes": the batch's status, totals, settlement and detail pages."""

    rr_tags: RRTags
    batch_id: BatchID
    ba_status: BAStatus | None
    batch_status: BatchStatus | None
    transmission_status: TransmissionStatus | None
    settlement: SettlementInfo | None
    details: TransDetails | None


@dataclass(frozen=True, slots=True)
class BatchAdminRes:
    """P→M. ``enc`` = encoded Enc(P, M, "BatchAdminRes" → ``BatchAdminResData``)."""

    enc: Protected
    certs: CertList
    crls: CRLList
    bci: BCIBytes | None


# --- certificate management -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CardCInitReq:
    """C→CCA, unprotected: start registration, with a fresh Chall-EE."""

    rrpid: Nonce
    lid_ee: LocalID
    chall_ee: Nonce
    brand_id: BrandID
    account_kind: AccountKind
    thumbs: Thumbs


@dataclass(frozen=True, slots=True)
class CardCInitResData:
    """Content "CardCInitRes": Chall-EE echoed; which CA key-exchange cert to encrypt to."""

    rrpid: Nonce
    lid_ee: LocalID
    chall_ee: Nonce
    ca_e_thumb: Digest
    bci_thumb: Digest | None


@dataclass(frozen=True, slots=True)
class CardCInitRes:
    """CCA→C. ``signed`` = encoded SignedData, S(CCA, "CardCInitRes" → ``CardCInitResData``)."""

    signed: Protected
    certs: CertList
    crls: CRLList
    bci: BCIBytes | None


@dataclass(frozen=True, slots=True)
class IDData:
    """Who a merchant or gateway is to its acquirer (no secrets)."""

    merchant_id: MerchantID | None
    acquirer_bin: Bin | None
    acquirer_business_id: ShortStr | None


@dataclass(frozen=True, slots=True)
class MeAqCInitReq:
    """M/P→MCA/PCA, unprotected: start merchant or gateway registration."""

    rrpid: Nonce
    lid_ee: LocalID
    chall_ee: Nonce
    request_type: RequestType
    requester: EntityKind
    id_data: IDData
    brand_id: BrandID
    language: Language
    thumbs: Thumbs


@dataclass(frozen=True, slots=True)
class RegField:
    """One field of a registration form (label, default, whether required, size)."""

    name: ShortStr
    default: Annotated[str, MaxLen(1024)] | None
    required: bool
    max_len: Annotated[int, Range(1, 4096)]


@dataclass(frozen=True, slots=True)
class RegFieldValue:
    name: ShortStr
    value: Annotated[str, MaxLen(4096)]


@dataclass(frozen=True, slots=True)
class RegForm:
    reg_form_id: Count
    fields: Annotated[list[RegField], MaxLen(64)]
    policy: Text


@dataclass(frozen=True, slots=True)
class Referral:
    reason: ShortStr
    text: Text


@dataclass(frozen=True, slots=True)
class MeAqCInitResData:
    """Content "Me-AqCInitRes": Chall-EE echoed, CA key thumb, form (or referral)."""

    rrpid: Nonce
    lid_ee: LocalID
    chall_ee: Nonce
    ca_e_thumb: Digest
    form: RegForm | None
    referral: Referral | None


@dataclass(frozen=True, slots=True)
class MeAqCInitRes:
    """CA→M/P. ``signed`` = encoded SignedData, S(CA, "Me-AqCInitRes" → ``MeAqCInitResData``)."""

    signed: Protected
    certs: CertList
    crls: CRLList
    bci: BCIBytes | None


@dataclass(frozen=True, slots=True)
class RegFormReqData:
    """Content "RegFormReq": ask for the registration form of the card's issuer."""

    rrpid: Nonce
    lid_ee: LocalID
    chall_ee2: Nonce
    request_type: RequestType
    language: Language
    thumbs: Thumbs


@dataclass(frozen=True, slots=True)
class RegFormReq:
    """C→CCA. ``enc`` = encoded EXH(CCA, "RegFormReq" → ``RegFormReqData``, PANOnly)."""

    enc: Protected


@dataclass(frozen=True, slots=True)
class RegFormResData:
    """Content "RegFormRes": Chall-EE2 echoed, fresh Chall-CA, the form or a referral."""

    rrpid: Nonce
    lid_ee: LocalID
    chall_ee2: Nonce
    chall_ca: Nonce
    ca_e_thumb: Digest
    form: RegForm | None
    referral: Referral | None


@dataclass(frozen=True, slots=True)
class RegFormRes:
    """CCA→C. ``signed`` = encoded SignedData, S(CCA, "RegFormRes" → ``RegFormResData``)."""

    signed: Protected
    certs: CertList
    crls: CRLList
    bci: BCIBytes | None


@dataclass(frozen=True, slots=True)
class PublicKeyInfo:
    """A public key to certify: its use and its SubjectPublicKeyInfo DER."""

    use: KeyUse
    spki_der: Annotated[bytes, MaxLen(2048)]


@dataclass(frozen=True, slots=True)
class CertReqData:
    """Content "CertReq": the form values and the new public key(s), signed with the new key."""

    rrpid: Nonce
    lid_ee: LocalID
    chall_ee3: Nonce
    chall_ca: Nonce | None
    request_type: RequestType
    reg_form_id: Count
    values: Annotated[list[RegFieldValue], MaxLen(64)]
    ca_back_key: BackKeyData | None  # cardholders: the key CertRes is returned under (EncK)
    public_keys: Annotated[list[PublicKeyInfo], MaxLen(2)]
    ee_thumb: Digest | None  # renewal: the certificate being renewed
    thumbs: Thumbs


@dataclass(frozen=True, slots=True)
class AcctInfo:
    """Content "AcctInfo": the extra-encrypted p of a cardholder CertReq (EncX).

    ``account`` = exact encoded PANOnly/PANData of ``protocol/pan.py``.
    """

    account: Annotated[bytes, MaxLen(512)]
    card_secret: Nonce


@dataclass(frozen=True, slots=True)
class CertReq:
    """EE→CA. ``enc`` = cardholder: encoded EncX(C, CCA, "CertReq" → ``CertReqData``,
    ``AcctInfo``); merchant/gateway: encoded Enc(EE, CA, "CertReq" → ``CertReqData``).
    ``certs`` = the current chain when renewing."""

    enc: Protected
    certs: CertList


@dataclass(frozen=True, slots=True)
class FailedItem:
    field: ShortStr
    reason: ShortStr


@dataclass(frozen=True, slots=True)
class CertStatus:
    code: CertStatusCode
    nonce_cca: Nonce | None  # cardholders: PANSecret = CardSecret xor Nonce-CCA
    messages: Annotated[list[ShortStr], MaxLen(16)]
    failed_items: Annotated[list[FailedItem], MaxLen(64)]


@dataclass(frozen=True, slots=True)
class CertResData:
    """Content "CertRes" (and "CertInqRes"): Chall-EE3 echoed, status, certificates issued."""

    rrpid: Nonce
    lid_ee: LocalID
    chall_ee3: Nonce
    status: CertStatus
    cert_thumbs: Thumbs


@dataclass(frozen=True, slots=True)
class CertRes:
    """CA→EE. ``protected`` = cardholder: encoded EncK(CABackKey, CCA, "CertRes" →
    ``CertResData``); merchant/gateway: encoded SignedData, S(CA, "CertRes" → same)."""

    protected: Protected
    certs: CertList
    crls: CRLList
    bci: BCIBytes | None


@dataclass(frozen=True, slots=True)
class CertInqReqData:
    """Content "CertInqReq": asks about a pending CertReq."""

    rrpid: Nonce
    lid_ee: LocalID
    chall_ee3: Nonce


@dataclass(frozen=True, slots=True)
class CertInqReq:
    """EE→CA. ``signed`` = encoded SignedData, S(EE, "CertInqReq" → ``CertInqReqData``)."""

    signed: Protected
    certs: CertList


@dataclass(frozen=True, slots=True)
class CertInqRes:
    """CA→EE, as CertRes with content type "CertInqRes" → ``CertResData``."""

    protected: Protected
    certs: CertList
    crls: CRLList
    bci: BCIBytes | None


# --- Error ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorTBS:
    """Content "Error": the code, a fresh nonce, and the offending header or message."""

    code: ErrorCode
    error_nonce: Nonce
    error_oid: ShortStr | None
    error_thumb: Digest | None
    error_msg: Annotated[bytes, MaxLen(65_536)]


@dataclass(frozen=True, slots=True)
class Error:
    """Any→any. ``signed``: ``content`` = encoded SignedData, S(EE, "Error" → ``ErrorTBS``);
    otherwise (cardholders may) ``content`` = encoded ``ErrorTBS``. Never answered."""

    signed: bool
    content: Protected
    certs: CertList


# --- registries -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BCIDistribution:
    """CA→parties holding revocation data, unsolicited: a brand's new BCI, the Brand CA
    certificate it verifies under and the CRLs it names. Unsigned as a whole: the BCI is the
    Brand CA's signature and each CRL its issuer's, so the receiver trusts only what verifies
    (``actors/trust.py``)."""

    certs: CertList
    crls: CRLList
    bci: BCIBytes


MESSAGE_CLASSES: dict[MessageType, type] = {
    MessageType.PINIT_REQ: PInitReq,
    MessageType.PINIT_RES: PInitRes,
    MessageType.PREQ: PReq,
    MessageType.PRES: PRes,
    MessageType.INQ_REQ: InqReq,
    MessageType.INQ_RES: InqRes,
    MessageType.AUTH_REQ: AuthReq,
    MessageType.AUTH_RES: AuthRes,
    MessageType.AUTH_REV_REQ: AuthRevReq,
    MessageType.AUTH_REV_RES: AuthRevRes,
    MessageType.CAP_REQ: CapReq,
    MessageType.CAP_RES: CapRes,
    MessageType.CAP_REV_REQ: CapRevReq,
    MessageType.CAP_REV_RES: CapRevRes,
    MessageType.CRED_REQ: CredReq,
    MessageType.CRED_RES: CredRes,
    MessageType.CRED_REV_REQ: CredRevReq,
    MessageType.CRED_REV_RES: CredRevRes,
    MessageType.PCERT_REQ: PCertReq,
    MessageType.PCERT_RES: PCertRes,
    MessageType.BATCH_ADMIN_REQ: BatchAdminReq,
    MessageType.BATCH_ADMIN_RES: BatchAdminRes,
    MessageType.CARD_CINIT_REQ: CardCInitReq,
    MessageType.CARD_CINIT_RES: CardCInitRes,
    MessageType.ME_AQ_CINIT_REQ: MeAqCInitReq,
    MessageType.ME_AQ_CINIT_RES: MeAqCInitRes,
    MessageType.REG_FORM_REQ: RegFormReq,
    MessageType.REG_FORM_RES: RegFormRes,
    MessageType.CERT_REQ: CertReq,
    MessageType.CERT_RES: CertRes,
    MessageType.CERT_INQ_REQ: CertInqReq,
    MessageType.CERT_INQ_RES: CertInqRes,
    MessageType.BCI_DISTRIBUTION: BCIDistribution,
    MessageType.ERROR: Error,
}

MESSAGE_TYPES: dict[type, MessageType] = {cls: t for t, cls in MESSAGE_CLASSES.items()}

# Content type (the shared vocabulary of treatments) → the data record it names.
DATA_RECORDS: dict[str, type] = {
    "PInitRes": PInitResData,
    "OIData": OIData,
    "PIHead": PIHead,
    "PRes": PResData,
    "InqReq": InqReqData,
    "InqRes": PResData,
    "AuthReq": AuthReqData,
    "AuthRes": AuthResData,
    "AuthResBaggage": AuthResBaggage,
    "CapToken": CapTokenData,
    "AuthToken": AuthTokenData,
    "AuthRevReq": AuthRevReqData,
    "AuthRevRes": AuthRevResData,
    "CapReq": CapReqData,
    "TokenSeq": TokenSeq,
    "CapRes": CapResData,
    "CapRevReq": CapRevOrCredReqData,
    "CredReq": CapRevOrCredReqData,
    "CredRevReq": CapRevOrCredReqData,
    "CapRevRes": CapRevOrCredResData,
    "CredRes": CapRevOrCredResData,
    "CredRevRes": CapRevOrCredResData,
    "PCertReq": PCertReqData,
    "PCertRes": PCertResData,
    "BatchAdminReq": BatchAdminReqData,
    "BatchAdminRes": BatchAdminResData,
    "CardCInitRes": CardCInitResData,
    "Me-AqCInitRes": MeAqCInitResData,
    "RegFormReq": RegFormReqData,
    "RegFormRes": RegFormResData,
    "CertReq": CertReqData,
    "AcctInfo": AcctInfo,
    "CertRes": CertResData,
    "CertInqReq": CertInqReqData,
    "CertInqRes": CertResData,
    "Error": ErrorTBS,
}

for _cls in (*MESSAGE_CLASSES.values(), *DATA_RECORDS.values()):
    codec.validate_schema(_cls)
del _cls
