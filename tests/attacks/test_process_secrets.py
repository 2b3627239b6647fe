"""Each process holds only its own secrets, in a running throw-away environment (`setpay demo`).

The insider here holds one party's process: its environment (what /proc/<pid>/environ shows
anyone who can ptrace it, or a core dump) and the files its OS user can read. Before: every
child inherited the operator's whole environment (admin password, token PIN, SOFTHSM2_CONF),
the token PIN was the fixed default 1234, and data files and logs were created 0644.
Now (actors/supervisor.py Rule 5, keystore/token.py Rules 3-4, cli/main.py Rule 4):

Rule 1: no file or directory under the data dir is readable by group or others.
Rule 2: each child's environment holds its own broker login only: no other identity's
password, not the admin's, no config file to read them from; with every value it holds, no
other identity (nor the admin) can log in to the broker.
Rule 3: only the keystore (and its workers) hold the token PIN and ``SOFTHSM2_CONF``; nobody
holds the SO PIN; the PINs were generated at `keystore init` (not the old defaults), are kept
0600, and no command prints them.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import aiormq.exceptions
import pytest

from broker import admin
from keystore.token import LEGACY_PINS, pins_path
from setpay.config import load
from tests.ops.environments import Env, alive, new_env, remove_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A full environment brought up and exercised by `setpay demo`, left running. Its broker
    admin is its own (prefixed, random password), not the machine's well-known guest/guest."""
    prefix = f"t{secrets.token_hex(3)}-"
    admin_user, admin_password = f"{prefix}admin", secrets.token_urlsafe(18)
    env = new_env(tmp_path_factory.mktemp("secrets-var"), "secrets",
                  SETPAY_BROKER_USER_PREFIX=prefix, SETPAY_BROKER_ADMIN_USER=admin_user,
                  SETPAY_BROKER_ADMIN_PASSWORD=admin_password)  # fmt: skip
    try:
        admin.create_vhost(env.vhost)  # `broker init` grants the admin user the vhost
        admin.add_user(admin_user, admin_password, tags=("administrator",))  # the API's
        admin.set_permissions(env.vhost, admin_user, ".*", ".*", ".*")
        demo = env.setpay("demo", timeout=600)
        assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
        yield env
    finally:
        remove_env(env)


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _children(env: Env) -> dict[str, int]:
    """Every process the supervisor started (identity -> pid), and the keystore's workers
    (``keystore.main/<pid>``): each one the insider might hold."""
    found = {name: pid for name, pid in env.recorded_pids().items()
             if name != "supervisor" and alive(pid)}  # fmt: skip
    assert {"keystore.main", "ca.main", "gateway.pg1", "issuer.host1", "merchant.pos1",
            "wallet.main"} <= set(found), found  # fmt: skip
    workers = [int(p.name) for p in Path("/proc").iterdir()
               if p.name.isdigit() and _ppid(int(p.name)) == found["keystore.main"]]  # fmt: skip
    assert workers, "the keystore runs no worker process"
    found.update({f"keystore.main/{pid}": pid for pid in workers if alive(pid)})
    return found


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {k: v for k, _, v in pairs}


def _passwords(env: Env) -> dict[str, str]:
    """This environment's identities' broker passwords (the operator may read them)."""
    stored = json.loads((env.data_dir / "broker" / "credentials.json").read_text())
    return {user[len(env.prefix):]: pw for user, pw in stored.items()
            if user.startswith(env.prefix)}  # fmt: skip


def test_no_file_under_the_data_dir_is_readable_by_group_or_others(env: Env) -> None:
    offenders = []
    for root, dirs, files in os.walk(env.data_dir):
        for name in [".", *dirs, *files]:
            path = Path(root) / name
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:  # a temporary file renamed meanwhile
                continue
            if not stat.S_ISLNK(mode) and mode & 0o077:
                offenders.append(f"{oct(stat.S_IMODE(mode))} {path.relative_to(env.data_dir)}")
    # The walk saw what matters: logs, pid/health files, credentials, token, CA, stores.
    seen = {p.relative_to(env.data_dir).parts[0] for p in env.data_dir.iterdir()}
    assert {"run", "broker", "tokens", "keystore", "ca"} <= seen, seen
    assert not offenders, "group/world-accessible:\n" + "\n".join(sorted(offenders))


def test_each_child_holds_only_its_own_broker_login(env: Env) -> None:
    passwords = _passwords(env)
    admin_password = load(env.vars).broker_admin_password
    for name, pid in _children(env).items():
        identity = name.partition("/")[0]
        environ = _environ(pid)
        blob = "\0".join(f"{k}={v}" for k, v in environ.items())
        url = urlsplit(environ["SETPAY_AMQP_URL"])
        assert unquote(url.username or "") == env.prefix + identity, name
        assert unquote(url.password or "") == passwords[identity], name
        others = [other for other, pw in passwords.items() if other != identity and pw in blob]
        assert not others, f"{name} holds the broker passwords of {others}"
        assert "SETPAY_BROKER_ADMIN_PASSWORD" not in environ, name
        admin_in = [k for k, v in environ.items()
                    if v == admin_password or f":{admin_password}@" in v]  # fmt: skip
        assert not admin_in, f"{name} holds the admin password in {admin_in}"
        # A config file may hold any secret: a child reads none (SETPAY_CONFIG empty).
        assert environ.get("SETPAY_CONFIG") == "", name


async def test_what_the_merchant_holds_opens_no_other_login(env: Env) -> None:
    """The insider with the merchant process tries every value of its environment (and every
    URL password in it) as the password of every other identity and of the admin."""
    merchant = _environ(_children(env)["merchant.pos1"])
    candidates = set(merchant.values())
    candidates |= {unquote(urlsplit(v).password or "") for v in merchant.values() if "@" in v}
    candidates = {c for c in candidates if c and len(c) < 200}
    targets = [env.prefix + i for i in _passwords(env) if i != "merchant.pos1"]
    targets.append(load(env.vars).broker_admin_user)
    base = urlsplit(load(env.vars).amqp_url)
    opened = []
    for user in targets:
        for password in candidates:
            auth = f"{quote(user, safe='')}:{quote(password, safe='')}"
            url = f"amqp://{auth}@{base.hostname}:{base.port or 5672}/{quote(env.vhost, safe='')}"
            try:
                connection = await aio_pika.connect(url, timeout=5)
            except (aiormq.exceptions.AMQPError, ConnectionError, ValueError, OSError):
                continue
            await connection.close()
            opened.append(user)
    assert not opened, f"the merchant's environment logs in as {opened}"


def test_only_the_keystore_holds_the_token_pin(env: Env) -> None:
    pins = json.loads(pins_path(load(env.vars)).read_text())
    for name, pid in _children(env).items():
        environ = _environ(pid)
        blob = "\0".join(f"{k}={v}" for k, v in environ.items())
        assert pins["so_pin"] not in blob, f"{name} holds the SO PIN"
        if name.startswith("keystore.main"):
            assert environ.get("SETPAY_KEYSTORE_PIN") == pins["pin"], name
            assert "SOFTHSM2_CONF" in environ, name
        else:
            assert pins["pin"] not in blob, f"{name} holds the token PIN"
            assert "SOFTHSM2_CONF" not in environ, f"{name} knows where the token lives"


def test_the_token_pins_were_generated_and_are_never_printed(env: Env) -> None:
    path = pins_path(load(env.vars))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    pins = json.loads(path.read_text())
    assert pins["pin"] != LEGACY_PINS.pin and pins["so_pin"] != LEGACY_PINS.so_pin
    assert len(pins["pin"]) >= 16 and len(pins["so_pin"]) >= 16
    again = env.setpay("keystore", "init")  # idempotent: keeps the token and its PINs
    shown = env.setpay("config")
    assert again.returncode == 0 and shown.returncode == 0, again.stderr + shown.stderr
    assert json.loads(path.read_text()) == pins
    for out in (again.stdout + again.stderr, shown.stdout + shown.stderr):
        assert pins["pin"] not in out and pins["so_pin"] not in out
    logs = "".join(p.read_text(errors="replace") for p in env.run_dir.glob("*.log"))
    assert pins["pin"] not in logs and pins["so_pin"] not in logs
