"""Every message of the catalogue and every data record round-trips through the codec and
the wrapper, with realistic field values; the samples are shared with the fuzz tests."""

from __future__ import annotations

import dataclasses
import hashlib
import types
import typing
from typing import Any

import pytest

from protocol import codec, wrapper
from protocol import messages as m
from protocol.errors import ErrorCode
from protocol.signed import SignedData

NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def b32(label: str) -> bytes:
    """A deterministic 32-byte value standing for a nonce, XID or digest."""
    return hashlib.sha256(label.encode()).digest()


def signed(content_type: str, record: Any) -> bytes:
    """An encoded SignedData shaped like the real one (the signature is not checked here)."""
    signature = hashlib.sha512(content_type.encode()).digest() * 4  # RSA-2048-sized
    return codec.encode(SignedData(content_type, b32("signer"), codec.encode(record), signature))


USD_42 = m.CurrAmt("USD", 4_250)
JPY = m.CurrAmt("JPY", 12_800)
TRANS_IDS = m.TransIDs(b"lid-c-0001", b"order-7781", b32("xid"), NOW_MS - 2_000, "visa", "en")
MER = m.MerTermIDs("MER-004211", "T01", None)
RR_TAGS = m.RRTags(b32("rrpid-cap"), MER, NOW_MS)
AUTH_TAGS = m.AuthTags(b32("rrpid-auth"), MER, NOW_MS, TRANS_IDS)
SALE = m.SaleDetail(
    7, 3, False, "PO-99172", "A", b"\x01\x02", "2 books", "CUST-17", "+81-3-5555-0100"
)
CERT = b"\x30\x82\x03\x0d" + bytes(range(256)) * 3  # DER-shaped certificate bytes
BATCH_STATUS = m.BatchStatus(NOW_MS - 86_400_000, None, "USD", 1, 1_000, 12, 51_000)
PAYLOAD = m.AuthReqPayload(False, USD_42, m.AVSData("1 Main St", "94016", "US"), None, "PO-99172")
AUTH_REQ_DATA = m.AuthReqData(
    AUTH_TAGS, m.CheckDigests(b32("hoi"), b32("hod")), PAYLOAD, False, None
)
AUTH_RES_PAYLOAD = m.AuthResPayload(
    USD_42, m.AuthCode.APPROVED, m.ResponseData("A1B2C3", None, "Y", "LOG-0001")
)
CAP_PAYLOAD = m.CapPayload(NOW_MS, USD_42, SALE)
FORM = m.RegForm(
    5,
    [m.RegField("name", None, True, 64), m.RegField("address", "Tokyo", False, 256)],
    "Certificates are issued under the test brand policy.",
)
CERT_STATUS = m.CertStatus(m.CertStatusCode.REQUEST_COMPLETE, b32("nonce-cca"), ["ok"], [])

DATA_SAMPLES: dict[str, Any] = {
    "PInitRes": m.PInitResData(
        TRANS_IDS, b32("rrpid-1"), b32("chall-c"), b32("chall-m"), b32("pe"), None
    ),
    "OIData": m.OIData(
        TRANS_IDS,
        b32("rrpid-2"),
        b32("chall-c"),
        b32("hod"),
        b32("odsalt"),
        b32("chall-m"),
        "visa",
        "411111",
    ),
    "PIHead": m.PIHead(
        TRANS_IDS,
        m.PurchaseInputs(b32("hod"), USD_42),
        "MER-004211",
        b32("mthumb"),
        b32("gthumb"),
        m.InstallRecurData(None, 30, NOW_MS + 10**10),
        b32("stain"),
        "setpay-wallet/0.1",
        m.BackKeyData("aes-256-gcm", b32("acq-back")),
        m.AccountKind.BANK,
        m.PinEntry.PIN_SECURE,
    ),
    "PRes": m.PResData(
        TRANS_IDS,
        b32("rrpid-2"),
        b32("chall-c"),
        m.CompletionCode.CAPTURE_PERFORMED,
        m.AuthStatus(NOW_MS, m.AuthCode.APPROVED, USD_42),
        m.CapStatus(NOW_MS, m.CapCode.SUCCESS, USD_42),
        [m.CreditStatus(NOW_MS, m.CapRevOrCredCode.SUCCESS, m.CurrAmt("USD", 500))],
        b"acq-card-msg",
    ),
    "InqReq": m.InqReqData(TRANS_IDS, b32("rrpid-3"), b32("chall-c2")),
    "InqRes": m.PResData(
        TRANS_IDS,
        b32("rrpid-3"),
        b32("chall-c2"),
        m.CompletionCode.ORDER_RECEIVED,
        None,
        None,
        [],
        None,
    ),
    "AuthReq": AUTH_REQ_DATA,
    "AuthRes": m.AuthResData(
        AUTH_TAGS,
        b32("pe-new"),
        AUTH_RES_PAYLOAD,
        BATCH_STATUS,
        m.CapResPayload(m.CapCode.SUCCESS, USD_42, 7, 4),
    ),
    "AuthResBaggage": m.AuthResBaggage(b"cap-token-bytes", None, b"auth-token-bytes"),
    "CapToken": m.CapTokenData(b32("rrpid-auth"), USD_42, b"gw-state-01"),
    "AuthToken": m.AuthTokenData(TRANS_IDS, b32("rrpid-auth"), USD_42, b"gw-state-02"),
    "AuthRevReq": m.AuthRevReqData(AUTH_TAGS, AUTH_REQ_DATA, AUTH_RES_PAYLOAD, m.CurrAmt("USD", 0)),
    "AuthRevRes": m.AuthRevResData(AUTH_TAGS, m.AuthRevCode.APPROVED, m.CurrAmt("USD", 0), None),
    "CapReq": m.CapReqData(RR_TAGS, [m.CapItem(TRANS_IDS, b32("rrpid-auth"), CAP_PAYLOAD)]),
    "TokenSeq": m.TokenSeq([b"cap-token-1", b"cap-token-2"]),
    "CapRes": m.CapResData(
        RR_TAGS,
        [
            m.CapResItem(
                TRANS_IDS, b32("rrpid-auth"), m.CapResPayload(m.CapCode.SUCCESS, USD_42, 7, 4)
            )
        ],
        [BATCH_STATUS],
    ),
    "CapRevReq": m.CapRevOrCredReqData(
        RR_TAGS,
        [m.CapRevOrCredItem(TRANS_IDS, b32("rrpid-auth"), CAP_PAYLOAD, None, NOW_MS, USD_42)],
    ),
    "CredReq": m.CapRevOrCredReqData(
        RR_TAGS,
        [m.CapRevOrCredItem(TRANS_IDS, b32("rrpid-auth"), CAP_PAYLOAD, 8, NOW_MS, JPY)],
    ),
    "CredRevReq": m.CapRevOrCredReqData(RR_TAGS, []),
    "CapRevRes": m.CapRevOrCredResData(
        RR_TAGS,
        [
            m.CapRevOrCredResItem(
                TRANS_IDS, b32("rrpid-auth"), m.CapRevOrCredCode.BATCH_CLOSED, USD_42, 7, None
            )
        ],
        [],
    ),
    "CredRes": m.CapRevOrCredResData(
        RR_TAGS,
        [
            m.CapRevOrCredResItem(
                TRANS_IDS, b32("rrpid-auth"), m.CapRevOrCredCode.SUCCESS, JPY, 8, 1
            )
        ],
        [BATCH_STATUS],
    ),
    "CredRevRes": m.CapRevOrCredResData(RR_TAGS, [], []),
    "PCertReq": m.PCertReqData(RR_TAGS, [m.BrandAndBIN("visa", "411111")], [b32("t1")]),
    "PCertRes": m.PCertResData(RR_TAGS, m.PCertCode.SUCCESS, [b32("gw-cert")]),
    "BatchAdminReq": m.BatchAdminReqData(
        RR_TAGS,
        7,
        [],
        m.BatchOperation.CLOSE,
        True,
        m.ReturnTransactionDetail(0, 100, False),
        BATCH_STATUS,
    ),
    "BatchAdminRes": m.BatchAdminResData(
        RR_TAGS,
        7,
        m.BAStatus.SUCCESS,
        BATCH_STATUS,
        m.TransmissionStatus.SUCCESS,
        m.SettlementInfo(m.CurrAmt("USD", 50_000), "net", "ACCT-REF-88", NOW_MS),
        m.TransDetails(
            None,
            [
                m.TransDetailItem(
                    TRANS_IDS, b32("rrpid-auth"), m.BatchItemKind.CAPTURE, USD_42, 4, False
                )
            ],
        ),
    ),
    "CardCInitRes": m.CardCInitResData(
        b32("rrpid-4"), b"lid-ee-1", b32("chall-ee"), b32("cae"), b32("bci")
    ),
    "Me-AqCInitRes": m.MeAqCInitResData(
        b32("rrpid-5"), b"lid-ee-2", b32("chall-ee"), b32("cae"), FORM, None
    ),
    "RegFormReq": m.RegFormReqData(
        b32("rrpid-6"), b"lid-ee-1", b32("chall-ee2"), m.RequestType.INITIAL, "ja", []
    ),
    "RegFormRes": m.RegFormResData(
        b32("rrpid-6"),
        b"lid-ee-1",
        b32("chall-ee2"),
        b32("chall-ca"),
        b32("cae"),
        None,
        m.Referral("issuer-referral", "Please call your bank."),
    ),
    "CertReq": m.CertReqData(
        b32("rrpid-7"),
        b"lid-ee-1",
        b32("chall-ee3"),
        b32("chall-ca"),
        m.RequestType.INITIAL,
        5,
        [m.RegFieldValue("name", "Hanako Yamada")],
        m.BackKeyData("aes-256-gcm", b32("ca-back")),
        [m.PublicKeyInfo(m.KeyUse.SIGNATURE, b"\x30\x59" + bytes(89))],
        None,
        [],
    ),
    "AcctInfo": m.AcctInfo(b"\x92\xb04111111111111111\xc4\x20" + b32("ex"), b32("card-secret")),
    "CertRes": m.CertResData(
        b32("rrpid-7"), b"lid-ee-1", b32("chall-ee3"), CERT_STATUS, [b32("new-cert")]
    ),
    "CertInqReq": m.CertInqReqData(b32("rrpid-8"), b"lid-ee-1", b32("chall-ee3")),
    "CertInqRes": m.CertResData(
        b32("rrpid-8"),
        b"lid-ee-1",
        b32("chall-ee3"),
        m.CertStatus(
            m.CertStatusCode.REQUEST_PENDED, None, [], [m.FailedItem("address", "too long")]
        ),
        [],
    ),
    "Error": m.ErrorTBS(
        ErrorCode.SIGNATURE_FAILURE, b32("err-nonce"), None, b32("thumb"), b"\x96\x01\x00"
    ),
}


def _enc(content_type: str) -> bytes:
    """Stand-in for an encoded envelope: structure matters to the wrapper, not the crypto."""
    return signed(content_type, DATA_SAMPLES[content_type])


BODY_SAMPLES: dict[m.MessageType, Any] = {
    m.MessageType.PINIT_REQ: m.PInitReq(
        b32("rrpid-1"),
        "en",
        b"lid-c-0001",
        None,
        b32("chall-c"),
        "visa",
        "411111",
        m.AccountKind.CARD,
        [b32("cached-cert")],
    ),
    m.MessageType.PINIT_RES: m.PInitRes(
        signed("PInitRes", DATA_SAMPLES["PInitRes"]), [CERT, CERT], [], b"bci-bytes"
    ),
    m.MessageType.PREQ: m.PReq(
        m.PIKind.DUAL_SIGNED,
        b"pi-dual-signed-bytes" * 20,
        codec.encode(DATA_SAMPLES["OIData"]),
        b32("pidata"),
        [CERT],
    ),
    m.MessageType.PRES: m.PRes(signed("PRes", DATA_SAMPLES["PRes"]), [CERT], [], None),
    m.MessageType.INQ_REQ: m.InqReq(False, codec.encode(DATA_SAMPLES["InqReq"]), []),
    m.MessageType.INQ_RES: m.InqRes(signed("InqRes", DATA_SAMPLES["InqRes"]), [CERT], [], None),
    m.MessageType.AUTH_REQ: m.AuthReq(_enc("AuthReq"), [CERT]),
    m.MessageType.AUTH_RES: m.AuthRes(_enc("AuthRes"), [CERT], [b"crl-der"], None),
    m.MessageType.AUTH_REV_REQ: m.AuthRevReq(_enc("AuthRevReq"), [CERT]),
    m.MessageType.AUTH_REV_RES: m.AuthRevRes(_enc("AuthRevRes"), [], [], None),
    m.MessageType.CAP_REQ: m.CapReq(_enc("CapReq"), [CERT]),
    m.MessageType.CAP_RES: m.CapRes(_enc("CapRes"), [], [], None),
    m.MessageType.CAP_REV_REQ: m.CapRevReq(_enc("CapRevReq"), [CERT]),
    m.MessageType.CAP_REV_RES: m.CapRevRes(_enc("CapRevRes"), [], [], None),
    m.MessageType.CRED_REQ: m.CredReq(_enc("CredReq"), [CERT]),
    m.MessageType.CRED_RES: m.CredRes(_enc("CredRes"), [], [], None),
    m.MessageType.CRED_REV_REQ: m.CredRevReq(_enc("CredRevReq"), [CERT]),
    m.MessageType.CRED_REV_RES: m.CredRevRes(_enc("CredRevRes"), [], [], b"bci"),
    m.MessageType.PCERT_REQ: m.PCertReq(_enc("PCertReq"), [CERT]),
    m.MessageType.PCERT_RES: m.PCertRes(_enc("PCertRes"), [CERT, CERT], [], None),
    m.MessageType.BATCH_ADMIN_REQ: m.BatchAdminReq(_enc("BatchAdminReq"), [CERT]),
    m.MessageType.BATCH_ADMIN_RES: m.BatchAdminRes(_enc("BatchAdminRes"), [], [], None),
    m.MessageType.CARD_CINIT_REQ: m.CardCInitReq(
        b32("rrpid-4"), b"lid-ee-1", b32("chall-ee"), "visa", m.AccountKind.CARD, []
    ),
    m.MessageType.CARD_CINIT_RES: m.CardCInitRes(_enc("CardCInitRes"), [CERT], [], b"bci"),
    m.MessageType.ME_AQ_CINIT_REQ: m.MeAqCInitReq(
        b32("rrpid-5"),
        b"lid-ee-2",
        b32("chall-ee"),
        m.RequestType.INITIAL,
        m.EntityKind.MERCHANT,
        m.IDData("MER-004211", "411111", None),
        "visa",
        "en",
        [],
    ),
    m.MessageType.ME_AQ_CINIT_RES: m.MeAqCInitRes(_enc("Me-AqCInitRes"), [CERT], [], None),
    m.MessageType.REG_FORM_REQ: m.RegFormReq(_enc("RegFormReq")),
    m.MessageType.REG_FORM_RES: m.RegFormRes(_enc("RegFormRes"), [CERT], [], None),
    m.MessageType.CERT_REQ: m.CertReq(_enc("CertReq"), []),
    m.MessageType.CERT_RES: m.CertRes(_enc("CertRes"), [CERT], [], None),
    m.MessageType.CERT_INQ_REQ: m.CertInqReq(_enc("CertInqReq"), [CERT]),
    m.MessageType.CERT_INQ_RES: m.CertInqRes(_enc("CertInqRes"), [], [], None),
    m.MessageType.BCI_DISTRIBUTION: m.BCIDistribution([CERT], [b"crl"], b"signed BCI bytes"),
    m.MessageType.ERROR: m.Error(False, codec.encode(DATA_SAMPLES["Error"]), []),
}


def header_for(body: Any) -> wrapper.MessageHeader:
    """A header repeating the ids an unprotected body carries (so the wrapper accepts it)."""
    rrpid = getattr(body, "rrpid", None)
    if isinstance(body, m.PInitReq):
        return wrapper.make_header(NOW_MS, lid_c=body.lid_c, lid_m=body.lid_m, rrpid=rrpid)
    return wrapper.make_header(NOW_MS, xid=TRANS_IDS.xid, rrpid=rrpid)


def _is_optional(tp: Any) -> bool:
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in (
        typing.get_args(tp)
    )


def minimal(record: Any) -> Any:
    """``record`` with every optional field (at every depth) set to None."""
    hints = typing.get_type_hints(type(record), include_extras=True)
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if _is_optional(hints[f.name]):
            changes[f.name] = None
        elif dataclasses.is_dataclass(value):
            changes[f.name] = minimal(value)
    return dataclasses.replace(record, **changes)


def test_every_message_type_and_content_type_has_a_sample() -> None:
    """The samples cover the whole catalogue, so the round-trip tests cover it too."""
    assert set(BODY_SAMPLES) == set(m.MessageType)
    assert set(DATA_SAMPLES) == set(m.DATA_RECORDS)
    for t, body in BODY_SAMPLES.items():
        assert isinstance(body, m.MESSAGE_CLASSES[t])
    for ct, record in DATA_SAMPLES.items():
        assert isinstance(record, m.DATA_RECORDS[ct])


@pytest.mark.parametrize("msg_type", list(m.MessageType), ids=lambda t: t.name)
def test_body_round_trips(msg_type: m.MessageType) -> None:
    """encode → decode gives the same body, and re-encoding gives the same bytes."""
    body = BODY_SAMPLES[msg_type]
    data = codec.encode(body)
    decoded = codec.decode(m.MESSAGE_CLASSES[msg_type], data)
    assert decoded == body
    assert codec.encode(decoded) == data


@pytest.mark.parametrize("msg_type", list(m.MessageType), ids=lambda t: t.name)
def test_message_round_trips_through_the_wrapper(msg_type: m.MessageType) -> None:
    """The wrapped message decodes to the same header, type and body."""
    body = BODY_SAMPLES[msg_type]
    header = header_for(body)
    data = wrapper.encode_message(header, body)
    got = wrapper.decode_message(data, now_ms=NOW_MS + 1_000)
    assert got == (header, msg_type, body)
    assert got.msg_type is msg_type
    assert wrapper.encode_message(got.header, got.body) == data


@pytest.mark.parametrize("content_type", sorted(m.DATA_RECORDS))
def test_data_record_round_trips_full_and_minimal(content_type: str) -> None:
    """Data records round-trip with every optional field filled, and with all of them None."""
    cls = m.DATA_RECORDS[content_type]
    for record in (DATA_SAMPLES[content_type], minimal(DATA_SAMPLES[content_type])):
        assert codec.decode(cls, codec.encode(record)) == record


def test_protected_parts_are_carried_byte_for_byte() -> None:
    """The signed bytes inside PInitRes come back identical, so they verify as sent."""
    body = BODY_SAMPLES[m.MessageType.PINIT_RES]
    got = wrapper.decode_message(wrapper.encode_message(header_for(body), body), now_ms=NOW_MS)
    inner = codec.decode(SignedData, got.body.signed)
    assert inner.content == codec.encode(DATA_SAMPLES["PInitRes"])
    assert codec.decode(m.PInitResData, inner.content) == DATA_SAMPLES["PInitRes"]


def test_field_limits_are_enforced_on_decode() -> None:
    """A nonce of the wrong size, an unknown code or an over-long string is decodingFailure."""
    from protocol.errors import ProtocolError

    good = codec.to_wire(BODY_SAMPLES[m.MessageType.PINIT_REQ])
    for index, bad in ((0, b"short"), (7, 9), (6, "4" * 12), (1, b"en"), (8, [b"x"])):
        wire = list(good)
        wire[index] = bad
        with pytest.raises(ProtocolError) as info:
            codec.from_wire(m.PInitReq, wire)
        assert info.value.code is ErrorCode.DECODING_FAILURE


def test_amounts_are_integers_in_minor_units() -> None:
    """Negative amounts and floats are refused; currencies are three letters."""
    from protocol.errors import ProtocolError

    for wire in (["USD", -1], ["USD", 1.5], ["US", 100], ["USD", 10**16]):
        with pytest.raises(ProtocolError):
            codec.from_wire(m.CurrAmt, wire)
