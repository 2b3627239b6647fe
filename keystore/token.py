"""Setting up the project's own SoftHSM2 token (never the system one).

Rule 1: every process that loads SoftHSM2 first calls ``use_softhsm_conf`` so ``SOFTHSM2_CONF``
points at ``settings.softhsm_conf``, whose ``directories.tokendir`` is ``settings.token_dir``.
Rule 2: ``init_token`` is idempotent: an existing token with the label is left untouched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from keystore.errors import KeystoreError
from setpay.config import Settings


class TokenSetupError(KeystoreError):
    """The SoftHSM2 token could not be created or inspected."""


def softhsm_conf_text(token_dir: Path) -> str:
    return (
        f"directories.tokendir = {token_dir.resolve()}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )


def use_softhsm_conf(settings: Settings) -> None:
    """Point SoftHSM2 (loaded later in this process or its children) at our config file."""
    os.environ["SOFTHSM2_CONF"] = str(settings.softhsm_conf.resolve())


def _util() -> str:
    path = shutil.which("softhsm2-util")
    if path is None:
        raise TokenSetupError("softhsm2-util not found; install the softhsm2 package")
    return path


def _run(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(  # noqa: S603 - fixed tool, arguments built here
        [_util(), *args], env=env, capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode != 0:
        # softhsm2-util errors never echo the PINs; keep only its first line.
        first = (result.stderr or result.stdout).strip().splitlines()[:1]
        raise TokenSetupError(f"softhsm2-util {args[0]} failed: {' '.join(first)}")
    return result.stdout


def token_labels(settings: Settings) -> list[str]:
    """Labels of the initialised tokens in our token directory."""
    env = {**os.environ, "SOFTHSM2_CONF": str(settings.softhsm_conf.resolve())}
    out = _run(["--show-slots"], env)
    return [m.group(1).strip() for m in re.finditer(r"^\s+Label:\s+(.*)$", out, re.MULTILINE)]


def init_token(settings: Settings) -> list[str]:
    """Write the SoftHSM2 config and create the token if absent; return what was done."""
    done: list[str] = []
    settings.token_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = settings.softhsm_conf
    text = softhsm_conf_text(settings.token_dir)
    if not conf.exists() or conf.read_text() != text:
        conf.write_text(text)
        conf.chmod(0o600)
        done.append(f"wrote {conf} (tokendir {settings.token_dir.resolve()})")
    else:
        done.append(f"kept {conf}")
    label = settings.keystore_token_label
    if label in token_labels(settings):
        done.append(f"token {label!r} already present; left unchanged")
        return done
    env = {**os.environ, "SOFTHSM2_CONF": str(conf.resolve())}
    # The PINs go on softhsm2-util's command line because it reads them only from argv or a
    # terminal; the process lives for milliseconds on a machine we own.
    _run(
        [
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            settings.keystore_so_pin,
            "--pin",
            settings.keystore_pin,
        ],
        env,
    )
    done.append(f"created token {label!r} in {settings.token_dir.resolve()}")
    return done
