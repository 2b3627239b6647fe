"""`setpay broker init`: apply deploy/rabbitmq/definitions.toml to the running RabbitMQ.

Rule 1: idempotent -- each step compares what exists with what is wanted and changes only
the difference; a second run reports everything ``unchanged``.
Rule 2: least privilege -- identity ``<role>.<instance>`` may configure and read only its own
queues (``set.<role>``, ``set.<role>.<instance>``, listed extras, its inboxes
``reply.<login>.*``) and write only to the exchanges its role uses, never ``amq.default``;
topic permissions on ``setpay.set`` and ``setpay.rpc`` limit the routing keys it may publish
to the peers its role addresses and answers (``RolePolicy``) and the keys it may bind to its
own inboxes. The shared topology is declared here, as the admin user.
Rule 3: passwords come from ``broker.credentials`` (generated once, reused), travel to the
management API in request bodies (``broker.admin``; rabbitmqctl's stdin on its fallback) and
never appear in the summary, logs or errors.
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiormq

from broker import admin
from broker.connection import connect
from broker.credentials import CredentialStore, amqp_url, credentials_path
from broker.errors import BrokerError
from broker.topology import (
    COMMON_EXCHANGES,
    DEAD_LETTER_EXCHANGE,
    RPC_EXCHANGE,
    SET_EXCHANGE,
    TRACE_EXCHANGE,
    QueueLimits,
    declare_actor,
    declare_common,
    inbox_prefix,
    type_arguments,
)
from setpay.config import login_url

DEFINITIONS = Path(__file__).resolve().parents[1] / "deploy" / "rabbitmq" / "definitions.toml"
FULL = (".*", ".*", ".*")


class DefinitionsError(BrokerError):
    """The definitions file is missing, not TOML, or lacks a required field."""


@dataclass(frozen=True, slots=True)
class RolePolicy:
    """What the logins of one role may do on the bus (definitions.toml ``[roles.<role>]``)."""

    addresses: tuple[str, ...] = ()  # roles whose SET queues it sends requests to
    answers: tuple[str, ...] = ()  # roles whose requests it answers (their inboxes)
    broadcasts: tuple[str, ...] = ()  # routing-key prefixes it may broadcast on setpay.set
    calls: tuple[str, ...] = ()  # RPC queues it calls through setpay.rpc
    serves_rpc: bool = False  # answers RPC requests
    reads: tuple[str, ...] = ()  # extra queues/exchanges it reads (operators)
    queues: tuple[str, ...] = ()  # extra queues of its own, by name
    queue_patterns: tuple[str, ...] = ()  # extra queues of its own, by regular expression

    @property
    def speaks_set(self) -> bool:
        return bool(self.addresses or self.answers or self.broadcasts)


@dataclass(frozen=True, slots=True)
class Identity:
    """One actor identity; its broker user is ``<prefix><role>.<instance>``."""

    role: str
    instance: str
    queues: tuple[str, ...] = ()
    serves_rpc: bool = False
    bindings: tuple[str, ...] = ()  # extra routing keys bound to the instance queue

    @property
    def name(self) -> str:
        return f"{self.role}.{self.instance}"

    def own_queues(self) -> tuple[str, ...]:
        return (f"set.{self.role}", f"set.{self.role}.{self.instance}", *self.queues)


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    pattern: str
    definition: Mapping[str, Any]
    apply_to: str = "queues"
    priority: int = 0

    def as_listed(self) -> dict[str, Any]:
        """The shape ``admin.list_policies`` reports, for comparison."""
        return {"pattern": self.pattern, "apply-to": self.apply_to,
                "priority": self.priority, "definition": dict(self.definition)}


NOTHING = "^$"  # a regular expression no resource name or routing key matches


@dataclass(frozen=True, slots=True)
class Definitions:
    identities: tuple[Identity, ...]
    policies: tuple[Policy, ...]
    roles: Mapping[str, RolePolicy] = field(default_factory=dict)

    def role(self, identity: Identity) -> RolePolicy:
        return self.roles.get(identity.role, RolePolicy())

    def permissions(self, identity: Identity, prefix: str = "") -> tuple[str, str, str]:
        """(configure, write, read) regular expressions for ``identity``'s login."""
        role = self.role(identity)
        login = prefix + identity.name
        own = [re.escape(q) for q in (*identity.own_queues(), *role.queues)]
        own += [*role.queue_patterns, re.escape(inbox_prefix(login)) + "[^.#*]+"]
        exchanges: list[str] = []
        if role.speaks_set:
            exchanges += [SET_EXCHANGE, TRACE_EXCHANGE, DEAD_LETTER_EXCHANGE]
        if role.calls or role.serves_rpc or identity.serves_rpc:
            exchanges.append(RPC_EXCHANGE)
        # Reading an exchange is what binding a queue to it needs; the topic permissions let
        # a login bind only its own inbox keys there.
        bindable = [SET_EXCHANGE, RPC_EXCHANGE]
        configure = _any(own)
        write = _any(own + [re.escape(e) for e in exchanges])
        read = _any(own + [re.escape(n) for n in (*bindable, *role.reads)])
        return configure, write, read

    def topic_permissions(self, identity: Identity, prefix: str = "") -> dict[str, tuple[str, str]]:
        """``exchange -> (write, read)`` routing-key expressions on the two topic exchanges."""
        role = self.role(identity)
        login = prefix + identity.name
        inbox = "^" + re.escape(inbox_prefix(login)) + "[^.#*]+$"
        set_keys = [f"({_names(role.addresses)})(\\.[^.#*]+)?"] if role.addresses else []
        if role.answers:
            set_keys.append(re.escape(f"reply.{prefix}") + f"({_names(role.answers)})\\..+")
        if role.broadcasts:
            set_keys.append(f"({_names(role.broadcasts)})\\..+")
        rpc_keys = [re.escape(q) for q in role.calls]
        if role.serves_rpc or identity.serves_rpc:
            rpc_keys.append("reply\\..+")
        return {SET_EXCHANGE: (_keys(set_keys), inbox), RPC_EXCHANGE: (_keys(rpc_keys), inbox)}


def _names(names: tuple[str, ...]) -> str:
    return "|".join(re.escape(n) for n in names)


def _any(alternatives: list[str]) -> str:
    return "^(" + "|".join(alternatives) + ")$" if alternatives else NOTHING


def _keys(alternatives: list[str]) -> str:
    return _any(alternatives)


def load_definitions(path: Path = DEFINITIONS) -> Definitions:
    """Read the definitions TOML (roles, identities, policies)."""
    try:
        table = tomllib.loads(path.read_text())
        identities = tuple(
            Identity(str(i["role"]), str(i["instance"]), tuple(map(str, i.get("queues", ()))),
                     bool(i.get("serves_rpc", False)), tuple(map(str, i.get("bindings", ()))))
            for i in table["identities"]
        )
        roles = {
            str(name): RolePolicy(
                **{key: (tuple(map(str, value)) if isinstance(value, list) else bool(value))
                   for key, value in dict(spec).items()}
            )
            for name, spec in table.get("roles", {}).items()
        }
        policies = tuple(
            Policy(str(p["name"]), str(p["pattern"]), dict(p["definition"]),
                   str(p.get("apply_to", "queues")), int(p.get("priority", 0)))
            for p in table.get("policies", ())
        )
    except OSError as exc:
        raise DefinitionsError(f"cannot read {path} ({type(exc).__name__})") from None
    except tomllib.TOMLDecodeError as exc:
        raise DefinitionsError(f"{path}: not valid TOML ({exc})") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise DefinitionsError(f"{path}: missing or malformed field {exc}") from None
    return Definitions(identities, policies, roles)


@dataclass(frozen=True, slots=True)
class Change:
    """One line of the summary: ``kind name: outcome`` (created, updated, unchanged...)."""

    kind: str
    name: str
    outcome: str

    def __str__(self) -> str:
        return f"{self.kind:<12} {self.name:<28} {self.outcome}"


@dataclass(slots=True)
class Report:
    vhost: str
    credentials: Path
    changes: list[Change] = field(default_factory=list)

    def add(self, kind: str, name: str, outcome: str) -> None:
        self.changes.append(Change(kind, name, outcome))

    def changed(self) -> list[Change]:
        return [c for c in self.changes if c.outcome != "unchanged"]

    def lines(self) -> list[str]:
        """The printed summary: every entity and its outcome, then the totals."""
        counts: dict[str, int] = {}
        for change in self.changes:
            counts[change.outcome] = counts.get(change.outcome, 0) + 1
        totals = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        return [f"broker init on vhost {self.vhost!r}", *map(str, self.changes),
                f"total: {totals}; passwords kept in {self.credentials} (mode 0600)"]


def _apply_admin(report: Report, defs: Definitions, store: CredentialStore,
                 admin_user: str, user_prefix: str) -> None:
    vhost = report.vhost
    if vhost in admin.list_vhosts():
        report.add("vhost", vhost, "unchanged")
    else:
        admin.create_vhost(vhost)
        report.add("vhost", vhost, "created")
    granted = admin.list_permissions(vhost)
    wanted = {admin_user: FULL}
    for identity in defs.identities:
        wanted[user_prefix + identity.name] = defs.permissions(identity, user_prefix)
    users = set(admin.list_users())
    for identity in defs.identities:
        user = user_prefix + identity.name
        password, generated = store.ensure(user)
        if user not in users:
            admin.add_user(user, password)
            report.add("user", user, "created")
        elif not generated and admin.authenticate(user, password):
            report.add("user", user, "unchanged")
        else:
            # The broker has the user but not our stored password (e.g. a lost data_dir).
            admin.change_password(user, password)
            report.add("user", user, "password reset")
    for user, perms in wanted.items():
        if granted.get(user) == perms:
            report.add("permissions", user, "unchanged")
        else:
            admin.set_permissions(vhost, user, *perms)
            report.add("permissions", user, "updated" if user in granted else "created")
    topics = admin.list_topic_permissions(vhost)
    for identity in defs.identities:
        user = user_prefix + identity.name
        for exchange, keys in defs.topic_permissions(identity, user_prefix).items():
            name = f"{user} {exchange}"
            if topics.get((user, exchange)) == keys:
                report.add("topic perms", name, "unchanged")
                continue
            admin.set_topic_permissions(vhost, user, exchange, *keys)
            report.add("topic perms", name,
                       "updated" if (user, exchange) in topics else "created")  # fmt: skip
    existing = admin.list_policies(vhost)
    for policy in defs.policies:
        if existing.get(policy.name) == policy.as_listed():
            report.add("policy", policy.name, "unchanged")
            continue
        admin.set_policy(vhost, policy.name, policy.pattern, policy.definition,
                         apply_to=policy.apply_to, priority=policy.priority)
        report.add("policy", policy.name, "updated" if policy.name in existing else "created")


async def _apply_topology(report: Report, defs: Definitions, url: str,
                          queue_type: str = "classic") -> None:  # fmt: skip
    before = {
        kind: await asyncio.to_thread(admin.list_names, kind, report.vhost)
        for kind in ("exchanges", "queues")
    }
    bus = await connect(url, name="setpay-broker-init")
    try:
        channel = await bus.channel(confirms=False)
        _exchange, dead = await declare_common(channel, queue_type=queue_type)
        limits = QueueLimits(queue_type=queue_type)
        queues = [dead.name]
        for identity in defs.identities:
            if defs.role(identity).speaks_set:
                declared = await declare_actor(channel, identity.role, identity.instance, limits,
                                               passive=False, bindings=identity.bindings)
                queues += [declared.role.name, declared.instance.name]
            # Extra queues are RPC queues (keystore.rpc, APIs), declared and bound on
            # setpay.rpc here, as the admin: identities may not bind request keys themselves.
            for extra in identity.queues:
                rpc = await channel.declare_queue(
                    extra, durable=True, arguments=type_arguments(queue_type, dead_letters=False))
                await rpc.bind(RPC_EXCHANGE, routing_key=extra)
                queues.append(extra)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        # a queue made earlier with other arguments (another broker_queue_type): RabbitMQ
        # never changes a queue's type in place (broker/topology.py Rule 8)
        raise BrokerError(
            f"vhost {report.vhost}: {str(exc).removeprefix('PRECONDITION_FAILED - ')}; a queue "
            f"keeps the type and arguments it was made with: use a new vhost for "
            f"broker_queue_type={queue_type}") from None
    finally:
        await bus.close()
    for name in COMMON_EXCHANGES:
        report.add("exchange", name, "unchanged" if name in before["exchanges"] else "created")
    for name in dict.fromkeys(queues):
        report.add("queue", name, "unchanged" if name in before["queues"] else "created")


async def init(
    *,
    vhost: str,
    data_dir: Path,
    base_url: str,
    admin_user: str,
    admin_password: str,
    definitions: Definitions | None = None,
    user_prefix: str = "",
    queue_type: str = "classic",
) -> Report:
    """Apply ``definitions`` (default: deploy/rabbitmq/definitions.toml) to ``vhost``.

    ``user_prefix`` namespaces the broker users (tests: users are broker-wide); ``queue_type``
    is the type of every durable queue declared (broker/topology.py Rule 8)."""
    defs = definitions or load_definitions()
    store = CredentialStore(credentials_path(data_dir))
    report = Report(vhost=vhost, credentials=store.path)
    await asyncio.to_thread(_apply_admin, report, defs, store, admin_user, user_prefix)
    await _apply_topology(report, defs, login_url(base_url, admin_user, admin_password, vhost),
                          queue_type)
    return report


def identity_url(data_dir: Path, identity: str, vhost: str, base_url: str,
                 *, user_prefix: str = "") -> str:
    """The AMQP URL an actor uses to connect as ``identity`` (``<role>.<instance>``)."""
    return amqp_url(data_dir, user_prefix + identity, vhost, base_url)


OPERATOR = "operator.main"  # operators: trace recorder, env lock, dead letters


def operator_url(data_dir: Path, vhost: str, base_url: str, *, user_prefix: str = "") -> str:
    """The AMQP URL of the operators' identity (never the admin: Rule 2)."""
    return identity_url(data_dir, OPERATOR, vhost, base_url, user_prefix=user_prefix)


# -- the same definitions in RabbitMQ's own JSON format ------------------------------------------


def rabbitmq_definitions(defs: Definitions | None = None, *, vhost: str = "setpay",
                         user_prefix: str = "", admin_user: str = "guest") -> dict[str, Any]:
    """``definitions.toml`` as RabbitMQ definitions (``rabbitmqctl import_definitions``, the
    management API's ``POST /api/definitions``, ``load_definitions`` in rabbitmq.conf): the
    vhost, one user per identity, the permissions and topic permissions ``broker init`` grants,
    the policies, and the topology it declares (exchanges, queues, bindings).

    Users carry no password (an empty ``password_hash``: no password login) -- passwords are
    generated by `setpay broker init`, which sets them on the existing users (it resets a
    password it does not hold), so no secret is ever in this file."""
    from broker.topology import (
        DEAD_LETTER_ARGUMENTS,
        DEAD_LETTER_QUEUE,
        QueueLimits,
        instance_key,
        instance_queue,
        role_queue,
    )

    defs = defs or load_definitions()
    users, permissions, topics = [], [{"user": admin_user, "vhost": vhost, "configure": ".*",
                                       "write": ".*", "read": ".*"}], []  # fmt: skip
    exchanges = [
        {"name": name, "vhost": vhost, "type": "fanout" if name in (DEAD_LETTER_EXCHANGE,
                                                                      TRACE_EXCHANGE) else "topic",
         "durable": True, "auto_delete": False, "internal": False, "arguments": {}}
        for name in COMMON_EXCHANGES
    ]  # fmt: skip
    queues = [{"name": DEAD_LETTER_QUEUE, "vhost": vhost, "durable": True, "auto_delete": False,
               "arguments": dict(DEAD_LETTER_ARGUMENTS)}]  # fmt: skip
    bindings = [{"source": DEAD_LETTER_EXCHANGE, "vhost": vhost, "destination": DEAD_LETTER_QUEUE,
                 "destination_type": "queue", "routing_key": DEAD_LETTER_QUEUE,
                 "arguments": {}}]  # fmt: skip

    def bind(source: str, queue: str, key: str) -> None:
        bindings.append({"source": source, "vhost": vhost, "destination": queue,
                         "destination_type": "queue", "routing_key": key, "arguments": {}})

    limits = QueueLimits().arguments()
    for identity in defs.identities:
        user = user_prefix + identity.name
        users.append({"name": user, "password_hash": "",
                      "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []})
        configure, write, read = defs.permissions(identity, user_prefix)
        permissions.append({"user": user, "vhost": vhost, "configure": configure,
                            "write": write, "read": read})  # fmt: skip
        for exchange, (w, r) in defs.topic_permissions(identity, user_prefix).items():
            topics.append({"user": user, "vhost": vhost, "exchange": exchange, "write": w,
                           "read": r})  # fmt: skip
        if defs.role(identity).speaks_set:
            mine = instance_queue(identity.role, identity.instance)
            shared = role_queue(identity.role)
            for name in (mine, shared):
                if not any(q["name"] == name for q in queues):
                    queues.append({"name": name, "vhost": vhost, "durable": True,
                                   "auto_delete": False, "arguments": dict(limits)})
            bind(SET_EXCHANGE, mine, instance_key(identity.role, identity.instance))
            for key in identity.bindings:
                bind(SET_EXCHANGE, mine, key)
            bind(SET_EXCHANGE, shared, identity.role)
        for extra in identity.queues:
            queues.append({"name": extra, "vhost": vhost, "durable": True, "auto_delete": False,
                           "arguments": {}})  # fmt: skip
            bind(RPC_EXCHANGE, extra, extra)
    policies = [{"vhost": vhost, "name": p.name, "pattern": p.pattern, "apply-to": p.apply_to,
                 "definition": dict(p.definition), "priority": p.priority}
                for p in defs.policies]  # fmt: skip
    return {
        "users": users,
        "vhosts": [{"name": vhost}],
        "permissions": permissions,
        "topic_permissions": topics,
        "parameters": [],
        "policies": policies,
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    }


GENERATED_JSON = DEFINITIONS.with_suffix(".json")  # deploy/rabbitmq/definitions.json


def definitions_json(**kwargs: Any) -> str:
    """The JSON text of ``rabbitmq_definitions`` (sorted keys, two-space indent, final
    newline): what deploy/rabbitmq/definitions.json holds for the defaults."""
    import json

    return json.dumps(rabbitmq_definitions(**kwargs), indent=2, sort_keys=True) + "\n"
