"""broker/admin.py against the real RabbitMQ: the management HTTP API first, rabbitmqctl only
when the API does not answer; passwords never in error texts."""

from __future__ import annotations

import secrets
import stat
import time
from pathlib import Path

import aio_pika
import aiormq
import pytest

from broker import admin
from broker.errors import AdminError
from tests.fixtures_broker import amqp_url

pytestmark = pytest.mark.integration


@pytest.fixture
def names():
    """A fresh vhost name and user prefix; whatever they name is deleted afterwards."""
    vhost = f"setpay-test-admin-{secrets.token_hex(4)}"
    prefix = f"t{secrets.token_hex(3)}-"
    yield vhost, prefix
    admin.reset()
    for user in admin.list_users():
        if user.startswith(prefix):
            admin.delete_user(user)
    admin.delete_vhost(vhost)


@pytest.fixture
def ctl_log(tmp_path, monkeypatch):
    """rabbitmqctl run through a wrapper that records each subcommand (never its stdin) and
    then execs the real binary: proof of which path a call took."""
    real = admin.rabbitmqctl_path()
    record = tmp_path / "ctl.log"
    wrapper = tmp_path / "rabbitmqctl"
    wrapper.write_text(f'#!/bin/sh\necho "$2" >> {record}\nexec {real} "$@"\n')
    wrapper.chmod(stat.S_IRWXU)
    monkeypatch.setenv("SETPAY_RABBITMQCTL", str(wrapper))
    return record


def ctl_calls(record: Path) -> list[str]:
    return record.read_text().split() if record.exists() else []


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns: nothing listens


async def can_login(user: str, password: str, vhost: str) -> bool:
    try:
        connection = await aio_pika.connect(amqp_url(user, password, vhost))
    except (aiormq.exceptions.ProbableAuthenticationError, ConnectionError,
            aiormq.exceptions.AMQPConnectionError):
        return False
    await connection.close()
    return True


def exercise(vhost: str, prefix: str) -> str:
    """Every public operation once, checked through the listing functions; the user's name."""
    user, password = prefix + "alice", "s3cret-" + secrets.token_hex(8)
    admin.create_vhost(vhost)
    admin.create_vhost(vhost)  # idempotent
    assert vhost in admin.list_vhosts()
    admin.add_user(user, password)
    admin.add_user(user, password)  # idempotent: an existing user keeps being this one
    assert user in admin.list_users()
    assert admin.authenticate(user, password)
    assert not admin.authenticate(user, password + "x")
    assert not admin.authenticate(prefix + "nobody", password)
    admin.set_permissions(vhost, "guest", ".*", ".*", ".*")
    admin.set_permissions(vhost, user, "^own$", "^(own|setpay\\.set)$", "^own$")
    perms = admin.list_permissions(vhost)
    assert perms[user] == ("^own$", "^(own|setpay\\.set)$", "^own$")
    admin.set_topic_permissions(vhost, user, "setpay.set", "^gateway\\..+$", "^reply\\.a$")
    assert admin.list_topic_permissions(vhost)[(user, "setpay.set")] == (
        "^gateway\\..+$", "^reply\\.a$")
    definition = {"max-length-bytes": 1048576, "overflow": "reject-publish"}
    admin.set_policy(vhost, "bounded", "^own$", definition, priority=3)
    assert admin.list_policies(vhost)["bounded"] == {
        "pattern": "^own$", "apply-to": "queues", "priority": 3, "definition": definition}
    admin.clear_policy(vhost, "bounded")
    admin.clear_policy(vhost, "bounded")  # absent: no error
    assert "bounded" not in admin.list_policies(vhost)
    assert "amq.topic" in admin.list_names("exchanges", vhost)
    admin.change_password(user, password + "2")
    assert admin.authenticate(user, password + "2")
    assert not admin.authenticate(user, password)
    return user


async def test_every_operation_through_the_management_api(names, ctl_log):
    vhost, prefix = names
    assert admin.api_answers()
    user = exercise(vhost, prefix)
    assert not await can_login(user, "wrong-" + prefix, vhost)  # the broker refuses it
    admin.change_password(user, "right-" + prefix)
    assert await can_login(user, "right-" + prefix, vhost)  # the broker agrees
    # queues appear in the listing as soon as they are declared
    connection = await aio_pika.connect(amqp_url("guest", "guest", vhost))
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue("own", durable=True)
    assert "own" in admin.list_names("queues", vhost)
    admin.delete_user(user)
    admin.delete_user(user)  # absent: no error
    assert user not in admin.list_users()
    admin.delete_vhost(vhost)
    admin.delete_vhost(vhost)
    assert vhost not in admin.list_vhosts()
    assert ctl_calls(ctl_log) == []  # rabbitmqctl never ran


def test_rabbitmqctl_when_the_api_does_not_answer(names, ctl_log):
    vhost, prefix = names
    admin.configure(f"http://127.0.0.1:{closed_port()}", "guest", "guest")
    assert not admin.api_answers()
    user = exercise(vhost, prefix)
    calls = ctl_calls(ctl_log)
    for sub in ("add_vhost", "add_user", "authenticate_user", "set_permissions",
                "set_topic_permissions", "set_policy", "clear_policy", "list_policies",
                "change_password", "list_exchanges"):
        assert sub in calls, sub
    # what the fallback made, the API sees
    admin.reset()
    assert not admin.authenticate(user, "not-its-password")
    assert vhost in admin.list_vhosts() and user in admin.list_users()


def test_an_answering_api_error_is_not_retried_and_names_no_password(names, ctl_log):
    vhost, prefix = names
    wrong = "adm1n-" + secrets.token_hex(6)
    admin.configure(admin.management_url("amqp://127.0.0.1:5672/"), "guest", wrong)
    with pytest.raises(AdminError) as refused:
        admin.add_user(prefix + "bob", "pw-" + wrong)
    assert "401" in str(refused.value)
    assert wrong not in str(refused.value)
    admin.reset()
    with pytest.raises(AdminError) as missing:
        admin.set_permissions(vhost, "guest", ".*", ".*", ".*")  # the vhost does not exist
    assert "404" in str(missing.value) or "not" in str(missing.value).lower()
    assert ctl_calls(ctl_log) == []


def test_password_hash_check_matches_the_broker(names):
    _vhost, prefix = names
    user = prefix + "hash"
    for password in ("plain", "ünïcödé-" + secrets.token_hex(4)):
        admin.add_user(user, password)
        assert admin.authenticate(user, password)
        assert not admin.authenticate(user, password[:-1])


def test_provisioning_time_through_the_api():
    """The fixtures' provisioning (a vhost, three users with permissions, cleanup) takes well
    under a second through the API (rabbitmqctl: about six seconds on this machine)."""
    from tests.fixtures_broker import make_vhost

    started = time.perf_counter()
    vhost = make_vhost()
    for i in range(3):
        vhost.add_user(f"u{i}", secrets.token_hex(8))
    vhost.cleanup()
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0, elapsed
