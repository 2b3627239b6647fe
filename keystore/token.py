"""Setting up the project's own SoftHSM2 token (never the system one).

Rule 1: every process that loads SoftHSM2 first calls ``use_softhsm_conf`` so ``SOFTHSM2_CONF``
points at ``settings.softhsm_conf``, whose ``directories.tokendir`` is ``settings.token_dir``.
Rule 2: ``init_token`` is idempotent: an existing token with the label is left untouched.
Rule 3: a new token's PIN and SO PIN are the configured ones when set, else generated with
``secrets`` and kept in ``pins_path`` (0600 in a 0700 directory), never printed.
Rule 4: ``token_pins`` is the one place a PIN is read: the stored pair if present, else the
configured one, else ``LEGACY_PINS`` (tokens made before PINs were generated keep working).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from keystore.errors import KeystoreError
from setpay.config import Settings


class TokenSetupError(KeystoreError):
    """The SoftHSM2 token could not be created or inspected."""


@dataclass(frozen=True, slots=True)
class TokenPins:
    """The user PIN (the keystore's login) and the security officer's PIN of the token."""

    pin: str
    so_pin: str

    def __repr__(self) -> str:  # PINs stay out of reprs and tracebacks
        return "TokenPins(***)"


# The fixed defaults before `keystore init` generated PINs: read only for a token that has
# no stored pair and no configured PIN, never used to create one (Rule 4).
LEGACY_PINS: Final = TokenPins("1234", "12345678")


def pins_path(settings: Settings) -> Path:
    """Where `keystore init` keeps the PINs it generated (readable by the keystore only)."""
    return settings.data_dir / "keystore" / "token-pins.json"


def token_pins(settings: Settings) -> TokenPins:
    """The token's PINs (Rule 4): stored, else configured, else the legacy defaults."""
    path = pins_path(settings)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        data = None
    except (OSError, ValueError) as exc:
        raise TokenSetupError(f"cannot read {path} ({type(exc).__name__})") from None
    if data is not None:
        if not (isinstance(data, dict) and isinstance(data.get("pin"), str)
                and isinstance(data.get("so_pin"), str)):  # fmt: skip
            raise TokenSetupError(f"{path} is not a PIN pair")
        return TokenPins(data["pin"], data["so_pin"])
    return TokenPins(settings.keystore_pin or LEGACY_PINS.pin,
                     settings.keystore_so_pin or LEGACY_PINS.so_pin)  # fmt: skip


def token_pin(settings: Settings) -> str:
    """The user PIN every keystore login uses (``token_pins(settings).pin``)."""
    return token_pins(settings).pin


def _new_pins(settings: Settings) -> tuple[TokenPins, bool]:
    """The PINs a new token gets (Rule 3), in ``token_pins``' order so that what creates the
    token and what logs in agree; and whether they were generated now (to be stored)."""
    if pins_path(settings).exists():  # an earlier init's pair, its token since removed
        return token_pins(settings), False
    if settings.keystore_pin and settings.keystore_so_pin:
        return TokenPins(settings.keystore_pin, settings.keystore_so_pin), False
    return TokenPins(
        settings.keystore_pin or secrets.token_urlsafe(18),
        settings.keystore_so_pin or secrets.token_urlsafe(18),
    ), True


def _store_pins(settings: Settings, pins: TokenPins) -> None:
    path = pins_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"pin": pins.pin, "so_pin": pins.so_pin}, out)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


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
    pins, generated = _new_pins(settings)
    if generated:  # stored before the token exists: a token is never left with unknown PINs
        _store_pins(settings, pins)
    # The PINs go on softhsm2-util's command line because it reads them only from argv or a
    # terminal; the process lives for milliseconds on a machine we own.
    _run(
        [
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            pins.so_pin,
            "--pin",
            pins.pin,
        ],
        env,
    )
    done.append(f"created token {label!r} in {settings.token_dir.resolve()}")
    if generated:
        done.append(f"generated its PIN and SO PIN into {pins_path(settings)} (mode 0600)")
    return done
