"""`setpay keystore init` and `create-key` against a throw-away token directory.

Each command runs in its own process: SoftHSM2 reads SOFTHSM2_CONF once per process, and the
test process already uses the session's token.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _setpay(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SETPAY_DATA_DIR": str(tmp_path),
        "SETPAY_KEYSTORE_TOKEN_LABEL": "cli-test",
        "SETPAY_KEYSTORE_PIN": "98765",
        "SETPAY_LOG_FORMAT": "json",
    }
    return subprocess.run(
        [str(Path(sys.executable).parent / "setpay"), *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_init_is_idempotent_and_create_key_works(tmp_path: Path) -> None:
    """First init creates config and token; the second changes nothing; a key can be made."""
    first = _setpay(tmp_path, "keystore", "init")
    assert first.returncode == 0, first.stderr
    assert "wrote" in first.stdout and "created token 'cli-test'" in first.stdout
    assert (
        (tmp_path / "softhsm2.conf")
        .read_text()
        .startswith(f"directories.tokendir = {(tmp_path / 'tokens').resolve()}")
    )
    assert any((tmp_path / "tokens").iterdir())
    second = _setpay(tmp_path, "keystore", "init")
    assert second.returncode == 0
    assert "kept" in second.stdout and "already present" in second.stdout
    assert "98765" not in first.stdout + first.stderr + second.stdout + second.stderr
    args = ("keystore", "create-key", "--label", "issuer.host1/pvk", "--kind", "hmac-sha256",
            "--usage", "secret")  # fmt: skip
    made = _setpay(tmp_path, *args)
    assert made.returncode == 0, made.stderr
    assert "created issuer.host1/pvk" in made.stdout
    again = _setpay(tmp_path, *args)
    assert again.returncode == 2 and "already exists" in again.stderr
