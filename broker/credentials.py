"""Broker passwords of the actor identities, kept under ``settings.data_dir``.

Rule 1: a password is generated once with ``secrets`` and reused on every later run; the file
(``<data_dir>/broker/credentials.json``) is created with mode 0600 and written atomically.
Rule 2: passwords are never printed or logged; only ``amqp_url`` hands one out, to connect.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from broker.errors import BrokerError
from setpay.config import login_url


class CredentialsError(BrokerError):
    """The credentials file is unreadable, malformed, or lacks the identity asked for."""


def credentials_path(data_dir: Path) -> Path:
    """Where the identities' broker passwords are kept."""
    return Path(data_dir) / "broker" / "credentials.json"


class CredentialStore:
    """``user -> password`` in a 0600 JSON file; users are broker-wide, not per vhost."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._passwords: dict[str, str] = self._read()

    def _read(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise CredentialsError(f"cannot read {self.path} ({type(exc).__name__})") from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise CredentialsError(f"{self.path} is not a user -> password map")
        return data

    def get(self, user: str) -> str | None:
        return self._passwords.get(user)

    def ensure(self, user: str) -> tuple[str, bool]:
        """The stored password of ``user``, generating and saving one first if needed.
        Returns (password, generated now)."""
        known = self._passwords.get(user)
        if known is not None:
            return known, False
        self._passwords[user] = secrets.token_urlsafe(24)
        self._save()
        return self._passwords[user], True

    def forget(self, user: str) -> None:
        """Drop ``user``'s password (for cleanup of throw-away identities)."""
        if self._passwords.pop(user, None) is not None:
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        # O_EXCL-free but mode set at creation: the secret is never world-readable, even briefly.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(self._passwords, out, indent=1, sort_keys=True)
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)


def amqp_url(data_dir: Path, user: str, vhost: str, base_url: str) -> str:
    """The AMQP URL for ``user`` on ``vhost`` with its stored password; host and port come
    from ``base_url`` (``settings.amqp_url``). Raises CredentialsError if none is stored."""
    password = CredentialStore(credentials_path(data_dir)).get(user)
    if password is None:
        raise CredentialsError(f"no broker password stored for {user!r}; run `setpay broker init`")
    return login_url(base_url, user, password, vhost)
