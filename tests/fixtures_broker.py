"""pytest fixtures for tests against the real RabbitMQ.

Rule 1: every test session works in its own vhost ``setpay-test-<hex>``; users it creates get
a unique prefix, so parallel runs of several engineers never clash.
Rule 2: the vhost and every user created through it are deleted at the end, even on failure.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from broker import admin

HOST = "127.0.0.1:5672"


def amqp_url(user: str, password: str, vhost: str) -> str:
    """The AMQP URL for ``user`` on ``vhost`` at the local broker (all parts percent-quoted)."""
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return f"amqp://{auth}@{HOST}/{quote(vhost, safe='')}"


class UserUrl(str):
    """An AMQP URL (a ``str``) that also names the real broker user and its password."""

    user: str
    password: str

    def __new__(cls, url: str, user: str, password: str) -> UserUrl:
        obj = super().__new__(cls, url)
        obj.user = user
        obj.password = password
        return obj

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        # spawned processes receive it pickled
        return (UserUrl, (str(self), self.user, self.password))


class BrokerVhost:
    """A throw-away vhost; ``add_user`` creates uniquely named users limited to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = amqp_url("guest", "guest", name)
        self.prefix = f"t{secrets.token_hex(3)}-"
        self.users: list[str] = []

    def add_user(
        self,
        name: str,
        password: str,
        configure: str = ".*",
        write: str = ".*",
        read: str = ".*",
    ) -> UserUrl:
        """Create user ``<prefix><name>`` with these permission patterns; return its URL."""
        user = self.prefix + name
        self.users.append(user)
        admin.add_user(user, password)
        admin.set_permissions(self.name, user, configure, write, read)
        return UserUrl(amqp_url(user, password, self.name), user, password)

    def cleanup(self) -> None:
        """Delete every user created here, then the vhost."""
        errors: list[Exception] = []
        for user in self.users:
            try:
                admin.delete_user(user)
            except admin.AdminError as exc:
                errors.append(exc)
        self.users.clear()
        admin.delete_vhost(self.name)
        if errors:
            raise errors[0]


def make_vhost() -> BrokerVhost:
    """Create a fresh vhost with full permissions for guest."""
    vhost = BrokerVhost(f"setpay-test-{secrets.token_hex(6)}")
    admin.create_vhost(vhost.name)
    try:
        admin.set_permissions(vhost.name, "guest", ".*", ".*", ".*")
    except Exception:
        admin.delete_vhost(vhost.name)
        raise
    return vhost


@pytest.fixture(scope="session")
def broker_vhost() -> Iterator[BrokerVhost]:
    """A unique vhost for the session (``.name``, ``.url``, ``.add_user``), removed at the end."""
    vhost = make_vhost()
    try:
        yield vhost
    finally:
        vhost.cleanup()
