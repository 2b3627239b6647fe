"""The correlated request/reply link every party uses to reach another party.

Rule 1: a request is published on the SET exchange to routing key ``target`` (a role's shared
queue, e.g. ``ca``, or one instance, ``merchant.pos1``) with ``reply_to`` = this link's inbox
(``broker.inbox``: an exclusive queue only this process reads) and a fresh correlation id; the
reply is taken from the inbox by that correlation id, within a deadline (``TimeoutError``
otherwise).
Rule 2: a reply is taken only from the party addressed: its broker-validated login must be of
the target's role (the unit the broker's permissions grant; several processes and instance
names may serve under one login). A reply from anyone else, or nobody waits for (late,
foreign), is dropped with a log line; it never reaches a request.
Rule 3: the link moves bytes and knows nothing of SET: callers wrap and check messages
(``protocol.requester``, the parties' own checks). ``record=True`` keeps a copy of every body
sent and received in ``traffic`` (tests look for secrets in it).
Rule 4: a reply lost with the inbox's channel (its broker node went away: inbox Rule 4) is
asked for again: the same message (ids and bytes) is published once the inbox consumes
again, within the same deadline. Every SET receiver answers a request it has seen from its
reply store, so a resend never has a second effect.
"""

from __future__ import annotations

import asyncio

from broker.connection import Bus
from broker.errors import ReplyLost
from broker.inbox import Accept, Inbox
from broker.topology import SET_EXCHANGE, ensure_exchange
from setpay.logs import get_logger

log = get_logger(component="peer")


class PeerLink:
    """Sends requests to ``target`` (or any routing key per call) and awaits their replies.

    ``role`` and ``instance`` name the link in logs (e.g. ``merchant``, ``pos1-gw``)."""

    def __init__(
        self,
        bus: Bus,
        role: str,
        instance: str,
        *,
        target: str = "ca",
        timeout: float = 15.0,
        record: bool = False,
    ) -> None:
        self.bus = bus
        self.role = role
        self.instance = instance
        self.target = target
        self.timeout = timeout
        self.record = record
        self.traffic: list[bytes] = []
        self._inbox: Inbox | None = None

    async def start(self) -> PeerLink:
        """Open this link's inbox (Rule 1)."""
        await ensure_exchange(await self.bus.channel(confirms=False), SET_EXCHANGE)
        self._inbox = await Inbox(self.bus, SET_EXCHANGE).start()
        return self

    async def close(self) -> None:
        if self._inbox is not None:
            self._inbox.fail_all(ConnectionError(f"peer link {self.role}.{self.instance} closed"))

    def expected(self, target: str) -> Accept:
        """Whether a reply's login is of the role ``target`` addresses (Rule 2)."""
        role = target.partition(".")[0]

        def accept(login: str | None) -> bool:
            return self.bus.role_of(login) == role

        return accept

    async def request_raw(
        self, msg_type: str, data: bytes, *, target: str | None = None
    ) -> tuple[str, bytes]:
        """Send ``data`` as AMQP type ``msg_type``; (reply type, reply bytes)."""
        if self._inbox is None:
            raise RuntimeError("PeerLink.start() was not awaited")
        inbox, target = self._inbox, target or self.target
        correlation, message_id = self.bus.new_id(), self.bus.new_id()
        if self.record:
            self.traffic.append(data)
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    future = inbox.expect(correlation, self.expected(target), report_loss=True)
                    message = self.bus.message(  # to the inbox's current key (inbox Rule 4)
                        data, msg_type=msg_type, message_id=message_id,
                        correlation_id=correlation, reply_to=inbox.key,
                    )  # fmt: skip
                    await self.bus.publish(target, message, exchange=SET_EXCHANGE)
                    try:
                        reply = await future
                        break
                    except ReplyLost:  # Rule 4: the same request again once replies can come
                        log.info("peer_resend", target=target, msg_type=msg_type)
                        await inbox.ready()
        finally:
            inbox.forget(correlation)
        if self.record:
            self.traffic.append(reply.body)
        return reply.type or "", reply.body

    async def request(self, target: str, msg_type: str, data: bytes) -> tuple[str, bytes]:
        """``request_raw`` to an explicit ``target`` (a merchant instance, another role)."""
        return await self.request_raw(msg_type, data, target=target)
