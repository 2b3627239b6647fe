"""Synchronous broker administration: vhosts, users, permissions, topic permissions, policies.

Rule 1: the RabbitMQ management HTTP API (``rabbitmq_management``, 127.0.0.1:15672 by default)
is the primary path: one keep-alive HTTP connection per thread, the admin login from the
configuration (``broker_admin_user``/``broker_admin_password``; the endpoint is
``broker_management_url``, empty: port 15672 on the host of ``amqp_url``). ``rabbitmqctl``
(an Erlang VM per call, one to two seconds) is the fallback, used only when the API does not
answer (nothing listens, or no answer in time); an API that answers with an error is an
``AdminError``, never retried through rabbitmqctl.
Rule 2: passwords travel in request bodies (HTTP) or on the subprocess's stdin (rabbitmqctl),
never in a URL, a command line (visible in ``ps``), an error text or a log line.
``authenticate`` compares with the broker's stored salted hash locally (the API has no
password check for users without management tags); the password itself is never sent.
Rule 3: creating is idempotent (an existing vhost is kept, an existing user gets the new
password); deleting what does not exist is not an error.
Rule 4: every failure raises ``AdminError`` naming the operation and the broker's complaint.
Rule 5: the synchronous functions are called from fixtures, threads and CLIs alike (callers in
an event loop use ``asyncio.to_thread``), hence a synchronous HTTP client: the standard
library's ``http.client`` (aiohttp would need an event loop per call).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from broker.errors import AdminError
from setpay.config import mask_url
from setpay.logs import get_logger

log = get_logger(component="broker.admin")
T = TypeVar("T")

# rabbitmqctl exit codes (sysexits): 65 data error, 67 no such user/vhost, 70 already exists.
_NOT_FOUND = 67
_EXISTS = 70
MANAGEMENT_PORT = 15672


# -- where the management API is ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The management API's base URL and the admin login (the password never printed)."""

    url: str
    user: str
    password: str
    timeout: float = 10.0

    def __repr__(self) -> str:
        return f"Endpoint(url={mask_url(self.url)!r}, user={self.user!r})"


_endpoint: Endpoint | None = None
_local = threading.local()
_fallback_logged = False


def management_url(amqp_url: str, configured: str = "") -> str:
    """``configured`` if set, else ``http://<host of amqp_url>:15672``."""
    if configured:
        return configured.rstrip("/")
    host = urlsplit(amqp_url).hostname or "127.0.0.1"
    return f"http://{host}:{MANAGEMENT_PORT}"


def configure(url: str, user: str, password: str, *, timeout: float = 10.0) -> None:
    """Use the management API at ``url`` with this admin login (e.g. from the CLI's settings,
    or a test pointing at a closed port)."""
    global _endpoint
    _endpoint = Endpoint(url.rstrip("/"), user, password, timeout)
    _local.__dict__.clear()


def reset() -> None:
    """Forget ``configure``: the next call reads the configuration again."""
    global _endpoint
    _endpoint = None
    _local.__dict__.clear()


def endpoint() -> Endpoint:
    """The configured endpoint, else the one the effective settings name."""
    global _endpoint
    if _endpoint is None:
        from setpay.config import ConfigError, load

        try:
            s = load()
            _endpoint = Endpoint(management_url(s.amqp_url, s.broker_management_url),
                                 s.broker_admin_user, s.broker_admin_password)  # fmt: skip
        except ConfigError:
            _endpoint = Endpoint(f"http://127.0.0.1:{MANAGEMENT_PORT}", "guest", "guest")
    return _endpoint


# -- the HTTP API --------------------------------------------------------------------------------


class _Unreachable(Exception):
    """The management API did not answer (Rule 1: fall back to rabbitmqctl)."""


def _q(segment: str) -> str:
    return quote(segment, safe="")


def _connection(ep: Endpoint) -> http.client.HTTPConnection:
    conn = getattr(_local, "conn", None)
    if conn is not None and getattr(_local, "for_url", None) == ep.url:
        return conn
    parts = urlsplit(ep.url)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname or "127.0.0.1", parts.port, timeout=ep.timeout)
    _local.conn, _local.for_url = conn, ep.url
    return conn


def _api(method: str, path: str, body: Mapping[str, Any] | None = None, *,
         absent_ok: bool = False, secret: str = "") -> Any:
    """One request to ``/api<path>``; the decoded JSON answer (None for an empty one or an
    absent object when ``absent_ok``). ``_Unreachable`` if nothing answers."""
    ep = endpoint()
    prefix = urlsplit(ep.url).path.rstrip("/")
    token = base64.b64encode(f"{ep.user}:{ep.password}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(dict(body)).encode()
        headers["Content-Type"] = "application/json"
    for attempt in (1, 2):
        conn = _connection(ep)
        try:
            conn.request(method, f"{prefix}/api{path}", body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            break
        except (ConnectionRefusedError, TimeoutError, socket.gaierror) as exc:
            conn.close()
            raise _Unreachable(type(exc).__name__) from None
        except (http.client.HTTPException, OSError) as exc:
            conn.close()  # a kept-alive connection the server closed: one fresh attempt
            if attempt == 2:
                raise _Unreachable(type(exc).__name__) from None
    status = response.status
    if status == 404 and absent_ok:
        return None
    if status >= 400:
        try:
            answer = json.loads(raw or b"{}")
            why = f"{answer.get('error', '')}: {answer.get('reason', '')}"
        except (ValueError, AttributeError):
            why = raw[:200].decode(errors="replace")
        if secret:
            why = why.replace(secret, "***")  # Rule 2, should the broker ever echo it
        what = path.split("?", 1)[0].split("/")[1]
        raise AdminError(f"management API {method} {what} failed ({status}): {why[:300]}")
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise AdminError(f"management API {method} answered no JSON") from None


def _either(http_step: Callable[[], T], ctl_step: Callable[[], T]) -> T:
    """``http_step``, or ``ctl_step`` when the API does not answer (Rule 1)."""
    global _fallback_logged
    try:
        return http_step()
    except _Unreachable as exc:
        if not _fallback_logged:
            _fallback_logged = True
            log.warning("management_api_unreachable", url=mask_url(endpoint().url), error=str(exc),
                        fallback="rabbitmqctl")  # fmt: skip
        return ctl_step()


def api_answers() -> bool:
    """Whether the management API answers (with the admin login accepted)."""
    try:
        _api("GET", "/whoami")
        return True
    except (_Unreachable, AdminError):
        return False


# -- rabbitmqctl (the fallback) -----------------------------------------------------------------


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


def _json_rows(args: Sequence[str]) -> list[dict[str, Any]]:
    out = _ctl([*args, "--formatter", "json"]).stdout.strip()
    try:
        rows = json.loads(out or "[]")
    except json.JSONDecodeError as exc:
        raise AdminError(f"rabbitmqctl {args[0]} printed no JSON") from exc
    return [row for row in rows if isinstance(row, dict)]


def _ctl_add_user(name: str, password: str, tags: Sequence[str]) -> None:
    done = _ctl(["add_user", name], stdin=password + "\n", ok=(_EXISTS,))
    if done.returncode == _EXISTS:
        _ctl(["change_password", name], stdin=password + "\n")
    _ctl(["set_user_tags", name, *tags])


def _ctl_authenticate(name: str, password: str) -> bool:
    done = _ctl(["authenticate_user", name], stdin=password + "\n", ok=(65, _NOT_FOUND))
    return done.returncode == 0


def _ctl_list_policies(vhost: str) -> dict[str, dict[str, Any]]:
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


# -- the public functions ------------------------------------------------------------------------


def create_vhost(name: str) -> None:
    """Create vhost ``name`` (kept if it exists)."""
    _either(lambda: _api("PUT", f"/vhosts/{_q(name)}", {}), lambda: _ctl(["add_vhost", name]))


def delete_vhost(name: str) -> None:
    """Delete vhost ``name`` and everything in it (no error if absent)."""
    _either(lambda: _api("DELETE", f"/vhosts/{_q(name)}", absent_ok=True),
            lambda: _ctl(["delete_vhost", name], ok=(_NOT_FOUND,), absent_ok=True))  # fmt: skip


def add_user(name: str, password: str, tags: Sequence[str] = ()) -> None:
    """Create user ``name`` with ``password`` (an existing user gets the new password)."""
    _either(
        lambda: _api("PUT", f"/users/{_q(name)}", {"password": password, "tags": ",".join(tags)},
                     secret=password),
        lambda: _ctl_add_user(name, password, tags),
    )  # fmt: skip


def delete_user(name: str) -> None:
    """Delete user ``name`` (no error if absent)."""
    _either(lambda: _api("DELETE", f"/users/{_q(name)}", absent_ok=True),
            lambda: _ctl(["delete_user", name], ok=(_NOT_FOUND,), absent_ok=True))  # fmt: skip


def set_permissions(vhost: str, user: str, configure: str, write: str, read: str) -> None:
    """Grant ``user`` on ``vhost`` the configure/write/read regular expressions given."""
    _either(
        lambda: _api("PUT", f"/permissions/{_q(vhost)}/{_q(user)}",
                     {"configure": configure, "write": write, "read": read}),
        lambda: _ctl(["set_permissions", "--vhost", vhost, user, configure, write, read]),
    )  # fmt: skip


def set_topic_permissions(vhost: str, user: str, exchange: str, write: str, read: str) -> None:
    """Limit the routing keys ``user`` may publish (``write``) and bind (``read``) on the topic
    exchange ``exchange`` of ``vhost`` to those matching the regular expressions given."""
    _either(
        lambda: _api("PUT", f"/topic-permissions/{_q(vhost)}/{_q(user)}",
                     {"exchange": exchange, "write": write, "read": read}),
        lambda: _ctl(["set_topic_permissions", "--vhost", vhost, user, exchange, write, read]),
    )  # fmt: skip


def list_topic_permissions(vhost: str) -> dict[tuple[str, str], tuple[str, str]]:
    """``(user, exchange) -> (write, read)`` on ``vhost``."""
    rows = _either(lambda: _api("GET", f"/vhosts/{_q(vhost)}/topic-permissions"),
                   lambda: _json_rows(["list_topic_permissions", "--vhost", vhost]))  # fmt: skip
    return {(row["user"], row["exchange"]): (row["write"], row["read"]) for row in rows}


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
    _either(
        lambda: _api("PUT", f"/policies/{_q(vhost)}/{_q(name)}",
                     {"pattern": pattern, "definition": dict(definition), "priority": priority,
                      "apply-to": apply_to}),
        lambda: _ctl(["set_policy", "--vhost", vhost, "--apply-to", apply_to, "--priority",
                      str(priority), name, pattern, json.dumps(dict(definition))]),
    )  # fmt: skip


def clear_policy(vhost: str, name: str) -> None:
    """Remove policy ``name`` from ``vhost`` (no error if absent)."""
    _either(lambda: _api("DELETE", f"/policies/{_q(vhost)}/{_q(name)}", absent_ok=True),
            lambda: _ctl(["clear_policy", "--vhost", vhost, name], ok=(_NOT_FOUND,),
                         absent_ok=True))  # fmt: skip


def password_matches(password_hash: str, algorithm: str, password: str) -> bool:
    """Whether ``password`` is the one RabbitMQ's internal backend stored as ``password_hash``
    (base64 of a 4-byte salt and H(salt ‖ password), H named by ``algorithm``)."""
    digests = {"rabbit_password_hashing_sha256": hashlib.sha256,
               "rabbit_password_hashing_sha512": hashlib.sha512,
               "rabbit_password_hashing_md5": hashlib.md5}  # fmt: skip
    if not password_hash:
        return False  # a user without a password (e.g. loaded from definitions) has no login
    digest = digests.get(algorithm)
    if digest is None:
        raise AdminError(f"cannot check a password hashed with {algorithm or 'nothing'}")
    raw = base64.b64decode(password_hash)
    salt, stored = raw[:4], raw[4:]
    return hmac.compare_digest(digest(salt + password.encode()).digest(), stored)


def _api_authenticate(name: str, password: str) -> bool:
    user = _api("GET", f"/users/{_q(name)}", absent_ok=True)
    if user is None:
        return False
    return password_matches(user.get("password_hash", ""), user.get("hashing_algorithm", ""),
                            password)  # fmt: skip


def authenticate(name: str, password: str) -> bool:
    """Whether ``name`` exists and ``password`` is its password (Rule 2)."""
    return _either(lambda: _api_authenticate(name, password),
                   lambda: _ctl_authenticate(name, password))  # fmt: skip


def _api_change_password(name: str, password: str) -> None:
    user = _api("GET", f"/users/{_q(name)}")
    tags = user.get("tags", [])
    tags = ",".join(tags) if isinstance(tags, list) else str(tags)
    _api("PUT", f"/users/{_q(name)}", {"password": password, "tags": tags}, secret=password)


def change_password(name: str, password: str) -> None:
    """Give the existing user ``name`` the new ``password`` (its tags kept)."""
    _either(lambda: _api_change_password(name, password),
            lambda: _ctl(["change_password", name], stdin=password + "\n"))  # fmt: skip


def list_permissions(vhost: str) -> dict[str, tuple[str, str, str]]:
    """``user -> (configure, write, read)`` on ``vhost``."""
    rows = _either(lambda: _api("GET", f"/vhosts/{_q(vhost)}/permissions"),
                   lambda: _json_rows(["list_permissions", "--vhost", vhost]))  # fmt: skip
    return {row["user"]: (row["configure"], row["write"], row["read"]) for row in rows}


def _api_list_policies(vhost: str) -> dict[str, dict[str, Any]]:
    return {
        row["name"]: {"pattern": row["pattern"], "apply-to": row["apply-to"],
                      "priority": int(row["priority"]), "definition": row["definition"]}
        for row in _api("GET", f"/policies/{_q(vhost)}")
    }  # fmt: skip


def list_policies(vhost: str) -> dict[str, dict[str, Any]]:
    """``name -> {pattern, apply-to, priority, definition}`` of the policies on ``vhost``."""
    return _either(lambda: _api_list_policies(vhost), lambda: _ctl_list_policies(vhost))


def list_names(kind: str, vhost: str) -> set[str]:
    """Names of the ``kind`` ("queues" or "exchanges") that exist on ``vhost``."""
    if kind not in ("queues", "exchanges"):
        raise AdminError(f"cannot list {kind!r}")
    rows = _either(lambda: _api("GET", f"/{kind}/{_q(vhost)}?columns=name"),
                   lambda: _json_rows([f"list_{kind}", "--vhost", vhost, "name"]))  # fmt: skip
    return {row["name"] for row in rows}


def list_users() -> list[str]:
    """Names of all broker users."""
    return _either(
        lambda: [row["name"] for row in _api("GET", "/users?columns=name")],
        lambda: [line.split("\t", 1)[0]
                 for line in _ctl(["list_users", "--no-table-headers"]).stdout.splitlines()
                 if line.strip()],
    )  # fmt: skip


def list_vhosts() -> list[str]:
    """Names of all vhosts."""
    return _either(
        lambda: [row["name"] for row in _api("GET", "/vhosts?columns=name")],
        lambda: [line.strip()
                 for line in _ctl(["list_vhosts", "--no-table-headers"]).stdout.splitlines()
                 if line.strip()],
    )  # fmt: skip


def export_definitions(vhost: str) -> dict[str, Any]:
    """The definitions of ``vhost`` as the broker exports them (management API only: queues,
    exchanges, bindings, policies, parameters)."""
    try:
        return dict(_api("GET", f"/definitions/{_q(vhost)}"))
    except _Unreachable as exc:
        raise AdminError(f"management API not answering ({exc}); cannot export") from None


def import_definitions(definitions: Mapping[str, Any]) -> None:
    """Load broker-wide definitions (users, vhosts, permissions, topology) through the
    management API (the same document ``rabbitmqctl import_definitions`` reads)."""
    try:
        _api("POST", "/definitions", definitions)
    except _Unreachable as exc:
        raise AdminError(f"management API not answering ({exc}); cannot import") from None


def stop_app() -> None:
    """Stop the RabbitMQ application (the Erlang node keeps running); for restart tests. Only
    rabbitmqctl can: the management API stops with the application."""
    _ctl(["stop_app"])
    _local.__dict__.pop("conn", None)


def start_app() -> None:
    """Start the RabbitMQ application again after ``stop_app``."""
    _ctl(["start_app"])
