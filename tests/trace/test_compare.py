"""The regression replay's comparison (actors/trace/compare.py) on wrappers built here.

Rule 1: the same bytes never differ; a date never differs (normalised); an id the responder
made fresh differs only if the request carried it (an echo that changed); a type or an Error
code that changed is named by field.
"""

from __future__ import annotations

import asyncio
import secrets

from actors.trace.compare import compare, leaves
from protocol import codec
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import MessageType as M
from protocol.set_error import build_error
from protocol.wrapper import MessageWrapper, make_header


def wrap(t: M, date: int, xid: bytes, rrpid: bytes, body: bytes = b"\x90") -> bytes:
    return codec.encode(MessageWrapper(make_header(date, xid=xid, rrpid=rrpid), t, body, []))


def test_the_rules() -> None:
    xid, rrpid = secrets.token_bytes(32), secrets.token_bytes(32)
    request = wrap(M.AUTH_REQ, 1_000, xid, rrpid)
    answer = wrap(M.AUTH_RES, 2_000, xid, rrpid)
    assert compare(answer, answer, request) == []
    assert compare(answer, wrap(M.AUTH_RES, 9_999, xid, rrpid), request) == []  # date
    # an XID the responder drew (not in the request): both fresh, no difference
    pinit = wrap(M.PINIT_REQ, 1_000, secrets.token_bytes(32), rrpid)
    one = wrap(M.PINIT_RES, 2_000, secrets.token_bytes(32), rrpid)
    two = wrap(M.PINIT_RES, 2_000, secrets.token_bytes(32), rrpid)
    assert compare(one, two, pinit) == []
    # an echoed XID that changed is a difference
    other = wrap(M.AUTH_RES, 2_000, secrets.token_bytes(32), rrpid)
    assert [d.path for d in compare(answer, other, request)] == ["header.xid"]
    refused = asyncio.run(build_error(ProtocolError(ErrorCode.MESSAGE_TOO_OLD, "x"), request,
                                      2_000))  # fmt: skip
    found = {d.path: d for d in compare(answer, refused, request)}
    assert found["type"].recorded == "AUTH_RES" and found["type"].replayed == "ERROR"
    assert found["error.code"].replayed == "MESSAGE_TOO_OLD"
    assert {leaf.path for leaf in leaves(refused)} >= {"error.refused.xid", "error.code"}
