"""Synchronous broker administration through ``rabbitmqctl``: vhosts, users, permissions, policies.

Rule 1: passwords travel on the subprocess's stdin, never on its command line (visible in
``ps``) and never in error texts or logs.
Rule 2: creating is idempotent (an existing vhost is kept, an existing user gets the new
password); deleting what does not exist is not an error.
Rule 3: every failure raises ``AdminError`` naming the command and rabbitmqctl's complaint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from broker.errors import AdminError

# rabbitmqctl exit codes (sysexits): 65 data error, 67 no such user/vhost, 70 already exists.
_NOT_FOUND = 67
_EXISTS = 70


def rabbitmqctl_path() -> str:
    """The rabbitmqctl binary: ``$SETPAY_RABBITMQCTL``, else the one on PATH or in /usr/sbin."""
    explicit = os.environ.get("SETPAY_RABBITMQCTL")
    if explicit:
        return explicit
    return shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"


def _ctl(
    args: Sequence[str],
    *,
    stdin: str | None = None,
    ok: Sequence[int] = (),
    absent_ok: bool = False,
) -> subprocess.CompletedProcess[str]:
    command = [rabbitmqctl_path(), "--quiet", *args]
    try:
        done = subprocess.run(  # noqa: S603 - fixed binary, argument list, no shell
            command, input=stdin, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AdminError(f"rabbitmqctl {args[0]} could not run ({type(exc).__name__})") from exc
    if done.returncode != 0 and done.returncode not in ok and not (
        absent_ok and "does not exist" in done.stderr + done.stdout
    ):
        why = (done.stderr or done.stdout).strip().splitlines()
        raise AdminError(f"rabbitmqctl {args[0]} failed ({done.returncode}): {' '.join(why)[:300]}")
    return done


def create_vhost(name: str) -> None:
    """Create vhost ``name`` (kept if it exists)."""
    _ctl(["add_vhost", name])


def delete_vhost(name: str) -> None:
    """Delete vhost ``name`` and everything in it (no error if absent)."""
    _ctl(["delete_vhost", name], ok=(_NOT_FOUND,), absent_ok=True)


def add_user(name: str, password: str, tags: Sequence[str] = ()) -> None:
    """Create user ``name`` with ``password`` (an existing user gets the new password)."""
    done = _ctl(["add_user", name], stdin=password + "\n", ok=(_EXISTS,))
    if done.returncode == _EXISTS:
        _ctl(["change_password", name], stdin=password + "\n")
    _ctl(["set_user_tags", name, *tags])


def delete_user(name: str) -> None:
    """Delete user ``name`` (no error if absent)."""
    _ctl(["delete_user", name], ok=(_NOT_FOUND,), absent_ok=True)


def set_permissions(vhost: str, user: str, configure: str, write: str, read: str) -> None:
    """Grant ``user`` on ``vhost`` the configure/write/read regular expressions given."""
    _ctl(["set_permissions", "--vhost", vhost, user, configure, write, read])


def set_topic_permissions(vhost: str, user: str, exchange: str, write: str, read: str) -> None:
    """Limit the routing keys ``user`` may publish (``write``) and bind (``read``) on the topic
    exchange ``exchange`` of ``vhost`` to those matching the regular expressions given."""
    _ctl(["set_topic_permissions", "--vhost", vhost, user, exchange, write, read])


def list_topic_permissions(vhost: str) -> dict[tuple[str, str], tuple[str, str]]:
    """``(user, exchange) -> (write, read)`` on ``vhost``."""
    return {
        (row["user"], row["exchange"]): (row["write"], row["read"])
        for row in _json_rows(["list_topic_permissions", "--vhost", vhost])
    }


def set_policy(
    vhost: str,
    name: str,
    pattern: str,
    definition: Mapping[str, Any],
    *,
    apply_to: str = "queues",
    priority: int = 0,
) -> None:
    """Create or replace policy ``name`` on ``vhost`` for entities matching ``pattern``."""
    _ctl(
        [
            "set_policy",
            "--vhost",
            vhost,
            "--apply-to",
            apply_to,
            "--priority",
            str(priority),
            name,
            pattern,
            json.dumps(dict(definition)),
        ]
    )


def clear_policy(vhost: str, name: str) -> None:
    """Remove policy ``name`` from ``vhost`` (no error if absent)."""
    _ctl(["clear_policy", "--vhost", vhost, name], ok=(_NOT_FOUND,), absent_ok=True)


def authenticate(name: str, password: str) -> bool:
    """Whether ``name`` exists and ``password`` is its password (checked by the broker)."""
    done = _ctl(["authenticate_user", name], stdin=password + "\n", ok=(65, _NOT_FOUND))
    return done.returncode == 0


def change_password(name: str, password: str) -> None:
    """Give the existing user ``name`` the new ``password``."""
    _ctl(["change_password", name], stdin=password + "\n")


def _json_rows(args: Sequence[str]) -> list[dict[str, Any]]:
    out = _ctl([*args, "--formatter", "json"]).stdout.strip()
    try:
        rows = json.loads(out or "[]")
    except json.JSONDecodeError as exc:
        raise AdminError(f"rabbitmqctl {args[0]} printed no JSON") from exc
    return [row for row in rows if isinstance(row, dict)]


def list_permissions(vhost: str) -> dict[str, tuple[str, str, str]]:
    """``user -> (configure, write, read)`` on ``vhost``."""
    return {
        row["user"]: (row["configure"], row["write"], row["read"])
        for row in _json_rows(["list_permissions", "--vhost", vhost])
    }


def list_policies(vhost: str) -> dict[str, dict[str, Any]]:
    """``name -> {pattern, apply-to, priority, definition}`` of the policies on ``vhost``."""
    policies: dict[str, dict[str, Any]] = {}
    for row in _json_rows(["list_policies", "--vhost", vhost]):
        definition = row.get("definition")
        if isinstance(definition, str):
            definition = json.loads(definition)
        policies[row["name"]] = {
            "pattern": row["pattern"],
            "apply-to": row["apply-to"],
            "priority": int(row["priority"]),
            "definition": definition,
        }
    return policies


def list_names(kind: str, vhost: str) -> set[str]:
    """Names of the ``kind`` ("queues" or "exchanges") that exist on ``vhost``."""
    return {row["name"] for row in _json_rows([f"list_{kind}", "--vhost", vhost, "name"])}


def list_users() -> list[str]:
    """Names of all broker users."""
    out = _ctl(["list_users", "--no-table-headers"]).stdout
    return [line.split("\t", 1)[0] for line in out.splitlines() if line.strip()]


def list_vhosts() -> list[str]:
    """Names of all vhosts."""
    out = _ctl(["list_vhosts", "--no-table-headers"]).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def stop_app() -> None:
    """Stop the RabbitMQ application (the Erlang node keeps running); for restart tests."""
    _ctl(["stop_app"])


def start_app() -> None:
    """Start the RabbitMQ application again after ``stop_app``."""
    _ctl(["start_app"])
