"""The broker over TLS end to end (a node of the tests' own that listens only on AMQPS,
tests/fixtures_rabbit_node.py): an ``amqps://`` base URL keeps its scheme and its options
(``cafile``) in every per-identity URL made from it, an identity's login goes over TLS and
carries confirmed, consumed traffic, and a client that does not trust the node's CA is refused."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import msgpack
import pytest

from broker.connection import connect
from broker.consumer import Delivery, consume
from broker.credentials import CredentialStore, amqp_url, credentials_path
from broker.errors import BrokerError
from broker.topology import SET_EXCHANGE, declare_actor
from setpay.config import login_url
from tests.fixtures_rabbit_node import Node, start_node

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_login_urls_keep_scheme_port_and_options() -> None:
    base = "amqps://ignored:x@broker.example:5671/old?cafile=%2Fetc%2Fca.pem&heartbeat=30"
    assert login_url(base, "merchant.pos1", "p@ss/word", "setpay") == (
        "amqps://merchant.pos1:p%40ss%2Fword@broker.example:5671/setpay"
        "?cafile=%2Fetc%2Fca.pem&heartbeat=30")
    assert login_url("amqp://[::1]:5672/", "u", "p", "a/b") == "amqp://u:p@[::1]:5672/a%2Fb"
    assert login_url("", "u", "p", "v") == "amqp://u:p@127.0.0.1/v"


@pytest.fixture(scope="module")
def tls_node() -> Iterator[Node]:
    node = start_node(tls_listener=True)
    try:
        yield node
    finally:
        node.stop()


async def test_an_identity_talks_over_tls_with_the_options_of_the_base_url(
    tls_node: Node, tmp_path: Path,
) -> None:
    assert tls_node.ca is not None
    user, vhost = "merchant.pos1", "setpay-tls"
    password, _ = CredentialStore(credentials_path(tmp_path)).ensure(user)  # as `broker init`
    tls_node.ctl("add_vhost", vhost)
    tls_node.ctl("add_user", user, stdin=password + "\n")  # never on a command line
    tls_node.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    base = f"amqps://127.0.0.1:{tls_node.port}/?cafile={quote(str(tls_node.ca), safe='')}"
    url = amqp_url(tmp_path, user, vhost, base)  # the per-identity URL, as the supervisor makes
    assert url.startswith("amqps://") and "cafile=" in url
    bus = await connect(url, name="t")
    try:
        role = f"r{uuid.uuid4().hex[:6]}"
        await declare_actor(await bus.channel(), role, "main", passive=False)
        got: list[int] = []
        done = asyncio.Event()

        async def handler(delivery: Delivery) -> None:
            got.append(msgpack.unpackb(delivery.body)["n"])
            if len(got) == 50:
                done.set()

        consumer = await consume(bus, f"set.{role}", handler)
        try:
            await asyncio.gather(*(bus.publish(role, bus.message(msgpack.packb({"n": n})),
                                               exchange=SET_EXCHANGE) for n in range(50)))
            await asyncio.wait_for(done.wait(), 30)
        finally:
            await consumer.stop()
        assert sorted(got) == list(range(50))
    finally:
        await bus.close()


async def test_a_client_that_does_not_trust_the_nodes_ca_is_refused(
    tls_node: Node, tmp_path: Path,
) -> None:
    from actors.web import tls
    from setpay.config import Settings

    other = Settings(data_dir=tmp_path)
    tls.ensure_test_certificate(other)  # another test CA
    stranger = quote(str(tls.ca_file(other)), safe="")
    with pytest.raises(BrokerError, match="cannot connect"):
        await connect(f"amqps://guest:guest@127.0.0.1:{tls_node.port}/?cafile={stranger}",
                      name="t")
    with pytest.raises(BrokerError, match="cannot connect"):  # no plain listener at all
        await connect(f"amqp://guest:guest@127.0.0.1:{tls_node.port}/", name="t")
