"""The ``echo`` role: a health-check actor that answers ``Echo`` with its body.

Rule 1: it exists to prove the runtime and the supervisor end to end (a real separate
process on the real broker); it holds no state and no secrets.
"""

from __future__ import annotations

from pathlib import Path

from actors.runtime import Actor, Reply
from broker.consumer import Delivery
from protocol.errors import ErrorCode, ProtocolError
from setpay.config import Settings


class EchoActor(Actor):
    """Replies ``EchoReply`` with the request body; ``Fail`` answers a SET Error."""

    async def setup(self) -> None:
        self.on("Echo", self.echo)
        self.on("Fail", self.fail)

    async def echo(self, delivery: Delivery) -> Reply:
        return "EchoReply", delivery.body

    async def fail(self, delivery: Delivery) -> Reply:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "fail on purpose")


def main(settings: Settings, instance: str, health_file: Path | None = None) -> Actor:
    """Factory used by ``setpay run echo``."""
    return EchoActor(
        "echo",
        instance,
        settings.amqp_url,
        prefetch=settings.broker_prefetch,
        health_file=health_file,
    )
