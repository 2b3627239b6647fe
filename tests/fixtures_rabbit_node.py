"""Extra RabbitMQ nodes of the tests' own, on this machine: started from the installed
``rabbitmq-server`` with a node name, ports, data and log directories, config and plugin
list of their own (so they share nothing with the machine's broker but the binaries and the
Erlang cookie), and stopped and removed afterwards. A node boots in about ten seconds.

Used for a broker that listens only on TLS (tests/broker/test_tls_broker.py)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from actors.web import tls
from setpay.config import Settings
from tests.ops.environments import free_port

RABBITMQ_SERVER = shutil.which("rabbitmq-server") or "/usr/sbin/rabbitmq-server"
RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"


@dataclass
class Node:
    name: str  # Erlang node name, e.g. setpay-t1a2b3@localhost
    port: int  # the AMQP (or AMQPS) listener
    base: Path
    ca: Path | None = None  # the CA file clients trust, for a TLS node

    def ctl(self, *args: str, stdin: str | None = None) -> str:
        """``rabbitmqctl -n <this node> ...``; its output."""
        out = subprocess.run([RABBITMQCTL, "-q", "-n", self.name, *args], input=stdin,
                             capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
        return out.stdout

    def stop(self) -> None:
        subprocess.run([RABBITMQCTL, "-q", "-n", self.name, "stop"], capture_output=True,
                       timeout=120, check=False)  # fmt: skip
        shutil.rmtree(self.base, ignore_errors=True)


def _give_to_broker(path: Path) -> None:
    """As root, rabbitmq-server runs as the ``rabbitmq`` user: let it own its directories."""
    if os.getuid() != 0:
        return
    entry = pwd.getpwnam("rabbitmq")
    for p in [path, *path.rglob("*")]:
        os.chown(p, entry.pw_uid, entry.pw_gid)


def start_node(*, tls_listener: bool = False) -> Node:
    """Boot a node of its own; with ``tls_listener`` it has no plain AMQP listener, only AMQPS
    with a test CA's server certificate for 127.0.0.1. Its directory is made under the system
    temporary directory, not pytest's: the broker's own user must reach it (pytest's are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="setpay-node-"))
    base.chmod(0o755)
    name = f"setpay-{base.name.removeprefix('setpay-node-').lower()}@localhost"
    port = free_port()
    (base / "plugins").write_text("[].\n")
    lines = ["loopback_users = none", "log.console = false"]
    node = Node(name, port, base)
    if tls_listener:
        settings = Settings(data_dir=base / "pki")
        tls.ensure_test_certificate(settings)
        cert, key = tls.server_files(settings)
        node.ca = tls.ca_file(settings)
        lines += ["listeners.tcp = none", f"listeners.ssl.default = 127.0.0.1:{port}",
                  f"ssl_options.cacertfile = {node.ca}", f"ssl_options.certfile = {cert}",
                  f"ssl_options.keyfile = {key}", "ssl_options.verify = verify_none",
                  "ssl_options.fail_if_no_peer_cert = false"]  # fmt: skip
    else:
        lines += [f"listeners.tcp.default = 127.0.0.1:{port}"]
    (base / "rabbit.conf").write_text("\n".join(lines) + "\n")
    for sub in ("mnesia", "log"):
        (base / sub).mkdir(exist_ok=True)
    _give_to_broker(base)
    env = {**os.environ,
           "RABBITMQ_NODENAME": name, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
           "RABBITMQ_DIST_PORT": str(free_port()),
           "RABBITMQ_MNESIA_BASE": str(base / "mnesia"), "RABBITMQ_LOG_BASE": str(base / "log"),
           "RABBITMQ_CONFIG_FILE": str(base / "rabbit.conf"),
           "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "plugins"),
           "RABBITMQ_PID_FILE": str(base / "pid")}  # fmt: skip
    subprocess.run([RABBITMQ_SERVER, "-detached"], env=env, check=True, timeout=60,
                   capture_output=True)  # fmt: skip
    try:
        subprocess.run([RABBITMQCTL, "-q", "-n", name, "wait", "--timeout", "90",
                        str(base / "pid")], check=True, timeout=120, capture_output=True)  # fmt: skip
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in (base / "log").glob("*.log"))
        node.stop()
        raise RuntimeError(f"RabbitMQ node {name} did not start: {exc}\n{logs}") from None
    return node
