"""Extra RabbitMQ nodes of the tests' own, on this machine: started from the installed
``rabbitmq-server`` with a node name, ports, data and log directories, config and plugin
list of their own (so they share nothing with the machine's broker but the binaries and the
Erlang cookie), and stopped and removed afterwards. A node boots in about ten seconds.

Used for a broker that listens only on TLS (tests/broker/test_tls_broker.py) and for a
three-node cluster (tests/broker/test_cluster.py)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
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

    env: dict[str, str] = field(default_factory=dict)

    def boot(self) -> None:
        """Start (again) the node's Erlang VM, detached."""
        subprocess.run([RABBITMQ_SERVER, "-detached"], env=self.env, check=True, timeout=60,
                       capture_output=True)  # fmt: skip

    def wait(self) -> None:
        """Until the node runs its broker, or RuntimeError with the end of its logs."""
        try:
            subprocess.run([RABBITMQCTL, "-q", "-n", self.name, "wait", "--timeout", "120",
                            str(self.base / "pid")], check=True, timeout=150,
                           capture_output=True)  # fmt: skip
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            logs = "\n".join(p.read_text(errors="replace")[-2000:]
                             for p in (self.base / "log").glob("*.log"))  # fmt: skip
            self.stop()
            raise RuntimeError(f"RabbitMQ node {self.name} did not start: {exc}\n{logs}") from None

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM: a crash, no goodbye to its peers or clients."""
        pid = int((self.base / "pid").read_text().strip())
        os.kill(pid, signal.SIGKILL)
        (self.base / "pid").unlink(missing_ok=True)

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


def _launch(*, tls_listener: bool = False) -> Node:
    """Start a node of its own, detached (``_wait`` for it): its directory under the system
    temporary directory, not pytest's, since the broker's own user must reach it (pytest's are
    0700). With ``tls_listener`` it has no plain AMQP listener, only AMQPS with a test CA's
    server certificate for 127.0.0.1."""
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
    node.env = {**os.environ,
                "RABBITMQ_NODENAME": name, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_DIST_PORT": str(free_port()),
                "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(base / "log"),
                "RABBITMQ_CONFIG_FILE": str(base / "rabbit.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "plugins"),
                "RABBITMQ_PID_FILE": str(base / "pid")}  # fmt: skip
    node.boot()
    return node


def start_node(*, tls_listener: bool = False) -> Node:
    """A node of its own, booted (about ten seconds)."""
    node = _launch(tls_listener=tls_listener)
    node.wait()
    return node


def start_cluster(size: int = 3) -> list[Node]:
    """``size`` nodes booted side by side, the others joined to the first: one cluster."""
    nodes = [_launch() for _ in range(size)]
    try:
        for node in nodes:
            node.wait()
        for node in nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", nodes[0].name)
            node.ctl("start_app")
        return nodes
    except BaseException:
        for node in nodes:
            node.stop()
        raise
