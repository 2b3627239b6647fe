"""`setpay snapshot save|restore` without a broker: what is copied, what is refused
(actors/snapshot.py Rules 1-3). The live round trip (a restored environment answering as the
one it came from) is tests/trace/test_regression.py.

Rule 1: save copies every file but run/, the top-level *.out and softhsm2.conf, with a
manifest of digests; restore writes a softhsm2.conf naming its own token directory.
Rule 2: both refuse, in one line, while a process recorded under run/ is alive.
Rule 3: restore refuses a non-empty data dir, another user prefix or suite, and a file that
differs from the manifest.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from actors import snapshot
from setpay.config import load
from tests.ops.environments import ROOT, SETPAY


def _settings(data_dir: Path, prefix: str = "tsnap-") -> object:
    return load({"SETPAY_CONFIG": "", "SETPAY_DATA_DIR": str(data_dir),
                 "SETPAY_BROKER_USER_PREFIX": prefix})  # fmt: skip


def _environment(data_dir: Path) -> None:
    for rel, content in {
        "tokens/abc/token.object": b"token", "keystore/token-pins.json": b"{}",
        "broker/credentials.json": b"{}", "issuer/host1/accounts.sqlite": b"db",
        "softhsm2.conf": b"directories.tokendir = /elsewhere\n", "run/supervisor.log": b"log",
        "demo.out": b"out",
    }.items():  # fmt: skip
        (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / rel).write_bytes(content)


def test_save_and_restore_copy_the_state_not_the_run(tmp_path: Path) -> None:
    src, snap, dst = tmp_path / "src", tmp_path / "snap", tmp_path / "dst"
    _environment(src)
    done = snapshot.save(_settings(src), snap)  # type: ignore[arg-type]
    assert done.files == 4
    manifest = snapshot.read_manifest(snap)
    assert sorted(manifest["files"]) == [  # type: ignore[call-overload]
        "broker/credentials.json", "issuer/host1/accounts.sqlite", "keystore/token-pins.json",
        "tokens/abc/token.object"]  # fmt: skip
    assert manifest["broker_user_prefix"] == "tsnap-"
    restored = _settings(dst)
    snapshot.restore_files(restored, snap)  # type: ignore[arg-type]
    assert (dst / "issuer/host1/accounts.sqlite").read_bytes() == b"db"
    assert not (dst / "run").exists() and not (dst / "demo.out").exists()
    assert f"directories.tokendir = {(dst / 'tokens').resolve()}" in (
        dst / "softhsm2.conf").read_text()  # fmt: skip
    assert oct((dst / "tokens/abc/token.object").stat().st_mode & 0o777) == "0o600"


def test_refusals(tmp_path: Path) -> None:
    src, snap = tmp_path / "src", tmp_path / "snap"
    _environment(src)
    snapshot.save(_settings(src), snap)  # type: ignore[arg-type]
    with pytest.raises(snapshot.SnapshotError, match="not empty"):
        snapshot.restore_files(_settings(src), snap)  # type: ignore[arg-type]
    with pytest.raises(snapshot.SnapshotError, match="broker_user_prefix"):
        snapshot.restore_files(_settings(tmp_path / "a", "other-"), snap)  # type: ignore[arg-type]
    with pytest.raises(snapshot.SnapshotError, match="not empty"):
        snapshot.save(_settings(src), snap)  # type: ignore[arg-type]
    (snap / "data/issuer/host1/accounts.sqlite").write_bytes(b"changed")
    with pytest.raises(snapshot.SnapshotError, match=r"accounts\.sqlite is missing or differs"):
        snapshot.restore_files(_settings(tmp_path / "b"), snap)  # type: ignore[arg-type]


def test_nothing_is_copied_while_the_environment_runs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _environment(src)
    (src / "run" / "supervisor.pid").write_text(str(os.getpid()))  # a live process
    env = {**os.environ, "SETPAY_CONFIG": "", "SETPAY_DATA_DIR": str(src),
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    for args in (("save", str(tmp_path / "snap")), ("restore", str(tmp_path / "snap"))):
        proc = subprocess.run(
            [*SETPAY, "snapshot", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "runs" in lines[0] and "setpay down" in lines[0], lines
    assert not (tmp_path / "snap").exists()
