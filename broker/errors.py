"""Errors of the broker layer.

Rule 1: every error raised by ``broker`` derives from ``BrokerError``; aio-pika/aiormq errors
are translated at the package boundary.
Rule 2: error texts name queues, exchanges and error types only, never message bodies.
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base of every error the broker layer raises."""


class PublishError(BrokerError):
    """A publish was nacked, returned as unroutable, or not confirmed in time."""


class PublishRefused(PublishError):
    """The broker refused the publish: this login may not write there (a permanent refusal,
    never retried)."""


class RpcTimeout(BrokerError):
    """An RPC got no reply within its deadline although a consumer serves the queue."""


class ReplyLost(BrokerError):
    """The reply could not arrive: the channel or connection the caller's inbox consumed on
    closed while the reply was due (a broker node went away). Whether the request was served
    is unknown; only a request that is safe to repeat may be sent again."""


class PeerUnavailable(BrokerError):
    """The RPC target queue does not exist or has no consumer."""


class RemoteError(BrokerError):
    """The RPC handler raised; the text names the remote error type only."""

    def __init__(self, queue: str, error_type: str) -> None:
        super().__init__(f"RPC handler on {queue!r} failed with {error_type}")
        self.queue = queue
        self.error_type = error_type


class AdminError(BrokerError):
    """A broker administration command (vhost, user, permission, policy) failed."""
