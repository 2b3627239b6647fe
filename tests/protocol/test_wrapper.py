"""The wrapper's receiver checks each give their own SET error code, in the §3.2 order; the
id/clock helpers; and protocol/ importing no I/O module."""

from __future__ import annotations

import ast
import pathlib
from typing import Any

import msgpack
import pytest

from protocol import codec, ids, wrapper
from protocol import messages as m
from protocol.errors import ErrorCode, ProtocolError
from tests.protocol.test_messages import BODY_SAMPLES, NOW_MS, TRANS_IDS, header_for

WINDOW = 60_000
PINIT_REQ = BODY_SAMPLES[m.MessageType.PINIT_REQ]
PRES = BODY_SAMPLES[m.MessageType.PRES]


def wire_of(body: Any = PRES) -> list[Any]:
    """A valid wrapper as a plain msgpack tree, for surgical edits."""
    return msgpack.unpackb(wrapper.encode_message(header_for(body), body))


def decode(data: bytes, **kwargs: Any) -> wrapper.Decoded:
    kwargs.setdefault("now_ms", NOW_MS)
    kwargs.setdefault("window_ms", WINDOW)
    return wrapper.decode_message(data, **kwargs)


def code_of(data: bytes, **kwargs: Any) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        decode(data, **kwargs)
    return info.value.code


def test_message_too_big() -> None:
    """Input over the size limit is refused before it is parsed."""
    data = wrapper.encode_message(header_for(PRES), PRES)
    assert code_of(data, max_size=len(data) - 1) is ErrorCode.MESSAGE_TOO_BIG
    assert decode(data, max_size=len(data)).body == PRES


@pytest.mark.parametrize(
    ("version", "revision", "code"),
    [
        (0, 0, ErrorCode.VERSION_TOO_OLD),
        (2, 0, ErrorCode.VERSION_TOO_NEW),
        (1, 1, ErrorCode.VERSION_TOO_NEW),
        (7, 3, ErrorCode.VERSION_TOO_NEW),
    ],
)
def test_version_and_revision(version: int, revision: int, code: ErrorCode) -> None:
    """Other versions get versionTooOld/New, not decodingFailure."""
    tree = wire_of()
    tree[0][0], tree[0][1] = version, revision
    assert code_of(msgpack.packb(tree)) is code


def test_future_version_with_another_shape_is_too_new() -> None:
    """A version-2 message whose header has more fields still reads as versionTooNew."""
    tree = wire_of()
    tree[0] = [2, 0, NOW_MS, None, None, "future", {"new": 1}]
    tree.append([b"more"])
    assert code_of(msgpack.packb(tree)) is ErrorCode.VERSION_TOO_NEW


def test_unknown_message_type() -> None:
    tree = wire_of()
    tree[1] = 77
    assert code_of(msgpack.packb(tree)) is ErrorCode.MESSAGE_NOT_SUPPORTED


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t.append([]),  # extra wrapper field
        lambda t: t.__setitem__(2, "not bytes"),  # body as str
        lambda t: t.__setitem__(1, True),  # type as a boolean
        lambda t: t[0].__setitem__(5, b"sw"),  # sw_ident as bytes
        lambda t: t[0].__setitem__(4, b"short rrpid"),
        lambda t: t.__setitem__(3, [["1.2.3", False]]),  # extension missing its value
    ],
)
def test_malformed_wrapper_is_decoding_failure(edit: Any) -> None:
    tree = wire_of()
    edit(tree)
    assert code_of(msgpack.packb(tree)) is ErrorCode.DECODING_FAILURE


def test_trailing_bytes_and_garbage() -> None:
    data = wrapper.encode_message(header_for(PRES), PRES)
    assert code_of(data + b"\x00") is ErrorCode.DECODING_FAILURE
    assert code_of(b"") is ErrorCode.DECODING_FAILURE
    assert code_of(b"\xc1") is ErrorCode.DECODING_FAILURE


def test_body_that_does_not_match_its_type() -> None:
    """A PInitReq body labelled PInitRes is decodingFailure."""
    tree = wire_of(PINIT_REQ)
    tree[1] = int(m.MessageType.PINIT_RES)
    assert code_of(msgpack.packb(tree)) is ErrorCode.DECODING_FAILURE


def test_date_window() -> None:
    """Dates outside now ± window are too old / too new; the edges are accepted."""
    data = wrapper.encode_message(header_for(PRES), PRES)
    assert decode(data, now_ms=NOW_MS + WINDOW).body == PRES
    assert decode(data, now_ms=NOW_MS - WINDOW).body == PRES
    assert code_of(data, now_ms=NOW_MS + WINDOW + 1) is ErrorCode.MESSAGE_TOO_OLD
    assert code_of(data, now_ms=NOW_MS - WINDOW - 1) is ErrorCode.MESSAGE_TOO_NEW


def test_extensions() -> None:
    """Unknown critical → unrecognizedExtension; unknown non-critical ignored; known kept."""
    header = header_for(PRES)
    crit = wrapper.Extension("2.23.42.1.99", True, b"\x01")
    soft = wrapper.Extension("2.23.42.1.98", False, b"\x02")
    assert code_of(wrapper.encode_message(header, PRES, [crit])) is (
        ErrorCode.UNRECOGNIZED_EXTENSION
    )
    assert decode(wrapper.encode_message(header, PRES, [soft])).body == PRES
    got = decode(
        wrapper.encode_message(header, PRES, [crit, soft]),
        known_extensions=frozenset({"2.23.42.1.99"}),
    )
    assert got.body == PRES
    dup = wrapper.encode_message(header, PRES, [soft, soft])
    assert code_of(dup) is ErrorCode.DECODING_FAILURE


def test_checks_run_in_order() -> None:
    """A message both too new in version and stale in date reports the version first."""
    tree = wire_of()
    tree[0][0] = 2
    tree[0][2] = 0
    assert code_of(msgpack.packb(tree)) is ErrorCode.VERSION_TOO_NEW
    tree = wire_of()
    tree[0][2] = 0
    tree[3] = [["2.23.42.1.99", True, b""]]
    assert code_of(msgpack.packb(tree)) is ErrorCode.UNRECOGNIZED_EXTENSION


def test_unprotected_body_ids_must_match_the_header() -> None:
    """PInitReq's RRPID and LID-C are compared with the header's copies on decode."""
    good = header_for(PINIT_REQ)
    assert decode(wrapper.encode_message(good, PINIT_REQ)).body == PINIT_REQ
    for header in (
        wrapper.make_header(NOW_MS, lid_c=PINIT_REQ.lid_c, rrpid=ids.new_rrpid()),
        wrapper.make_header(NOW_MS, lid_c=b"other", rrpid=PINIT_REQ.rrpid),
        wrapper.make_header(NOW_MS, lid_c=PINIT_REQ.lid_c, lid_m=b"m", rrpid=PINIT_REQ.rrpid),
        wrapper.make_header(NOW_MS),
    ):
        data = wrapper.encode_message(header, PINIT_REQ)
        assert code_of(data) is ErrorCode.WRAPPER_MSG_MISMATCH


def test_check_header_ids_for_opened_bodies() -> None:
    """After opening a protected body, its TransIDs and RRPID must equal the header's."""
    rrpid = b"\x07" * 32
    header = wrapper.make_header(
        NOW_MS, xid=TRANS_IDS.xid, lid_c=TRANS_IDS.lid_c, lid_m=TRANS_IDS.lid_m, rrpid=rrpid
    )
    wrapper.check_header_trans_ids(header, TRANS_IDS, rrpid)
    wrapper.check_header_ids(header, xid=TRANS_IDS.xid)  # ids not named are not compared
    with pytest.raises(ProtocolError) as info:
        wrapper.check_header_trans_ids(header, TRANS_IDS, b"\x08" * 32)
    assert info.value.code is ErrorCode.WRAPPER_MSG_MISMATCH
    with pytest.raises(ProtocolError):
        wrapper.check_header_ids(header, xid=b"\x00" * 32)
    with pytest.raises(ProtocolError):
        wrapper.check_header_ids(wrapper.make_header(NOW_MS), xid=TRANS_IDS.xid)
    with pytest.raises(ProtocolError):
        wrapper.check_header_ids(header, lid_m=None)  # the body has no LID-M, the header does


def test_encode_refuses_a_record_that_is_not_a_message() -> None:
    with pytest.raises(ProtocolError) as info:
        wrapper.encode_message(header_for(PRES), TRANS_IDS)
    assert info.value.code is ErrorCode.MESSAGE_NOT_SUPPORTED


def test_peek_header() -> None:
    """The header of an undecodable message is still available for the Error reply."""
    tree = wire_of()
    tree[2] = "not bytes"
    assert wrapper.peek_header(msgpack.packb(tree)) == header_for(PRES)
    assert wrapper.peek_header(b"\xc1") is None
    assert wrapper.peek_header(msgpack.packb([[1, 2]])) is None


def test_header_values() -> None:
    header = wrapper.make_header(NOW_MS, rrpid=b"\x01" * 32)
    assert (header.version, header.revision, header.date) == (1, 0, NOW_MS)
    assert header.message_ids is None
    assert codec.decode(wrapper.MessageHeader, codec.encode(header)) == header


def test_new_ids_are_random_and_32_bytes() -> None:
    values = {f() for f in (ids.new_xid, ids.new_rrpid, ids.new_challenge) for _ in range(50)}
    assert len(values) == 150
    assert all(len(v) == 32 for v in values)
    assert len(ids.new_lid()) == 16 and ids.new_lid() != ids.new_lid()


def test_clocks_and_date_check() -> None:
    clock = ids.FixedClock(NOW_MS)
    assert isinstance(clock, ids.Clock) and isinstance(ids.SystemClock(), ids.Clock)
    clock.advance(5)
    assert clock.now_ms() == NOW_MS + 5
    assert abs(ids.SystemClock().now_ms() - ids.SystemClock().now_ms()) < 1_000
    ids.check_date(NOW_MS, NOW_MS, 0)
    with pytest.raises(ProtocolError) as info:
        ids.check_date(NOW_MS - 1, NOW_MS, 0)
    assert info.value.code is ErrorCode.MESSAGE_TOO_OLD
    with pytest.raises(ProtocolError) as info:
        ids.check_date(NOW_MS + 1, NOW_MS, 0)
    assert info.value.code is ErrorCode.MESSAGE_TOO_NEW


FORBIDDEN = {"asyncio", "aio_pika", "aiormq", "pkcs11", "PyKCS11", "socket", "sqlite3", "aiosqlite"}


def test_protocol_imports_no_io_modules() -> None:
    """protocol/ stays sans-I/O: no file imports an event loop, broker, HSM, socket or DB."""
    root = pathlib.Path(__file__).resolve().parents[2] / "protocol"
    files = sorted(root.rglob("*.py"))
    assert len(files) >= 8
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []
