"""Throw-away test environments driven through the real `setpay` command, and their cleanup.

Rule 1: each environment has its own data dir, vhost ``setpay-test-<tag>-<hex>``, broker user
prefix ``t<hex>-``, issuer port and HTTPS ports (wallet, POS); the commands run as
``python -m cli`` from this checkout.
Rule 2: ``remove_env`` leaves nothing behind, also after a failure: `setpay down`, then SIGKILL
for any process still carrying the data dir in its environment, then the prefixed users and
the vhost are deleted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from broker import admin
from broker.admin import management_url
from setpay.config import load

ROOT = Path(__file__).resolve().parents[2]
SETPAY = (sys.executable, "-m", "cli")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Env:
    """One environment's ``SETPAY_*`` variables and the ways to act on it."""

    vars: dict[str, str]

    @classmethod
    def of(cls, variables: dict[str, str]) -> Env:
        return cls(dict(variables))

    @property
    def data_dir(self) -> Path:
        return Path(self.vars["SETPAY_DATA_DIR"]).resolve()

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def vhost(self) -> str:
        return self.vars["SETPAY_BROKER_VHOST"]

    @property
    def prefix(self) -> str:
        return self.vars["SETPAY_BROKER_USER_PREFIX"]

    def setpay(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run one `setpay` command to its end."""
        return subprocess.run(
            [*SETPAY, *args], env=self.vars, cwd=ROOT, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip

    def start(self, *args: str) -> subprocess.Popen[str]:
        """Start one `setpay` command in the background (output to ``<data dir>/<cmd>.out``)."""
        out = (self.data_dir / f"{args[0]}.out").open("a")
        try:
            return subprocess.Popen(
                [*SETPAY, *args], env=self.vars, cwd=ROOT, stdout=out,
                stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        finally:
            out.close()

    def recorded_pids(self) -> dict[str, int]:
        """Every pid file under run/: name -> pid."""
        pids = {}
        for pidfile in self.run_dir.glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids[pidfile.stem] = int(pidfile.read_text().strip())
        return pids

    def processes(self) -> list[int]:
        """Live processes (not zombies) whose environment names this data dir: the
        supervisor, its children, the keystore's workers, and any `setpay` command on it."""
        # Children get the resolved path, commands the one they were given.
        markers = {f"SETPAY_DATA_DIR={d}".encode()
                   for d in (self.data_dir, self.vars["SETPAY_DATA_DIR"])}  # fmt: skip
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = set((entry / "environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if environ & markers and alive(int(entry.name)):
                found.append(int(entry.name))
        return found


def alive(pid: int) -> bool:
    """``pid`` exists in /proc and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` until true; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def new_env(data_dir: Path, tag: str, **overrides: str) -> Env:
    """A fresh environment's variables (nothing is created on the broker yet): on the machine's
    broker, or on the one an ``SETPAY_AMQP_URL`` override names (with its admin login, e.g. a
    local cluster's ``Cluster.environment()``)."""
    variables = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "SETPAY_DATA_DIR": str(data_dir),
        "SETPAY_BROKER_VHOST": f"setpay-test-{tag}-{secrets.token_hex(4)}",
        "SETPAY_BROKER_USER_PREFIX": f"t{secrets.token_hex(3)}-",
        "SETPAY_ISSUER_PORT": str(free_port()),
        "SETPAY_WALLET_WEB_PORT": str(free_port()),
        "SETPAY_POS_WEB_PORT": str(free_port()),
        "SETPAY_KEYSTORE_WORKERS": "1",
        "SETPAY_LOG_FORMAT": "json",
        # every test client registers from 127.0.0.1 (the limit itself: tests/web)
        "SETPAY_WEB_SOURCE_REGISTRATIONS": "100000",
    }
    variables.pop("SOFTHSM2_CONF", None)  # the environment's own token, under its data dir
    variables.pop("SETPAY_AMQP_URL", None)  # the machine's broker unless one is given
    return Env({**variables, **overrides})


def admin_of(env: Env) -> admin.Endpoint:
    """The management API and admin login of ``env``'s broker (its settings: the machine's
    broker, or the one its ``SETPAY_AMQP_URL`` names)."""
    settings = load(env.vars)
    return admin.Endpoint(management_url(settings.amqp_url, settings.broker_management_url),
                          settings.broker_admin_user, settings.broker_admin_password)  # fmt: skip


def remove_env(env: Env, *, vhost: bool = True) -> None:
    """Stop everything of ``env`` and delete its broker users (and its vhost) (Rule 2)."""
    try:
        env.setpay("down", "--grace", "5", timeout=120)
    finally:
        for pid in env.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Other runs on this machine restart the broker now and then: retry while it is away.
        _retrying(lambda: [admin.delete_user(u) for u in admin.list_users()
                           if u.startswith(env.prefix)])  # fmt: skip
        if vhost:
            _retrying(lambda: env.vhost in admin.list_vhosts() and admin.delete_vhost(env.vhost))


def _retrying(step: Callable[[], object], timeout: float = 120.0) -> None:
    """Run ``step``, retrying an ``AdminError`` until ``timeout`` s have passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            step()
            return
        except admin.AdminError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
