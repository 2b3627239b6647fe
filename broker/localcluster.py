"""RabbitMQ nodes and a three-node cluster of one's own on this machine, for operators
(`setpay broker cluster start|status|stop|kill|boot`) and tests: each node started from the
installed ``rabbitmq-server`` with a name, ports, data and log directories, config and plugin
list of its own, so it shares nothing with the machine's broker but the binaries, epmd and
the Erlang cookie. A node boots in about ten seconds.

Rule 1: every listener of a node (AMQP or AMQPS, management HTTP, Erlang distribution) binds
127.0.0.1; each node has its own name (``<prefix>-<n>@localhost``) and ports.
Rule 2: a cluster lives in one directory (default /tmp/setpay-cluster): ``cluster.json``
(nodes, ports, pids), ``cluster.env`` (0600; ``source`` it: SETPAY_AMQP_URL naming every node
in its ``failover`` option (broker/connection.py Rule 5), the management URL and admin login,
quorum queues, SETPAY_RABBITMQCTL), ``admin.password`` (0600; the admin user's password,
never printed, never on a command line: rabbitmqctl reads it on stdin) and ``bin/rabbitmqctl``
(rabbitmqctl bound to the first node of this cluster whose VM runs, which broker/admin.py
falls back to when the management API does not answer). ``guest`` is deleted.
Rule 3: one cluster per directory and per node name: ``start`` refuses a directory whose nodes
run and a node name epmd already knows; ``kill``/``boot`` refuse a node that is down/up, and an
unknown node is named with the ones there are. ``boot`` returns once the node is a running
member of the cluster again.
Rule 4: ``stop`` stops every node (SIGKILL for one that does not stop) and removes the
directory; a start that fails does the same. Every failure is a ``ClusterError`` naming the
node (and, for a node that did not start, the end of its logs).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.errors import BrokerError

RABBITMQ_SERVER = shutil.which("rabbitmq-server") or "/usr/sbin/rabbitmq-server"
RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
HOST = "127.0.0.1"
DEFAULT_DIR = Path("/tmp/setpay-cluster")  # noqa: S108 - a throw-away cluster, like pytest's
ADMIN_USER = "setpay-admin"
EPMD_PORT = 4369
STATE_FILE, ENV_FILE, PASSWORD_FILE = "cluster.json", "cluster.env", "admin.password"


class ClusterError(BrokerError):
    """A local node or cluster could not be started, found, killed, booted or stopped."""


def free_port() -> int:
    """A TCP port nothing listens on at the moment, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def alive(pid: int | None) -> bool:
    """``pid`` exists and is not a zombie."""
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@dataclass(frozen=True)
class TlsFiles:
    """A node's server certificate chain and key, and the CA file its clients trust."""

    ca: Path
    cert: Path
    key: Path


@dataclass
class Node:
    """One RabbitMQ node of our own: its Erlang name, ports and directory."""

    name: str  # Erlang node name, e.g. setpay-1@localhost
    port: int  # the AMQP (or AMQPS) listener
    base: Path
    ca: Path | None = None  # the CA file clients trust, for a TLS node
    management_port: int = 0  # 0: no management plugin
    dist_port: int = field(default_factory=free_port)

    @property
    def pid_file(self) -> Path:
        return self.base / "pid"

    @property
    def env(self) -> dict[str, str]:
        """The environment ``rabbitmq-server`` runs this node with."""
        return {**os.environ,
                "RABBITMQ_NODENAME": self.name, "RABBITMQ_NODE_IP_ADDRESS": HOST,
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                    "-kernel inet_dist_use_interface {127,0,0,1}",
                "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.base / "log"),
                "RABBITMQ_CONFIG_FILE": str(self.base / "rabbit.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "plugins"),
                "RABBITMQ_PID_FILE": str(self.pid_file)}  # fmt: skip

    def pid(self) -> int | None:
        """The pid of the node's Erlang VM while it runs, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def ctl(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        """``rabbitmqctl -n <this node> ...``; its output, or ClusterError."""
        try:
            out = _run(
                [RABBITMQCTL, "-q", "-n", self.name, *args], input=stdin, text=True, timeout=timeout
            )
        except subprocess.CalledProcessError as exc:
            why = " ".join((exc.stderr or exc.stdout or "").split())[:300]
            raise ClusterError(f"rabbitmqctl {args[0]} on {self.name} failed: {why}") from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClusterError(f"rabbitmqctl {args[0]} on {self.name}: {exc}") from None
        return out.stdout

    def boot(self) -> None:
        """Start (again) the node's Erlang VM, detached (``wait`` for it)."""
        try:
            _run([RABBITMQ_SERVER, "-detached"], env=self.env, timeout=60, text=True)
        except subprocess.CalledProcessError as exc:
            why = " ".join((exc.stderr or exc.stdout or "").split())[:300]
            raise ClusterError(f"rabbitmq-server for {self.name} failed: {why}") from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClusterError(f"rabbitmq-server for {self.name} could not run: {exc}") from None

    def wait(self) -> None:
        """Until the node runs its broker, or ClusterError with the end of its logs."""
        try:
            _run([RABBITMQCTL, "-q", "-n", self.name, "wait", "--timeout", "120",
                  str(self.pid_file)], timeout=150)  # fmt: skip
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            logs = "\n".join(p.read_text(errors="replace")[-2000:]
                             for p in (self.base / "log").glob("*.log"))  # fmt: skip
            raise ClusterError(f"RabbitMQ node {self.name} did not start: {exc}\n{logs}") from None

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM: a crash, no goodbye to its peers or clients."""
        pid = self.pid()
        if pid is None:
            raise ClusterError(f"node {self.name} is not running")
        os.kill(pid, signal.SIGKILL)
        _until(lambda: not alive(pid), 30, f"node {self.name} (pid {pid}) to die")
        self.pid_file.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the node (SIGKILL if it does not) and remove its directory."""
        _stop_all([self])
        shutil.rmtree(self.base, ignore_errors=True)


def _run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """One run of the installed RabbitMQ scripts (fixed binaries, an argument list, no
    shell), its output captured; CalledProcessError if it fails."""
    return subprocess.run(command, capture_output=True, check=True, **kwargs)  # noqa: S603


def _until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def _stop_all(nodes: Iterable[Node]) -> None:
    """``rabbitmqctl stop`` every running node at once; SIGKILL whatever still runs after."""
    running = [(n, n.pid()) for n in nodes]
    stops = [subprocess.Popen([RABBITMQCTL, "-q", "-n", n.name, "stop", str(n.pid_file)],  # noqa: S603
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for n, pid in running if pid]  # fmt: skip
    for stop in stops:
        try:
            stop.wait(timeout=120)
        except subprocess.TimeoutExpired:
            stop.kill()
            stop.wait()
    for _node, pid in running:
        if pid and alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _until(lambda p=pid: not alive(p), 30, f"pid {pid} to die")


def _give_to_broker(path: Path) -> None:
    """As root, rabbitmq-server runs as the ``rabbitmq`` user: let it own its directories."""
    if os.getuid() != 0:
        return
    entry = pwd.getpwnam("rabbitmq")
    for p in [path, *path.rglob("*")]:
        os.chown(p, entry.pw_uid, entry.pw_gid)


def _prepare(node: Node, tls: Callable[[Path], TlsFiles] | None = None) -> None:
    """Write the node's config and plugin list into its (new) directory (Rule 1). With
    ``tls`` (making the server certificate in the directory given) it has no plain AMQP
    listener, only AMQPS."""
    node.base.mkdir(parents=True, exist_ok=True)
    node.base.chmod(0o755)  # the broker's own user must reach it
    plugins = ["rabbitmq_management"] if node.management_port else []
    (node.base / "plugins").write_text(f"[{','.join(plugins)}].\n")
    lines = ["loopback_users = none", "log.console = false"]
    if node.management_port:
        lines += [f"management.tcp.ip = {HOST}", f"management.tcp.port = {node.management_port}"]
    if tls is not None:
        files = tls(node.base)
        node.ca = files.ca
        lines += ["listeners.tcp = none", f"listeners.ssl.default = {HOST}:{node.port}",
                  f"ssl_options.cacertfile = {files.ca}", f"ssl_options.certfile = {files.cert}",
                  f"ssl_options.keyfile = {files.key}", "ssl_options.verify = verify_none",
                  "ssl_options.fail_if_no_peer_cert = false"]  # fmt: skip
    else:
        lines += [f"listeners.tcp.default = {HOST}:{node.port}"]
    (node.base / "rabbit.conf").write_text("\n".join(lines) + "\n")
    for sub in ("mnesia", "log"):
        (node.base / sub).mkdir(exist_ok=True)
    _give_to_broker(node.base)


def _boot_and_wait(nodes: list[Node]) -> None:
    """Boot ``nodes`` side by side and wait for each; on failure stop them all (Rule 4)."""
    try:
        for node in nodes:
            node.boot()
        for node in nodes:
            node.wait()
    except BaseException:
        for node in nodes:
            node.stop()
        raise


def _join(nodes: list[Node]) -> None:
    """Join every node but the first to the first: one cluster."""
    for node in nodes[1:]:
        node.ctl("stop_app")
        node.ctl("join_cluster", nodes[0].name)
        node.ctl("start_app")


def start_node(*, tls: Callable[[Path], TlsFiles] | None = None) -> Node:
    """A node of its own in a new temporary directory, booted (about ten seconds)."""
    base = Path(tempfile.mkdtemp(prefix="setpay-node-"))
    node = Node(f"setpay-{base.name.removeprefix('setpay-node-').lower()}@localhost",
                free_port(), base)  # fmt: skip
    _prepare(node, tls)
    _boot_and_wait([node])
    return node


def start_cluster(size: int = 3) -> list[Node]:
    """``size`` nodes of their own (``start_node``), the others joined to the first: one
    cluster; each node stopped and removed by its ``stop``."""
    nodes = []
    for _ in range(size):
        base = Path(tempfile.mkdtemp(prefix="setpay-node-"))
        nodes.append(Node(f"setpay-{base.name.removeprefix('setpay-node-').lower()}@localhost",
                          free_port(), base))  # fmt: skip
        _prepare(nodes[-1])
    _boot_and_wait(nodes)
    try:
        _join(nodes)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def registered_names() -> set[str]:
    """The node names (``name`` of ``name@host``) epmd on this machine knows."""
    try:
        with socket.create_connection((HOST, EPMD_PORT), timeout=5) as s:
            s.sendall(b"\x00\x01n")  # NAMES_REQ
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return set()
    return {line.split()[1] for line in data[4:].decode(errors="replace").splitlines()
            if line.startswith("name ")}  # fmt: skip


# -- the cluster of a directory ------------------------------------------------------------------


@dataclass
class Cluster:
    """The nodes of one cluster directory (Rule 2)."""

    dir: Path
    nodes: list[Node]
    admin_user: str = ADMIN_USER

    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def env_file(self) -> Path:
        return self.dir / ENV_FILE

    @property
    def password_file(self) -> Path:
        return self.dir / PASSWORD_FILE

    @property
    def rabbitmqctl(self) -> Path:
        return self.dir / "bin" / "rabbitmqctl"

    @property
    def amqp_url(self) -> str:
        """Every node, the first as the URL's host, the others in ``failover`` (no login: each
        process gets its own through ``setpay.config.login_url``)."""
        first, *others = self.nodes
        failover = ",".join(f"{HOST}:{n.port}" for n in others)
        return f"amqp://{HOST}:{first.port}/" + (f"?failover={failover}" if others else "")

    def management_urls(self) -> list[str]:
        return [f"http://{HOST}:{n.management_port}" for n in self.nodes]

    def environment(self) -> dict[str, str]:
        """The ``SETPAY_*`` variables of ``cluster.env``."""
        return {"SETPAY_AMQP_URL": self.amqp_url,
                "SETPAY_BROKER_MANAGEMENT_URL": self.management_urls()[0],
                "SETPAY_BROKER_ADMIN_USER": self.admin_user,
                "SETPAY_BROKER_ADMIN_PASSWORD_FILE": str(self.password_file),
                "SETPAY_BROKER_QUEUE_TYPE": "quorum",
                "SETPAY_RABBITMQCTL": str(self.rabbitmqctl)}  # fmt: skip

    @classmethod
    def start(cls, size: int = 3, dir: Path = DEFAULT_DIR, *, prefix: str = "setpay") -> Cluster:
        """Boot ``size`` nodes ``<prefix>-1..size@localhost`` in ``dir``, join them, make the
        admin user, write the cluster's files (Rules 2 and 3)."""
        if size < 1:
            raise ClusterError(f"a cluster needs at least one node, not {size}")
        dir = Path(dir).absolute()
        _claim(dir)
        names = [f"{prefix}-{n}@localhost" for n in range(1, size + 1)]
        taken = sorted(n for n in names if n.partition("@")[0] in registered_names())
        if taken:
            raise ClusterError(f"node {taken[0]} already runs on this machine (another "
                               f"cluster?); give another prefix")  # fmt: skip
        dir.mkdir(parents=True, exist_ok=True)
        dir.chmod(0o755)  # the broker's own user reaches its node directories
        nodes = [Node(name, free_port(), dir / f"node-{n}", management_port=free_port())
                 for n, name in enumerate(names, 1)]  # fmt: skip
        cluster = cls(dir, nodes)
        try:
            for node in nodes:
                _prepare(node)
            _boot_and_wait(nodes)
            _join(nodes)
            cluster._make_admin()
            cluster._write_files()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @classmethod
    def load(cls, dir: Path = DEFAULT_DIR) -> Cluster:
        """The cluster ``start`` made in ``dir``, from its cluster.json."""
        dir = Path(dir).absolute()
        try:
            state = json.loads((dir / STATE_FILE).read_text())
        except FileNotFoundError:
            raise ClusterError(f"no cluster in {dir} (no {STATE_FILE}): start one with "
                               f"`setpay broker cluster start`") from None  # fmt: skip
        except (OSError, ValueError) as exc:
            raise ClusterError(f"{dir / STATE_FILE} unreadable: {exc}") from None
        nodes = [Node(n["name"], n["amqp_port"], Path(n["dir"]),
                      management_port=n["management_port"], dist_port=n["dist_port"])
                 for n in state["nodes"]]  # fmt: skip
        return cls(dir, nodes, state["admin_user"])

    def node(self, which: str) -> Node:
        """The node named ``which``: its number (``2``), name (``setpay-2``) or full name."""
        for n, node in enumerate(self.nodes, 1):
            if which in (str(n), node.name, node.name.partition("@")[0]):
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise ClusterError(f"unknown node {which!r}; the nodes of {self.dir} are {known}")

    def kill(self, which: str) -> Node:
        """SIGKILL node ``which`` (it must be running)."""
        node = self.node(which)
        node.kill()
        self._write_state()
        return node

    def boot(self, which: str) -> Node:
        """Start node ``which`` again (it must be down); back once it is a running member."""
        node = self.node(which)
        if node.running():
            raise ClusterError(f"node {node.name} is already running")
        node.boot()
        node.wait()
        _until(lambda: node.name in self.running_members(), 120,
               f"node {node.name} to rejoin the cluster")  # fmt: skip
        self._write_state()
        return node

    def stop(self) -> None:
        """Stop every node and remove the directory (Rule 4)."""
        _stop_all(self.nodes)
        shutil.rmtree(self.dir, ignore_errors=True)

    def running_members(self) -> list[str]:
        """The cluster's running nodes as the first running node sees them ([] if none)."""
        for node in self.nodes:
            if not node.running():
                continue
            try:
                status = json.loads(node.ctl("cluster_status", "--formatter", "json",
                                             timeout=60))  # fmt: skip
            except (ClusterError, ValueError):
                continue
            return sorted(status.get("running_nodes", []))
        return []

    def status(self) -> dict[str, Any]:
        """Each node up/down with its pid and ports, and the running members."""
        members = self.running_members()
        nodes = [{"name": n.name, "up": n.running(), "pid": n.pid(), "member": n.name in members,
                  "amqp_port": n.port, "management_port": n.management_port,
                  "dist_port": n.dist_port} for n in self.nodes]  # fmt: skip
        return {"dir": str(self.dir), "env_file": str(self.env_file),
                "running_members": members, "nodes": nodes}  # fmt: skip

    # -- its files -------------------------------------------------------------------------------

    def _make_admin(self) -> None:
        """The admin user (administrator, every permission on ``/``), its password in a 0600
        file, given to rabbitmqctl on stdin; ``guest`` deleted."""
        password = secrets.token_urlsafe(24)
        _write_private(self.password_file, password + "\n")
        first = self.nodes[0]
        first.ctl("add_user", self.admin_user, stdin=password + "\n")
        first.ctl("set_user_tags", self.admin_user, "administrator")
        first.ctl("set_permissions", "-p", "/", self.admin_user, ".*", ".*", ".*")
        first.ctl("delete_user", "guest")

    def _write_files(self) -> None:
        self._write_state()
        self.rabbitmqctl.parent.mkdir(exist_ok=True)
        checks = " ".join(shlex.quote(f"{n.name}={n.pid_file}") for n in self.nodes)
        self.rabbitmqctl.write_text(
            "#!/bin/sh\n"
            f"# rabbitmqctl bound to setpay's local cluster in {self.dir}: the first of its\n"
            "# nodes whose Erlang VM runs.\n"
            f"for entry in {checks}; do\n"
            '  pidfile="${entry#*=}"\n'
            '  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then\n'
            f'    exec {shlex.quote(RABBITMQCTL)} -n "${{entry%%=*}}" "$@"\n'
            "  fi\n"
            "done\n"
            f"echo 'rabbitmqctl: no node of the cluster in {self.dir} runs' >&2\n"
            "exit 69\n"
        )
        self.rabbitmqctl.chmod(0o700)
        lines = [f"# setpay's local RabbitMQ cluster in {self.dir} "
                 "(`setpay broker cluster status`)"]  # fmt: skip
        for node, url in zip(self.nodes, self.management_urls(), strict=True):
            lines.append(f"# {node.name}: amqp {HOST}:{node.port}, management {url}, "
                         f"distribution {node.dist_port}")  # fmt: skip
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.environment().items()]
        _write_private(self.env_file, "\n".join(lines) + "\n")

    def _write_state(self) -> None:
        state = {
            "dir": str(self.dir),
            "admin_user": self.admin_user,
            "amqp_url": self.amqp_url,
            "env_file": str(self.env_file),
            "password_file": str(self.password_file),
            "rabbitmqctl": str(self.rabbitmqctl),
            "nodes": [{"name": n.name, "dir": str(n.base), "amqp_port": n.port,
                       "management_port": n.management_port, "dist_port": n.dist_port,
                       "pid": n.pid()} for n in self.nodes],
        }  # fmt: skip
        _write_private(self.state_file, json.dumps(state, indent=2) + "\n", mode=0o644)


def _claim(dir: Path) -> None:
    """Make ``dir`` free for a new cluster: refuse one whose nodes run, or a non-empty
    directory that is no cluster's; clear a stopped cluster's leftovers."""
    if (dir / STATE_FILE).exists():
        old = Cluster.load(dir)
        running = [n.name for n in old.nodes if n.running()]
        if running:
            raise ClusterError(f"a cluster already runs in {dir} ({', '.join(running)}): "
                               f"`setpay broker cluster stop` first")  # fmt: skip
        old.stop()
    elif dir.exists() and any(dir.iterdir()):
        raise ClusterError(f"{dir} is not empty and holds no cluster; give another directory")


def _write_private(path: Path, text: str, *, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
