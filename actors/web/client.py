"""The thin clients' HTTPS side: one connection pool to one service, sessions by bearer token.

Rule 1: TLS trusts only the environment's CA file (tls.client_context); the base URL is the
service's (``service_url``). Rule 2: a client logs in once (``login``) and reuses the bearer
token for every call; the passphrase is not kept. Rule 3: a refusal is ``ApiError`` with the
status and the service's one-line text; an unreachable service is ``ApiError`` status 0
naming the cause, never a traceback.
Rule 4: a call made with ``retry_for`` seconds is sent again while the service cannot be
reached (status 0: a refused or reset connection, one a killed replica of the service had
open) until that time has passed, 0.1 s after the first failure, doubling to 2 s; only calls
that are safe to repeat ask for it (a read, a login, a new PInit, finishing a purchase whose
claim and PReq the wallet's store keeps: actors/wallet/store.py Rule 4).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from actors.web import tls
from setpay.config import Settings


class ApiError(Exception):
    """A service refused or could not be reached (``status`` 0)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def service_url(settings: Settings, service: str) -> str:
    """The base URL of ``service`` ("wallet" or "pos") as a client on this machine reaches it."""
    if service == "wallet" and settings.wallet_url:
        return settings.wallet_url.rstrip("/")
    port = settings.wallet_web_port if service == "wallet" else settings.pos_web_port
    host = settings.web_host
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - a listen-all address: reach it locally
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}"


@dataclass
class Token:
    """One logged-in session of a client (Rule 2)."""

    user: str
    scope: str
    bearer: str = field(repr=False)
    csrf: str = field(repr=False)


class HttpApi:
    """A pool of HTTPS connections to one service (Rules 1, 3)."""

    def __init__(self, base_url: str, cafile: Path, *, timeout: float = 60.0,
                 connections: int = 256) -> None:  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.cafile = cafile
        self.timeout = timeout
        self.connections = connections
        self._http: aiohttp.ClientSession | None = None

    @classmethod
    def for_service(cls, settings: Settings, service: str, timeout: float = 60.0) -> HttpApi:
        return cls(service_url(settings, service), tls.ca_file(settings), timeout=timeout)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            try:
                context = tls.client_context(self.cafile)
            except (OSError, ValueError) as exc:
                raise ApiError(0, f"no CA file to trust at {self.cafile} "
                                  f"({type(exc).__name__}): is the environment up?") from None
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, limit=self.connections),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            )  # fmt: skip
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def call(self, method: str, path: str, body: Any = None,
                   token: Token | None = None, *, retry_for: float = 0.0) -> Any:  # fmt: skip
        """One request; the decoded JSON answer, or ``ApiError`` (Rules 3, 4)."""
        deadline = time.monotonic() + retry_for
        delay = 0.1
        while True:
            try:
                return await self._once(method, path, body, token)
            except ApiError as exc:
                if exc.status != 0 or time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    async def _once(self, method: str, path: str, body: Any, token: Token | None) -> Any:
        headers = {"Authorization": f"Bearer {token.bearer}"} if token is not None else {}
        try:
            async with self._session().request(
                method, self.base_url + path, json=body, headers=headers
            ) as response:
                try:
                    data = await response.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    data = None
                if response.status >= 400:
                    text = data.get("error") if isinstance(data, dict) else None
                    raise ApiError(response.status, str(text or response.reason))
                return data
        except aiohttp.ClientError as exc:
            raise ApiError(0, f"{self.base_url} unreachable: {type(exc).__name__}") from None
        except TimeoutError:
            raise ApiError(0, f"{self.base_url}: no answer in {self.timeout:g} s") from None
        except asyncio.CancelledError:
            raise

    async def login(self, user: str, passphrase: str) -> Token:
        data = await self.call("POST", "/api/login", {"user": user, "passphrase": passphrase})
        return Token(data["user"], data["scope"], data["token"], data["csrf"])

    async def logout(self, token: Token) -> None:
        await self.call("POST", "/api/logout", token=token)
