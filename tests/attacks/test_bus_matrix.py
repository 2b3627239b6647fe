"""Least privilege on the bus, attacked with every identity's real broker login.

The vhost is provisioned by `broker init` from deploy/rabbitmq/definitions.toml. Each login
then tries what an insider holding it would: write into every other party's queues (through
the default exchange and through the SET and RPC exchanges), write reply keys into other
logins' inboxes, bind to other logins' reply keys or to everything, read every queue that is
not its own, read the dead letters. The expected matrix is written out here, independently of
the definitions, from who may talk to whom in SET: anything else the broker must refuse.
Forged replies that do get through the broker (from a login allowed to answer somebody) are
dropped by the waiting party (tests at the end).
"""

from __future__ import annotations

import asyncio
import secrets

import aio_pika
import aiormq
import pytest

from broker import admin
from broker.connection import connect
from broker.peer import PeerLink
from broker.provision import identity_url, init
from broker.rpc import RpcClient, RpcRequest, serve_rpc
from broker.topology import DEAD_LETTER_EXCHANGE, RPC_EXCHANGE, SET_EXCHANGE, TRACE_EXCHANGE

pytestmark = pytest.mark.integration

BASE = "amqp://guest:guest@127.0.0.1:5672/"
LOGINS = ("wallet.main", "merchant.pos1", "gateway.pg1", "ca.main", "issuer.host1",
          "keystore.main", "operator.main")  # fmt: skip
ROLE_KEYS = ("wallet", "wallet.main", "merchant", "merchant.pos1", "gateway", "gateway.pg1",
             "ca", "ca.main", "issuer", "keystore", "operator")  # fmt: skip
# SET requests: who may address whom (the only routing keys a login may publish requests to).
ADDRESSES = {"wallet": {"merchant", "ca"}, "merchant": {"gateway", "ca"}, "gateway": {"ca"}}
# SET replies: whose inboxes a login may answer into.
ANSWERS = {"merchant": {"wallet"}, "gateway": {"merchant"}, "ca": {"wallet", "merchant", "gateway"}}
QUEUES = ("set.wallet", "set.wallet.main", "set.merchant", "set.merchant.pos1", "set.gateway",
          "set.gateway.pg1", "set.ca", "set.ca.main", "keystore.rpc", "setpay.dead")  # fmt: skip
OWN_QUEUES = {"wallet": {"set.wallet", "set.wallet.main"},
              "merchant": {"set.merchant", "set.merchant.pos1"},
              "gateway": {"set.gateway", "set.gateway.pg1"}, "ca": {"set.ca", "set.ca.main"},
              "keystore": {"keystore.rpc"}, "operator": {"setpay.dead"}}  # fmt: skip


@pytest.fixture(scope="module")
def bus_env(tmp_path_factory):
    vhost = f"setpay-test-matrix-{secrets.token_hex(4)}"
    prefix = f"t{secrets.token_hex(3)}-"
    data_dir = tmp_path_factory.mktemp("matrix")
    try:
        asyncio.run(init(vhost=vhost, data_dir=data_dir, base_url=BASE, admin_user="guest",
                         admin_password="guest", user_prefix=prefix))  # fmt: skip
        yield vhost, prefix, data_dir
    finally:
        for name in LOGINS:
            admin.delete_user(prefix + name)
        admin.delete_vhost(vhost)


def url(bus_env, identity: str) -> str:
    vhost, prefix, data_dir = bus_env
    return identity_url(data_dir, identity, vhost, BASE, user_prefix=prefix)


async def _allowed(connection: aio_pika.abc.AbstractConnection, action) -> bool:
    """Whether ``action(channel)`` succeeds; an access refusal closes only that channel."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        await action(channel)
        return True
    except aiormq.exceptions.ChannelAccessRefused:
        return False
    finally:
        if not channel.is_closed:
            await channel.close()


def _publish(exchange: str, key: str, login: str):
    async def action(channel) -> None:
        target = (channel.default_exchange if exchange == "" else
                  await channel.get_exchange(exchange, ensure=False))  # fmt: skip
        await target.publish(aio_pika.Message(b"attack", user_id=login), key, mandatory=False)
    return action


def _consume(queue: str):
    async def action(channel) -> None:
        declared = await channel.declare_queue(queue, passive=True)
        await declared.consume(lambda message: None)
    return action


def _bind(exchange: str, key: str, login: str):
    async def action(channel) -> None:
        queue = await channel.declare_queue(f"reply.{login}.{secrets.token_hex(4)}",
                                            exclusive=True, auto_delete=True)  # fmt: skip
        await queue.bind(exchange, routing_key=key)
    return action


@pytest.mark.parametrize("identity", LOGINS)
async def test_each_login_reaches_exactly_what_its_role_needs(bus_env, identity) -> None:
    _vhost, prefix, _ = bus_env
    role = identity.split(".")[0]
    login = prefix + identity
    connection = await aio_pika.connect(url(bus_env, identity))
    wrong: list[str] = []
    try:
        # 1. nobody writes through the default exchange, to any queue
        for queue in QUEUES:
            if await _allowed(connection, _publish("", queue, login)):
                wrong.append(f"amq.default -> {queue}")
        # 2. SET requests only to the roles it addresses
        for key in ROLE_KEYS:
            expected = key.split(".")[0] in ADDRESSES.get(role, set())
            if await _allowed(connection, _publish(SET_EXCHANGE, key, login)) != expected:
                wrong.append(f"setpay.set {key}: expected {'allowed' if expected else 'refused'}")
        # 3. SET replies only into inboxes of the roles it answers
        for other in LOGINS:
            key = f"reply.{prefix}{other}.x"
            expected = other.split(".")[0] in ANSWERS.get(role, set())
            if await _allowed(connection, _publish(SET_EXCHANGE, key, login)) != expected:
                wrong.append(f"setpay.set {key}: expected {'allowed' if expected else 'refused'}")
        # 4. RPC: keystore requests from the parties that use keys, replies only from servers
        calls = role in {"wallet", "merchant", "gateway", "ca", "issuer"}
        if await _allowed(connection, _publish(RPC_EXCHANGE, "keystore.rpc", login)) != calls:
            wrong.append(f"setpay.rpc keystore.rpc: expected {'allowed' if calls else 'refused'}")
        forged = f"reply.{prefix}merchant.pos1.x"
        serves = role == "keystore"  # the one RPC server
        if await _allowed(connection, _publish(RPC_EXCHANGE, forged, login)) != serves:
            wrong.append(f"setpay.rpc {forged}: expected {'allowed' if serves else 'refused'}")
        # 5. read only its own queues (operators: the dead letters)
        for queue in QUEUES:
            expected = queue in OWN_QUEUES.get(role, set())
            if await _allowed(connection, _consume(queue)) != expected:
                wrong.append(f"consume {queue}: expected {'allowed' if expected else 'refused'}")
        # 6. bind only its own reply keys: never another login's, never a wildcard
        for exchange in (SET_EXCHANGE, RPC_EXCHANGE):
            if not await _allowed(connection, _bind(exchange, f"reply.{login}.mine", login)):
                wrong.append(f"bind own inbox on {exchange} refused")
            stranger = prefix + ("wallet.main" if identity != "wallet.main" else "ca.main")
            for key in (f"reply.{stranger}.x", f"reply.{login}.#", "#", "reply.#",
                        "merchant.pos1", "keystore.rpc"):
                if await _allowed(connection, _bind(exchange, key, login)):
                    wrong.append(f"bind {exchange} {key}")
        # 7. no binding to the dead-letter exchange or the trace tap but for operators
        for exchange in (DEAD_LETTER_EXCHANGE, TRACE_EXCHANGE):
            expected = role == "operator" and exchange == TRACE_EXCHANGE
            if await _allowed(connection, _bind(exchange, "", login)) != expected:
                wrong.append(f"bind {exchange}: expected {'allowed' if expected else 'refused'}")
        # 8. the broker vouches for the sender: claiming another login is refused
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(SET_EXCHANGE, ensure=False)
        other = prefix + ("ca.main" if identity == "wallet.main" else "wallet.main")
        with pytest.raises((aiormq.exceptions.ChannelPreconditionFailed,
                            aiormq.exceptions.ChannelAccessRefused)):  # fmt: skip
            await exchange.publish(aio_pika.Message(b"x", user_id=other), "ca")
    finally:
        await connection.close()
    assert wrong == [], f"{identity}: {wrong}"


async def test_forged_keystore_reply_is_dropped_even_where_the_broker_lets_it_through(
    bus_env,
) -> None:
    """Only the keystore's login may write RPC replies (the matrix above); were the broker
    misconfigured (here: the admin login, which it lets write anything), the merchant's
    keystore client would still take only the keystore's answer."""
    _vhost, prefix, _ = bus_env
    keystore = await connect(url(bus_env, "keystore.main"), name="keystore.main")
    merchant = await connect(url(bus_env, "merchant.pos1"), name="merchant.pos1")
    wallet = await connect(BASE.rstrip("/") + "/" + bus_env[0], name="admin", prefix=prefix)
    forged_sent = asyncio.Event()

    async def genuine(request: RpcRequest) -> bytes:
        # Before the keystore answers, the attacker (knowing the correlation id and the
        # inbox, which it cannot learn on the bus: the worst case) answers first.
        forged = wallet.message(b"forged verdict", persistent=False,
                                correlation_id=request.correlation_id)  # fmt: skip
        inbox = request.headers["inbox"]
        inbox = inbox.decode() if isinstance(inbox, bytes) else str(inbox)
        await wallet.publish(inbox, forged, exchange=RPC_EXCHANGE,
                             mandatory=False)  # fmt: skip
        forged_sent.set()
        await asyncio.sleep(0.3)
        return b"genuine verdict"

    server = await serve_rpc(keystore, "keystore.rpc", genuine)
    client = await RpcClient.create(
        merchant, accept=lambda login: merchant.role_of(login) == "keystore")
    try:
        inbox = client._inbox  # the test plays the attacker who somehow knows it
        answer = await client.call("keystore.rpc", b"pin_verify", timeout=10,
                                   headers={"inbox": inbox.key})  # fmt: skip
        assert forged_sent.is_set()
        assert answer == b"genuine verdict"
        assert inbox.dropped == 1
    finally:
        await client.close()
        await server.stop()
        for bus in (keystore, merchant, wallet):
            await bus.close()


async def test_forged_gateway_reply_from_the_ca_is_dropped(bus_env) -> None:
    """The CA may answer merchants (registration), so the broker lets it write into a
    merchant's SET inbox; the merchant's link to the gateway takes only the gateway's reply."""
    merchant = await connect(url(bus_env, "merchant.pos1"), name="merchant.pos1")
    gateway = await connect(url(bus_env, "gateway.pg1"), name="gateway.pg1")
    ca = await connect(url(bus_env, "ca.main"), name="ca.main")
    link = await PeerLink(merchant, "merchant", "pos1-gw", target="gateway", timeout=10).start()
    got: asyncio.Queue = asyncio.Queue()
    channel = await gateway.channel(confirms=False)
    queue = await channel.declare_queue("set.gateway", passive=True)

    async def on_request(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()
        if message.body == b"auth":  # not the matrix test's leftovers
            await got.put(message)

    await queue.consume(on_request)
    try:
        request = asyncio.create_task(link.request_raw("AuthReq", b"auth"))
        message = await asyncio.wait_for(got.get(), 10)
        forged = ca.message(b"forged AuthRes", msg_type="AuthRes",
                            correlation_id=message.correlation_id)  # fmt: skip
        await ca.publish(message.reply_to, forged, exchange=SET_EXCHANGE, mandatory=False)
        await asyncio.sleep(0.3)
        genuine = gateway.message(b"genuine AuthRes", msg_type="AuthRes",
                                  correlation_id=message.correlation_id)  # fmt: skip
        await gateway.publish(message.reply_to, genuine, exchange=SET_EXCHANGE)
        assert await asyncio.wait_for(request, 10) == ("AuthRes", b"genuine AuthRes")
        assert message.user_id == merchant.user_id
    finally:
        await link.close()
        for bus in (merchant, gateway, ca):
            await bus.close()
