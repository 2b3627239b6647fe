"""`setpay snapshot save|restore DIR`: a stopped environment's state, to bring it back later.

Rule 1: a snapshot is a copy of the data dir of a *stopped* environment: the SoftHSM2 token
directory (every key, and the token's PINs file), the broker credentials file, and every
party's stores and files (CA store, gateway identity, ledger and books, issuer accounts,
merchant and wallet stores, trust caches, the keystore's used-PI register), with
``manifest.json`` naming the environment's suite, broker user prefix and token label and the
SHA-256 of every file. Not copied: ``run/`` (pids, health files, logs), the top-level
``*.out`` outputs, and ``softhsm2.conf`` (it names the token directory by absolute path:
restore writes one for its own).
Rule 2: neither save nor restore runs while an environment runs on that data dir (a live
supervisor or any recorded process): one line says so, nothing is copied. A running
environment's stores and token change under a copy.
Rule 3: restore goes into a data dir that holds no environment (absent or empty), checks every
file against the manifest, and refuses a snapshot whose suite or broker user prefix differ
from the settings (key labels and broker logins carry the prefix: the restored environment
must use the snapshot's). Then it provisions the configured vhost as `setpay broker init`
does (users with the snapshot's passwords, permissions, topology), so `setpay up` starts the
restored environment on a fresh vhost with the same keys, certificates and state.
Rule 4: what is printed names files, counts and the vhost; never a password or key. The
files keep their modes (0600 in 0700 directories: ``cli.main``'s umask).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from actors import supervisor
from setpay.cli import CommandError
from setpay.clock import CLOCK
from setpay.config import Settings

MANIFEST = "manifest.json"
DATA = "data"
FORMAT = 1
SKIPPED_DIRS = frozenset({"run"})
SKIPPED_FILES = frozenset({"softhsm2.conf"})


class SnapshotError(CommandError):
    """A snapshot cannot be saved or restored; the message says why (one line)."""


@dataclass(frozen=True, slots=True)
class Done:
    """What a save or restore copied."""

    files: int
    bytes: int


def running(data_dir: Path) -> list[str]:
    """Processes recorded under ``data_dir/run`` that are alive (the supervisor first)."""
    rd = data_dir / "run"
    alive = []
    for pidfile in sorted(rd.glob("*.pid"), key=lambda p: p.stem != "supervisor"):
        pid = supervisor.recorded_pid(pidfile)
        if pid is not None:
            alive.append(f"{pidfile.stem} (pid {pid})")
    return alive


def _refuse_running(data_dir: Path, what: str) -> None:
    alive = running(data_dir)
    if alive:
        raise SnapshotError(f"cannot {what} while the environment under {data_dir} runs "
                            f"({', '.join(alive[:3])}): `setpay down` first")  # fmt: skip


def _files(data_dir: Path) -> Iterator[Path]:
    """Every file of the environment under ``data_dir`` (Rule 1), relative, sorted."""
    for path in sorted(data_dir.rglob("*")):
        rel = path.relative_to(data_dir)
        if rel.parts[0] in SKIPPED_DIRS or not path.is_file() or path.is_symlink():
            continue
        if len(rel.parts) == 1 and (rel.name in SKIPPED_FILES or rel.suffix == ".out"):
            continue
        yield rel


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copyfile(src, dst)
    dst.chmod(0o600)


def save(settings: Settings, target: Path) -> Done:
    """Copy the stopped environment of ``settings.data_dir`` into ``target`` (Rules 1, 2)."""
    data_dir = settings.data_dir
    if not (data_dir / "tokens").is_dir():
        raise SnapshotError(f"{data_dir} holds no environment (no token directory)")
    _refuse_running(data_dir, "save a snapshot")
    if target.exists() and any(target.iterdir()):
        raise SnapshotError(f"{target} is not empty: a snapshot goes into a new directory")
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    files: dict[str, str] = {}
    total = 0
    for rel in _files(data_dir):
        _copy(data_dir / rel, target / DATA / rel)
        files[rel.as_posix()] = _sha256(target / DATA / rel)
        total += (target / DATA / rel).stat().st_size
    _refuse_running(data_dir, "save a snapshot")  # started while copying: the copy is void
    manifest = {
        "format": FORMAT, "saved_ms": CLOCK.now_ms(), "suite": settings.suite,
        "broker_user_prefix": settings.broker_user_prefix,
        "broker_vhost": settings.broker_vhost,
        "keystore_token_label": settings.keystore_token_label, "files": files,
    }  # fmt: skip
    (target / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    (target / MANIFEST).chmod(0o600)
    return Done(len(files), total)


def read_manifest(source: Path) -> dict[str, object]:
    """The manifest of the snapshot in ``source``; ``SnapshotError`` if there is none."""
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except (OSError, ValueError):
        raise SnapshotError(f"{source} is not a snapshot (no readable {MANIFEST})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SnapshotError(f"{source}: snapshot format {manifest.get('format')!r} "
                            f"(this reads {FORMAT})")  # fmt: skip
    return manifest


def _check_fits(settings: Settings, manifest: dict[str, object]) -> None:
    for name in ("suite", "broker_user_prefix", "keystore_token_label"):
        if manifest.get(name) != getattr(settings, name):
            raise SnapshotError(
                f"the snapshot's {name} is {manifest.get(name)!r}, the settings' "
                f"{getattr(settings, name)!r}: its keys and logins need the same "
                f"(set SETPAY_{name.upper()})"
            )


def restore_files(settings: Settings, source: Path) -> Done:
    """Copy the snapshot in ``source`` into the empty data dir of ``settings`` and write its
    SoftHSM2 config (Rules 1-3, without the broker)."""
    from keystore.token import softhsm_conf_text

    data_dir = settings.data_dir
    _refuse_running(data_dir, "restore a snapshot")
    manifest = read_manifest(source)
    _check_fits(settings, manifest)
    if data_dir.exists() and any(data_dir.iterdir()):
        raise SnapshotError(f"{data_dir} is not empty: restore into a fresh data dir")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise SnapshotError(f"{source}: the manifest lists no files")
    for rel, digest in files.items():
        src = source / DATA / rel
        if not src.is_file() or _sha256(src) != digest:
            raise SnapshotError(f"{source}: {rel} is missing or differs from the manifest")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    total = 0
    for rel in files:
        _copy(source / DATA / rel, data_dir / rel)
        total += (data_dir / rel).stat().st_size
    settings.softhsm_conf.write_text(softhsm_conf_text(settings.token_dir))
    settings.softhsm_conf.chmod(0o600)
    return Done(len(files), total)


def provision(settings: Settings) -> list[str]:
    """`setpay broker init` on the configured vhost with the restored credentials (Rule 3);
    the report's lines (no password in them)."""
    from broker.provision import init

    report = asyncio.run(init(
        vhost=settings.broker_vhost, data_dir=settings.data_dir, base_url=settings.amqp_url,
        admin_user=settings.broker_admin_user, admin_password=settings.broker_admin_password,
        user_prefix=settings.broker_user_prefix,
    ))  # fmt: skip
    return report.lines()


def restore(settings: Settings, source: Path) -> Done:
    """Files, then the broker: a restored environment `setpay up` can start (Rule 3)."""
    from broker.errors import BrokerError

    _refuse_running(settings.data_dir, "restore a snapshot")
    if supervisor.LOCK_QUEUE in _queues(settings.broker_vhost):
        raise SnapshotError(f"an environment runs on vhost {settings.broker_vhost!r}: "
                            "restore onto a vhost of its own")  # fmt: skip
    done = restore_files(settings, source)
    try:
        provision(settings)
    except BrokerError as exc:
        raise SnapshotError(f"files restored, but the broker could not be provisioned: {exc}"
                            ) from None  # fmt: skip
    return done


def _queues(vhost: str) -> list[str]:
    from broker import admin
    from broker.errors import AdminError

    try:
        return list(admin.list_names("queues", vhost)) if vhost in admin.list_vhosts() else []
    except AdminError:
        return []


def _save(args: argparse.Namespace, settings: Settings) -> int:
    done = save(settings, Path(args.dir))
    print(f"saved {done.files} files ({done.bytes} bytes) of {settings.data_dir} to {args.dir}")
    return 0


def _restore(args: argparse.Namespace, settings: Settings) -> int:
    done = restore(settings, Path(args.dir))
    print(f"restored {done.files} files ({done.bytes} bytes) into {settings.data_dir}; "
          f"vhost {settings.broker_vhost} provisioned; `setpay up` starts it")  # fmt: skip
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `setpay snapshot save|restore DIR`."""
    snap = sub.add_parser("snapshot", help="save or restore a stopped environment's state")
    commands = snap.add_subparsers(dest="snapshot_command", metavar="COMMAND", required=True)
    sv = commands.add_parser("save", help="copy the stopped environment into a new DIR")
    sv.add_argument("dir")
    sv.set_defaults(func=_save)
    rs = commands.add_parser("restore", help="bring a snapshot back into an empty data dir")
    rs.add_argument("dir")
    rs.set_defaults(func=_restore)
