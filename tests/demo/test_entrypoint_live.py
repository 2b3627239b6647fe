"""The one SET entrypoint, at every party of the live environment: a message whose AMQP type
disagrees with the type inside its wrapper gets the same SET Error (``wrapperMsgMismatch``)
from the CA, the merchant POS and the gateway, each the one ``Error`` record read by the one
reader (``protocol.set_error``); the same message under its own type reaches the party's
handler (a different, handler-specific answer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.connection import connect
from broker.peer import PeerLink
from broker.provision import identity_url
from protocol import ids
from protocol.errors import ErrorCode
from protocol.messages import AccountKind, MessageType, PInitReq
from protocol.set_error import ERROR_TYPE, RemoteError, expect_reply
from protocol.wrapper import amqp_type, encode_message, make_header
from setpay.config import load

pytestmark = pytest.mark.integration

# Each party, and the identity whose real login may address it on the bus.
PARTIES = {"ca": "wallet.main", "merchant.pos1": "wallet.main", "gateway.pg1": "merchant.pos1"}


def _pinit() -> bytes:
    """A well-formed PInitReq naming an order no merchant has."""
    rrpid, lid_c, lid_m = ids.new_rrpid(), ids.new_lid(), ids.new_lid()
    body = PInitReq(rrpid, "en", lid_c, lid_m, ids.new_challenge(), "alpha", "400000",
                    AccountKind.CARD, [])  # fmt: skip
    header = make_header(ids.SystemClock().now_ms(), rrpid=rrpid, lid_c=lid_c, lid_m=lid_m)
    return encode_message(header, body)


async def test_amqp_type_disagreeing_with_the_wrapper_gets_one_error_everywhere(
    demo_run: tuple[Path, str], demo_env: dict[str, str]
) -> None:
    settings = load(demo_env)
    buses, links = {}, {}
    for login in set(PARTIES.values()):
        url = identity_url(settings.data_dir, login, settings.broker_vhost, settings.amqp_url,
                           user_prefix=settings.broker_user_prefix)  # fmt: skip
        buses[login] = await connect(url, name=login)
        links[login] = await PeerLink(buses[login], *login.split("."), timeout=30.0).start()
    try:
        codes = {}
        for party, login in PARTIES.items():
            reply_type, reply = await links[login].request(
                party, amqp_type(MessageType.INQ_REQ), _pinit()
            )
            assert reply_type == ERROR_TYPE
            with pytest.raises(RemoteError) as refused:
                expect_reply(reply, ids.SystemClock().now_ms(), PInitReq, who=party)
            codes[party] = refused.value.code
        assert set(codes.values()) == {ErrorCode.WRAPPER_MSG_MISMATCH}, codes
        # Under its own type the PInitReq passes the entrypoint: the POS looks up the order.
        _, reply = await links["wallet.main"].request(
            "merchant.pos1", amqp_type(MessageType.PINIT_REQ), _pinit()
        )
        with pytest.raises(RemoteError) as refused:
            expect_reply(reply, ids.SystemClock().now_ms(), PInitReq, who="merchant")
        assert refused.value.code is ErrorCode.UNKNOWN_LID
    finally:
        for link in links.values():
            await link.close()
        for bus in buses.values():
            await bus.close()
