"""Runs actors as separate OS processes: ``run`` one role, ``up`` all, ``down`` stops them.

Rule 1: roles are found through ``ROLES`` (role -> "module:factory"); a role whose module
does not exist yet is skipped by ``up`` and refused by ``run`` with a clear error. A factory
is called ``factory(settings, instance, health_file=...)`` and returns an ``Actor``.
Rule 2: state lives under ``<data_dir>/run/``: ``<identity>.pid``, ``<identity>.health``
(JSON written by the actor), ``<identity>.log``, ``supervisor.pid``.
Rule 3: ``down`` sends SIGTERM, waits ``grace`` seconds for in-flight work to finish, then
SIGKILLs what is left, and removes the pid files.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.credentials import CredentialsError
from broker.provision import identity_url
from setpay.config import Settings
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
# `python -m setpay.cli` would load the CLI as __main__, a second copy of CommandError.
SETPAY = (sys.executable, "-c", "import sys; from setpay.cli import main; sys.exit(main())")
# The test environment `setpay up` brings up, in start order (keystore first: others sign).
UP_ROLES: tuple[str, ...] = ("keystore", "ca", "gateway", "issuer", "merchant", "wallet")
DEFAULT_INSTANCE: dict[str, str] = {
    "keystore": "main", "ca": "main", "gateway": "pg1", "issuer": "host1",
    "merchant": "pos1", "wallet": "main", "echo": "main",
}


class SupervisorError(Exception):
    """A role is unknown or cannot be started; the message says which and why."""


def run_dir(settings: Settings) -> Path:
    path = settings.data_dir / "run"
    path.mkdir(parents=True, exist_ok=True)
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
    health = run_dir(settings) / f"{role}.{instance}.health"
    actor = factory(settings, instance, health_file=health)
    from setpay.lifecycle import NotReady, run_service

    try:
        return asyncio.run(run_service(actor))
    except NotReady as exc:
        raise SupervisorError(f"{role}.{instance} cannot start: {exc}") from None
    finally:
        health.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class Child:
    role: str
    instance: str

    @property
    def identity(self) -> str:
        return f"{self.role}.{self.instance}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def child_env(settings: Settings, child: Child) -> dict[str, str]:
    """The child's environment: our data dir, and its own broker login when one is provisioned
    (`setpay broker init`), so RabbitMQ stamps and checks its identity on every publish."""
    env = {**os.environ, "SETPAY_DATA_DIR": str(settings.data_dir.resolve())}
    try:
        env["SETPAY_AMQP_URL"] = identity_url(
            settings.data_dir,
            child.identity,
            settings.broker_vhost,
            settings.amqp_url,
            user_prefix=settings.broker_user_prefix,
        )
    except CredentialsError:
        log.warning("no_broker_login", identity=child.identity, hint="run `setpay broker init`")
    return env


def spawn(settings: Settings, child: Child) -> subprocess.Popen[bytes]:
    """Start ``setpay run ROLE --id ID`` as its own process and session; record its pid."""
    rd = run_dir(settings)
    logfile = (rd / f"{child.identity}.log").open("ab")
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
        [*SETPAY, "run", child.role, "--id", child.instance],
        stdout=logfile,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C on the terminal goes to the supervisor only
        env=child_env(settings, child),
    )
    logfile.close()
    (rd / f"{child.identity}.pid").write_text(str(proc.pid))
    return proc


def read_health(settings: Settings, child: Child) -> dict[str, Any] | None:
    path = run_dir(settings) / f"{child.identity}.health"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def wait_ready(
    settings: Settings, children: Sequence[Child], procs: dict[Child, subprocess.Popen[bytes]],
    timeout: float,
) -> list[Child]:
    """Wait until every child reports ready; return those that did not (died or timed out)."""
    deadline = time.monotonic() + timeout
    pending = list(children)
    while pending and time.monotonic() < deadline:
        for child in list(pending):
            health = read_health(settings, child)
            if health and health.get("ready"):
                pending.remove(child)
            elif procs[child].poll() is not None:
                pending.remove(child)
                return [child, *pending]
        time.sleep(0.1)
    return pending


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
        _pid_alive(pid) for n, pid in pids.items() if outcome[n] == "terminated"
    ):
        _reap()
        time.sleep(0.05)
    for name, pid in pids.items():
        _reap()
        if outcome[name] == "terminated" and _pid_alive(pid):
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


def supervise(settings: Settings, roles: Sequence[str], *, ready_timeout: float = 30.0,
              grace: float = 10.0, max_restarts: int = 5) -> int:
    """Start ``roles`` as processes, restart any that dies, stop all on SIGTERM/SIGINT."""
    children = [Child(r, DEFAULT_INSTANCE.get(r, "main")) for r in roles if resolve(r)]
    skipped = [r for r in roles if r not in {c.role for c in children}]
    if skipped:
        log.info("roles_not_available", roles=skipped)
    if not children:
        raise SupervisorError("none of the requested roles is available yet")
    rd = run_dir(settings)
    (rd / "supervisor.pid").write_text(str(os.getpid()))
    stopping = False

    def on_signal(_sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    procs = {c: spawn(settings, c) for c in children}
    restarts = dict.fromkeys(children, 0)
    try:
        late = wait_ready(settings, children, procs, ready_timeout)
        if late:
            log.error("roles_not_ready", roles=[c.identity for c in late])
        else:
            log.info("environment_ready", actors=[c.identity for c in children])
        while not stopping:
            for child, proc in list(procs.items()):
                if proc.poll() is not None and not stopping:
                    if restarts[child] >= max_restarts:
                        log.error("actor_gave_up", actor=child.identity, code=proc.returncode)
                        continue
                    restarts[child] += 1
                    log.warning("actor_restart", actor=child.identity, code=proc.returncode)
                    procs[child] = spawn(settings, child)
            time.sleep(0.2)
    finally:
        outcome = stop_pids({c.identity: p.pid for c, p in procs.items()}, grace)
        log.info("environment_stopped", outcome=outcome)
        for child in children:
            (rd / f"{child.identity}.pid").unlink(missing_ok=True)
        (rd / "supervisor.pid").unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def start_detached(settings: Settings, roles: Sequence[str]) -> int:
    """Start the supervisor as a background process; return its pid."""
    rd = run_dir(settings)
    logfile = (rd / "supervisor.log").open("ab")
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
        [*SETPAY, "up", "--foreground", "--roles", ",".join(roles)],
        stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "SETPAY_DATA_DIR": str(settings.data_dir.resolve())},
    )
    logfile.close()
    return proc.pid


def down(settings: Settings, grace: float = 15.0) -> dict[str, str]:
    """Stop the supervisor and every actor recorded under run/; remove their pid files."""
    rd = run_dir(settings)
    pids: dict[str, int] = {}
    for pidfile in sorted(rd.glob("*.pid")):
        try:
            pids[pidfile.stem] = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            pidfile.unlink(missing_ok=True)
    supervisor = pids.pop("supervisor", None)
    outcome: dict[str, str] = {}
    if supervisor is not None:
        # The supervisor drains its children itself; give it the grace period plus a margin.
        outcome.update(stop_pids({"supervisor": supervisor}, grace + 5))
    alive = {n: p for n, p in pids.items() if _pid_alive(p)}
    outcome.update(stop_pids(alive, grace))
    for name in pids:
        outcome.setdefault(name, "stopped")
        (rd / f"{name}.pid").unlink(missing_ok=True)
    (rd / "supervisor.pid").unlink(missing_ok=True)
    return outcome
