"""Runs actors as separate OS processes: ``run`` one role, ``up`` an environment, ``down``.

Rule 1: roles are found through ``ROLES`` (role -> "module:factory"); a role whose module
does not exist yet is skipped by ``up`` and refused by ``run`` with a clear error. A factory
is called ``factory(settings, instance, health_file=...)`` and returns an ``Actor``.
Rule 2: state lives under ``<data_dir>/run/``. ``supervisor.pid`` is written before the
supervisor runs anything (by whoever spawns it, then by itself); ``<identity>.pid`` the moment
a child is spawned; ``<identity>.health`` by each actor; ``supervisor.health`` (each child's
state) by the supervisor; ``roles`` holds the roles it keeps running (``add_roles`` extends
it); ``supervisor.error`` says why a supervisor refused to start.
Rule 3: one environment per vhost. The supervisor holds the exclusive queue ``LOCK_QUEUE`` on
its vhost for its lifetime; RabbitMQ refuses a second exclusive declare (RESOURCE_LOCKED), so
a second environment on the same vhost refuses to start instead of consuming the first's
messages. The broker drops the lock with the connection, so a killed supervisor leaves none.
Rule 4: ``down`` stops an environment at any point of its start-up: SIGTERM to the supervisor,
which stops its children (SIGTERM, ``grace``, SIGKILL) and exits; then every child still
recorded is stopped the same way (the supervisor was killed); then the pid files are removed.
A pid is acted on only if its process started before its pid file was written (no reuse).
Rule 5: each child holds only its own secrets (``child_env``). The supervisor, running as the
operator, reads the broker credentials and the token PINs and hands each child its own AMQP
URL; only the keystore gets the token PIN and ``SOFTHSM2_CONF``. No child inherits another
identity's password, the broker admin's, the SO PIN, or a config file (which may hold them):
every non-secret setting reaches it as a ``SETPAY_*`` variable instead.
Rule 6: replicas. A role may run as several processes of one identity (``run/replicas``:
role -> count, default 1; ``setpay up --replicas``, ``setpay scale``): competing consumers of
the identity's queues, each with its own reply inbox (broker/inbox.py Rule 1), sharing the
identity's stores. Replica n is ``<identity>@<n>`` (``setpay.config.process_name``): its pid,
health and log files carry that name, it gets ``SETPAY_REPLICA=n`` and metrics port
base + offset + 10·n. The supervisor reads the counts every tick: a raised count spawns the
missing replicas, a lowered one retires the highest (SIGTERM: they drain their in-flight work,
then SIGKILL after ``grace``). The HTTPS front doors of replicas share their port
(SO_REUSEPORT, actors/web/server.py): the supervisor refuses to start if another process
already listens on a front-door port, so two environments never share one by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aio_pika
import aio_pika.abc
import aiormq.exceptions

from actors.web.tls import ensure_test_certificate, tls_dir
from broker.credentials import CredentialsError
from broker.provision import identity_url, operator_url
from keystore.token import token_pin
from setpay.config import ENV_PREFIX, Settings, child_environment, process_name
from setpay.logs import get_logger

log = get_logger(component="supervisor")

ROLES: dict[str, str] = {
    "keystore": "keystore.process:main",
    "ca": "actors.ca:main",
    "gateway": "actors.gateway:main",
    "issuer": "actors.issuer.service:main",
    "merchant": "actors.merchant:main",
    "wallet": "actors.wallet:main",
    "echo": "actors.runtime_echo:main",
}
# The `setpay` command as this interpreter runs it (children inherit PYTHONPATH and cwd).
SETPAY = (sys.executable, "-m", "cli")
LOCK_QUEUE = "setpay.environment.lock"
# The test environment `setpay up` brings up, in start order (keystore first: others sign).
UP_ROLES: tuple[str, ...] = ("keystore", "ca", "gateway", "issuer", "merchant", "wallet")
DEFAULT_INSTANCE: dict[str, str] = {
    "keystore": "main", "ca": "main", "gateway": "pg1", "issuer": "host1",
    "merchant": "pos1", "wallet": "main", "echo": "main",
}


# Each role's offset from ``metrics_base_port`` (setpay/config.py): the fixed metrics ports a
# scrape config names (deploy/prometheus/prometheus.yml uses base 9400; the systemd units
# set the same ports).
METRICS_OFFSET: dict[str, int] = {
    "keystore": 1, "ca": 2, "gateway": 3, "issuer": 4, "merchant": 5, "wallet": 6, "echo": 7,
}


# Replica n of a role listens on base + offset + REPLICA_PORT_STRIDE·n (Rule 6).
REPLICA_PORT_STRIDE = 10
MAX_REPLICAS = 16


def metrics_port(settings: Settings, role: str, replica: int = 0) -> int:
    """The metrics port of ``role``'s child: -1 (none) if the supervisor's is -1, base +
    offset (+ 10 per replica) when ``metrics_base_port`` is set, else 0 (ephemeral, in its
    health file)."""
    if settings.metrics_port < 0:
        return -1
    if settings.metrics_base_port > 0:
        return (settings.metrics_base_port + METRICS_OFFSET.get(role, 9)
                + REPLICA_PORT_STRIDE * replica)  # fmt: skip
    return 0


class SupervisorError(Exception):
    """A role is unknown or cannot be started; the message says which and why."""


def run_dir(settings: Settings) -> Path:
    path = settings.data_dir / "run"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def resolve(role: str) -> Callable[..., Any] | None:
    """The factory registered for ``role``, or None if its module is not written yet."""
    target = ROLES.get(role)
    if target is None:
        raise SupervisorError(f"unknown role {role!r}; known: {', '.join(sorted(ROLES))}")
    module_name, _, attr = target.partition(":")
    try:
        if importlib.util.find_spec(module_name) is None:
            return None
    except ModuleNotFoundError:
        return None
    factory = getattr(importlib.import_module(module_name), attr, None)
    return factory if callable(factory) else None


def run_role(settings: Settings, role: str, instance: str | None = None) -> int:
    """Run one actor of ``role`` in this process until SIGTERM/SIGINT."""
    factory = resolve(role)
    if factory is None:
        raise SupervisorError(f"role {role!r} is not available yet ({ROLES[role]} not found)")
    instance = instance or DEFAULT_INSTANCE.get(role, "main")
    health = run_dir(settings) / f"{process_name(f'{role}.{instance}', settings.replica)}.health"
    actor = factory(settings, instance, health_file=health)
    from setpay.lifecycle import NotReady, run_loop, run_service, serve_metrics

    serve_metrics(actor, settings)  # setpay/lifecycle.py Rule 4: /metrics, /healthz, /readyz

    try:
        return run_loop(run_service(actor), settings.event_loop)
    except NotReady as exc:
        raise SupervisorError(f"{role}.{instance} cannot start: {exc}") from None
    finally:
        health.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class Child:
    role: str
    instance: str
    replica: int = 0

    @property
    def identity(self) -> str:
        return f"{self.role}.{self.instance}"

    @property
    def name(self) -> str:
        """The process's name: its identity, ``@n`` for replica n (Rule 6)."""
        return process_name(self.identity, self.replica)


def child_of(role: str, replica: int = 0) -> Child:
    """The child the supervisor runs for ``role`` (its default instance), replica ``n``."""
    return Child(role, DEFAULT_INSTANCE.get(role, "main"), replica)


def child_named(name: str) -> Child | None:
    """The child a process name (``merchant.pos1@2``) stands for, or None."""
    identity, _, replica = name.partition("@")
    role, _, instance = identity.partition(".")
    if role not in ROLES or not instance or (replica and not replica.isdigit()):
        return None
    return Child(role, instance, int(replica or 0))


def parse_replicas(text: str) -> dict[str, int]:
    """``merchant=3,gateway=2`` as counts; ``SupervisorError`` names what is wrong."""
    counts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        role, sep, count = item.partition("=")
        if not sep or role not in ROLES:
            raise SupervisorError(
                f"bad replica count {item!r}: write ROLE=N with ROLE one of "
                f"{', '.join(sorted(ROLES))}"
            )
        if not count.isdigit() or not 1 <= int(count) <= MAX_REPLICAS:
            raise SupervisorError(f"bad replica count {item!r}: N is 1..{MAX_REPLICAS}")
        counts[role] = int(count)
    return counts


# -- processes ---------------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None if there is no such pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rpartition(")")[2].split()


def pid_alive(pid: int) -> bool:
    """``pid`` runs: it exists and is not a zombie (an exited child nobody reaped yet)."""
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _started_at(pid: int) -> float | None:
    """When ``pid`` started, in seconds since the epoch (Linux /proc), or None."""
    fields = _proc_stat(pid)
    if fields is None:
        return None
    try:
        btime = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )  # fmt: skip
    except (OSError, StopIteration, ValueError):
        return None
    return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def recorded_pid(pidfile: Path) -> int | None:
    """The live process ``pidfile`` records, or None: missing, malformed, exited, or a reused
    pid (a process that started after the file was written is not the one it names)."""
    try:
        pid = int(pidfile.read_text().strip())
        written = pidfile.stat().st_mtime
    except (OSError, ValueError):
        return None
    started = _started_at(pid)
    # btime has one-second resolution: allow that much slack.
    if started is None or not pid_alive(pid) or started > written + 1.0:
        return None
    return pid


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# Variables no child inherits from the operator's environment (Rule 5); the keystore gets
# its own SOFTHSM2_CONF back.
_OPERATOR_ONLY = ("SOFTHSM2_CONF",)


def _without_password(url: str) -> str:
    """``url`` with the user but no password (a login that will fail, loudly)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = (parts.username or "") + "@" + (parts.hostname or "127.0.0.1")
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def child_env(settings: Settings, child: Child) -> dict[str, str]:
    """The child's environment (Rule 5): the operator's, less every ``SETPAY_*`` variable and
    ``SOFTHSM2_CONF``; plus every non-secret setting, our data dir, its own broker login when
    one is provisioned (`setpay broker init`), and for the keystore the token PIN."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(ENV_PREFIX) and k not in _OPERATOR_ONLY}  # fmt: skip
    env.update(child_environment(settings))
    env[f"{ENV_PREFIX}DATA_DIR"] = str(settings.data_dir.resolve())
    env[f"{ENV_PREFIX}METRICS_PORT"] = str(metrics_port(settings, child.role, child.replica))
    env[f"{ENV_PREFIX}REPLICA"] = str(child.replica)
    try:
        url = identity_url(
            settings.data_dir,
            child.identity,
            settings.broker_vhost,
            settings.amqp_url,
            user_prefix=settings.broker_user_prefix,
        )
    except CredentialsError:
        log.warning("no_broker_login", identity=child.identity, hint="run `setpay broker init`")
        url = settings.amqp_url
        if unquote(urlsplit(url).password or "") == settings.broker_admin_password:
            url = _without_password(url)  # the admin's login is the supervisor's alone
    env[f"{ENV_PREFIX}AMQP_URL"] = url
    if child.role == "keystore":
        env[f"{ENV_PREFIX}KEYSTORE_PIN"] = token_pin(settings)
        env["SOFTHSM2_CONF"] = str(settings.softhsm_conf.resolve())
    return env


def spawn(settings: Settings, child: Child) -> subprocess.Popen[bytes]:
    """Start ``setpay run ROLE --id ID`` as its own process and session; record its pid at
    once (Rule 2), after removing a health file a previous run may have left."""
    rd = run_dir(settings)
    (rd / f"{child.name}.health").unlink(missing_ok=True)
    logfile = (rd / f"{child.name}.log").open("ab")
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
        [*SETPAY, "run", child.role, "--id", child.instance],
        stdout=logfile,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C on the terminal goes to the supervisor only
        env=child_env(settings, child),
    )
    logfile.close()
    (rd / f"{child.name}.pid").write_text(str(proc.pid))
    return proc


def read_health(settings: Settings, child: Child) -> dict[str, Any] | None:
    """The child's last health report, or None if it wrote none (yet)."""
    path = run_dir(settings) / f"{child.name}.health"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def is_ready(health: dict[str, Any] | None) -> bool:
    """A health report says ready (actors write ``ready: true``, the keystore ``state``)."""
    return bool(health) and (health.get("ready") is True or health.get("state") == "ready")


def stop_pids(pids: dict[str, int], grace: float) -> dict[str, str]:
    """SIGTERM every pid, wait up to ``grace`` s, SIGKILL survivors; return how each ended."""
    outcome: dict[str, str] = {}
    for name, pid in pids.items():
        try:
            os.kill(pid, signal.SIGTERM)
            outcome[name] = "terminated"
        except ProcessLookupError:
            outcome[name] = "not running"
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(
        pid_alive(pid) for n, pid in pids.items() if outcome[n] == "terminated"
    ):
        _reap()
        time.sleep(0.05)
    for name, pid in pids.items():
        _reap()
        if outcome[name] == "terminated" and pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            outcome[name] = "killed"
    _reap()
    return outcome


def _reap() -> None:
    """Collect exited children of this process so they do not linger as zombies."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


# -- the supervisor ----------------------------------------------------------------------------


class EnvironmentLocked(SupervisorError):
    """Another environment's supervisor holds the vhost (Rule 3)."""


def _locked(vhost: str) -> EnvironmentLocked:
    return EnvironmentLocked(
        f"another environment is running on vhost {vhost!r} (its supervisor "
        f"holds the exclusive queue {LOCK_QUEUE!r}); give this one its own "
        "SETPAY_BROKER_VHOST, SETPAY_BROKER_USER_PREFIX, SETPAY_ISSUER_PORT and data dir"
    )


def _lock_held(vhost: str) -> bool:
    """Whether the lock queue exists on ``vhost`` (``broker.admin``: the management API, else
    rabbitmqctl; False if it cannot tell)."""
    from broker import admin
    from broker.errors import AdminError

    try:
        return LOCK_QUEUE in admin.list_names("queues", vhost)
    except AdminError:
        return False


async def hold_lock(settings: Settings) -> aio_pika.abc.AbstractConnection:
    """Declare ``LOCK_QUEUE`` exclusive on ``broker_vhost`` as the operators' identity; the
    returned connection holds it until closed. ``EnvironmentLocked`` if another supervisor
    holds it."""
    vhost = settings.broker_vhost
    try:
        url = operator_url(settings.data_dir, vhost, settings.amqp_url,
                           user_prefix=settings.broker_user_prefix)  # fmt: skip
    except CredentialsError as exc:
        # No operators' login in this data dir: if another supervisor holds the vhost, say
        # that (asked through broker administration, not over AMQP); else what is missing.
        if _lock_held(vhost):
            raise _locked(vhost) from None
        raise SupervisorError(f"{exc}") from None
    # A plain (not robust) connection: a robust one would silently re-declare the queue after
    # a reconnect, and could then be the second holder without anyone being told.
    try:
        connection = await aio_pika.connect(
            url, client_properties={"connection_name": "setpay-supervisor"}
        )
    except (ConnectionError, aiormq.exceptions.AMQPError) as exc:
        raise SupervisorError(
            f"cannot connect to vhost {vhost!r} ({type(exc).__name__}); run `setpay broker init`"
        ) from None
    try:
        channel = await connection.channel()
        await channel.declare_queue(LOCK_QUEUE, exclusive=True, auto_delete=True)
    except aiormq.exceptions.ChannelLockedResource:
        await connection.close()
        raise _locked(vhost) from None
    except BaseException:
        await connection.close()
        raise
    return connection


def read_roles(settings: Settings) -> list[str]:
    """The roles the running supervisor keeps up (``run/roles``), in start order."""
    try:
        return [r for r in (run_dir(settings) / "roles").read_text().split() if r]
    except OSError:
        return []


def add_roles(settings: Settings, roles: Sequence[str]) -> None:
    """Have the running supervisor start ``roles`` too (it reads ``run/roles`` every tick)."""
    if recorded_pid(run_dir(settings) / "supervisor.pid") is None:
        raise SupervisorError(f"no supervisor runs under {settings.data_dir}")
    wanted = list(dict.fromkeys([*read_roles(settings), *roles]))
    _write_atomic(run_dir(settings) / "roles", "\n".join(wanted) + "\n")


def read_replicas(settings: Settings) -> dict[str, int]:
    """How many processes of each role the supervisor keeps up (``run/replicas``, Rule 6)."""
    try:
        raw = json.loads((run_dir(settings) / "replicas").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(r): int(n) for r, n in raw.items()
            if isinstance(n, int) and 1 <= n <= MAX_REPLICAS}  # fmt: skip


def _write_replicas(settings: Settings, counts: Mapping[str, int]) -> None:
    _write_atomic(run_dir(settings) / "replicas", json.dumps(dict(sorted(counts.items()))))


def set_replicas(settings: Settings, counts: Mapping[str, int]) -> dict[str, int]:
    """Have the running supervisor run ``counts`` processes of those roles (Rule 6); the
    other roles keep theirs. Returns every role's count from now on."""
    if recorded_pid(run_dir(settings) / "supervisor.pid") is None:
        raise SupervisorError(f"no supervisor runs under {settings.data_dir}")
    merged = {**read_replicas(settings), **counts}
    _write_replicas(settings, merged)
    return merged


def wanted_children(roles: Sequence[str], replicas: Mapping[str, int]) -> list[Child]:
    """Every process to keep up: each role's default instance, replicas 0..count-1."""
    return [child_of(role, n) for role in roles for n in range(replicas.get(role, 1))]


def _listening_ports() -> set[int]:
    """The TCP ports something on this machine listens on (Linux /proc/net/tcp{,6})."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _front_doors_taken(settings: Settings, roles: Sequence[str]) -> list[str]:
    """The front-door ports of ``roles`` another process listens on already (Rule 6)."""
    doors = {"wallet": ("wallet", settings.wallet_web_port),
             "merchant": ("pos", settings.pos_web_port)}  # fmt: skip
    taken = _listening_ports()
    return [f"{name} port {port}" for role, (name, port) in doors.items()
            if role in roles and port and port in taken]  # fmt: skip


def supervise(settings: Settings, roles: Sequence[str], *, grace: float = 10.0,
              max_restarts: int = 5, replicas: Mapping[str, int] | None = None) -> int:
    """Be the supervisor: take the vhost lock, run ``roles`` (and those ``add_roles`` asks
    for), restart any that dies, stop all on SIGTERM/SIGINT. Exit 3 if the lock is held."""
    rd = run_dir(settings)
    holder = recorded_pid(rd / "supervisor.pid")
    if holder is not None and holder != os.getpid():
        raise SupervisorError(
            f"a supervisor runs already under {settings.data_dir} (pid {holder}); "
            "`setpay down` first"
        )
    # Rule 2: our pid first, before any child exists (the spawner wrote it too; we own it now).
    _write_atomic(rd / "supervisor.pid", str(os.getpid()))
    for name in ("supervisor.error", "supervisor.health"):
        (rd / name).unlink(missing_ok=True)
    try:
        taken = _front_doors_taken(settings, roles)
        if taken:
            raise SupervisorError(
                f"another process listens on the {' and '.join(taken)}: stop it or give "
                "this environment its own SETPAY_WALLET_WEB_PORT / SETPAY_POS_WEB_PORT"
            )
        _write_replicas(settings, replicas or {})
        return asyncio.run(_supervise(settings, roles, grace, max_restarts))
    except SupervisorError as exc:
        (rd / "supervisor.error").write_text(str(exc))
        log.error("supervisor_refused", reason=str(exc))
        return 3
    finally:
        if recorded_pid(rd / "supervisor.pid") == os.getpid():
            (rd / "supervisor.pid").unlink(missing_ok=True)


async def _supervise(settings: Settings, roles: Sequence[str], grace: float,
                     max_restarts: int) -> int:
    rd = run_dir(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    procs: dict[Child, subprocess.Popen[bytes]] = {}
    states: dict[str, str] = {}
    lock = await hold_lock(settings)
    try:
        # The thin clients' HTTPS front doors (wallet, POS) serve the test environment's TLS
        # certificate unless a real one is configured: made before any child starts.
        if ensure_test_certificate(settings):
            log.info("tls_test_certificate_made", directory=str(tls_dir(settings)))
        _write_atomic(rd / "roles", "\n".join(roles) + "\n")
        restarts: dict[Child, int] = {}
        retry_at: dict[Child, float] = {}
        retiring: dict[Child, tuple[subprocess.Popen[bytes], float]] = {}
        announced = False
        relock_at = 0.0
        while not stop.is_set():
            if lock.is_closed and time.monotonic() >= relock_at:
                # The broker restarted or dropped us: take the lock again before anyone else.
                try:
                    lock = await hold_lock(settings)
                    log.warning("environment_lock_retaken", vhost=settings.broker_vhost)
                except EnvironmentLocked as exc:
                    log.error("environment_lock_lost", reason=str(exc))
                    relock_at = time.monotonic() + 10.0
                except SupervisorError:
                    relock_at = time.monotonic() + 1.0  # the broker is not back yet
            wanted_roles = read_roles(settings)
            wanted = wanted_children(wanted_roles, read_replicas(settings))
            # Every other role signs through the keystore: it starts once the keystore is ready.
            keystore_ready = ("keystore" not in wanted_roles
                              or states.get("keystore.main") == "ready")  # fmt: skip
            for child in wanted:
                if child in procs or child.role not in ROLES or child in retiring:
                    continue
                if child.role != "keystore" and not keystore_ready:
                    continue
                if resolve(child.role) is None:
                    states[child.name] = "not available"
                    continue
                procs[child] = spawn(settings, child)  # in procs at once: stopped in finally
                restarts[child] = 0
                log.info("actor_spawned", actor=child.name, pid=procs[child].pid)
            for child in [c for c in procs if c not in wanted]:  # Rule 6: a lowered count
                retiring[child] = (procs.pop(child), time.monotonic() + grace)
                retry_at.pop(child, None)
                states.pop(child.name, None)
                _retire(retiring[child][0])
                log.info("actor_retiring", actor=child.name, pid=retiring[child][0].pid)
            for child, (proc, kill_at) in list(retiring.items()):
                if proc.poll() is not None:
                    del retiring[child]
                    (rd / f"{child.name}.pid").unlink(missing_ok=True)
                    log.info("actor_retired", actor=child.name, code=proc.returncode)
                elif time.monotonic() >= kill_at:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            for child, proc in list(procs.items()):
                if proc.poll() is None:
                    ready = is_ready(read_health(settings, child))
                    states[child.name] = "ready" if ready else "starting"
                elif restarts[child] >= max_restarts:
                    if states.get(child.name) != "gave up":
                        log.error("actor_gave_up", actor=child.name, code=proc.returncode)
                    states[child.name] = "gave up"
                elif child not in retry_at:
                    # Back off 1, 2, 4... s so a missing dependency does not use up the restarts.
                    retry_at[child] = time.monotonic() + 2.0 ** restarts[child]
                    states[child.name] = "restarting"
                elif time.monotonic() >= retry_at[child]:
                    del retry_at[child]
                    restarts[child] += 1
                    log.warning("actor_restart", actor=child.name, code=proc.returncode)
                    procs[child] = spawn(settings, child)
                    states[child.name] = "starting"
            _write_atomic(rd / "supervisor.health",
                          json.dumps({"pid": os.getpid(), "children": states}))  # fmt: skip
            all_ready = bool(states) and all(s == "ready" for s in states.values())
            if all_ready and not announced:
                log.info("environment_ready", actors=sorted(states))
            announced = all_ready
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
    finally:
        procs.update({c: p for c, (p, _) in retiring.items()})
        outcome = await asyncio.to_thread(
            stop_pids, {c.name: p.pid for c, p in procs.items()}, grace
        )
        for proc in procs.values():
            proc.poll()  # reap
        log.info("environment_stopped", outcome=outcome)
        for child in procs:
            (rd / f"{child.name}.pid").unlink(missing_ok=True)
        for name in ("roles", "replicas", "supervisor.health"):
            (rd / name).unlink(missing_ok=True)
        if not lock.is_closed:
            await lock.close()
    return 0


def _retire(proc: subprocess.Popen[bytes]) -> None:
    """Ask a replica no longer wanted to stop (it drains its in-flight work, Rule 6)."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)


def start_detached(settings: Settings, roles: Sequence[str], *,
                   extra_env: Mapping[str, str] | None = None,
                   replicas: Mapping[str, int] | None = None) -> int:  # fmt: skip
    """Start the supervisor as a background process running ``roles``; its pid, recorded in
    ``run/supervisor.pid`` before this returns (so `setpay down` finds it at once).
    ``extra_env``: settings for it (and so its children) beyond this process's environment
    (a trace replay's ``SETPAY_CLOCK``)."""
    rd = run_dir(settings)
    holder = recorded_pid(rd / "supervisor.pid")
    if holder is not None:
        raise SupervisorError(
            f"an environment runs already under {settings.data_dir} (supervisor pid {holder}); "
            "`setpay down` first"
        )
    for name in ("supervisor.error", "supervisor.health", "roles", "replicas"):  # leftovers
        (rd / name).unlink(missing_ok=True)
    logfile = (rd / "supervisor.log").open("ab")
    counts = ",".join(f"{r}={n}" for r, n in sorted((replicas or {}).items()))
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
        [*SETPAY, "up", "--foreground", "--roles", ",".join(roles),
         *(["--replicas", counts] if counts else [])],
        stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **(extra_env or {}),
             "SETPAY_DATA_DIR": str(settings.data_dir.resolve())},
    )  # fmt: skip
    logfile.close()
    _write_atomic(rd / "supervisor.pid", str(proc.pid))
    return proc.pid


def supervisor_health(settings: Settings) -> dict[str, str] | None:
    """Each child's state as the running supervisor last reported it, or None if no
    supervisor runs."""
    rd = run_dir(settings)
    if recorded_pid(rd / "supervisor.pid") is None:
        return None
    try:
        return dict(json.loads((rd / "supervisor.health").read_text())["children"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def wait_ready(settings: Settings, roles: Sequence[str], timeout: float) -> None:
    """Wait until the supervisor reports every available role of ``roles`` ready (with no
    roles: until it holds the lock). ``SupervisorError`` if it stopped, refused, a role gave
    up, or ``timeout`` passed."""
    rd = run_dir(settings)
    deadline = time.monotonic() + timeout
    while True:
        wanted = [c.name for c in wanted_children(roles, read_replicas(settings))]
        states = supervisor_health(settings)
        if states is None:
            try:
                why = (rd / "supervisor.error").read_text().strip()
            except OSError:
                why = "it was stopped"
            raise SupervisorError(f"the supervisor is not running: {why}")
        gave_up = [i for i in wanted if states.get(i) == "gave up"]
        if gave_up:
            raise SupervisorError(f"{', '.join(gave_up)} kept failing; see {rd}/*.log")
        if (rd / "supervisor.health").exists() and all(
            states.get(i) in ("ready", "not available") for i in wanted
        ):
            return
        if time.monotonic() > deadline:
            late = [i for i in wanted if states.get(i) != "ready"]
            raise SupervisorError(f"not ready within {timeout:g}s: {', '.join(late)}; see {rd}")
        time.sleep(0.2)


def wait_scaled(settings: Settings, timeout: float) -> list[str]:
    """Wait until the running processes are exactly those the counts want (Rule 6): every
    wanted one ready, every retired one exited. Returns their names, sorted."""
    rd = run_dir(settings)
    deadline = time.monotonic() + timeout
    while True:
        wanted = {c.name for c in wanted_children(read_roles(settings), read_replicas(settings))
                  if resolve(c.role) is not None}  # fmt: skip
        states = supervisor_health(settings)
        if states is None:
            raise SupervisorError("the supervisor is not running")
        running = {f.stem for f in rd.glob("*.pid") if f.stem != "supervisor"}
        if running == wanted and all(states.get(n) == "ready" for n in wanted):
            return sorted(wanted)
        if time.monotonic() > deadline:
            late = sorted(n for n in wanted if states.get(n) != "ready")
            extra = sorted(running - wanted)
            raise SupervisorError(
                f"not scaled within {timeout:g}s: not ready {', '.join(late) or '-'}; "
                f"still stopping {', '.join(extra) or '-'}; see {rd}"
            )
        time.sleep(0.2)


def down(settings: Settings, grace: float = 15.0) -> dict[str, str]:
    """Stop the supervisor and every process recorded under run/ (Rule 4); how each ended."""
    rd = run_dir(settings)
    # Children the supervisor stops itself are reported as "stopped".
    outcome = {f.stem: "stopped" for f in rd.glob("*.pid") if f.stem != "supervisor"}
    supervisor = recorded_pid(rd / "supervisor.pid")
    if supervisor is not None:
        # It drains its children itself: the grace period plus a margin for its own exit.
        outcome.update(stop_pids({"supervisor": supervisor}, grace + 10))
    # Read the children only now: a supervisor that was starting may have spawned more.
    alive: dict[str, int] = {}
    for pidfile in sorted(rd.glob("*.pid")):
        pid = recorded_pid(pidfile)
        if pid is not None and pidfile.stem != "supervisor":
            alive[pidfile.stem] = pid
        elif pidfile.stem != "supervisor":
            outcome.setdefault(pidfile.stem, "stopped")
    outcome.update(stop_pids(alive, grace))
    for pidfile in rd.glob("*.pid"):
        pidfile.unlink(missing_ok=True)
    for name in ("roles", "replicas", "supervisor.health"):
        (rd / name).unlink(missing_ok=True)
    return outcome
