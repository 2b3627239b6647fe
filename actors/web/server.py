"""The HTTPS front door of a thin-client API: one aiohttp application per service.

Rule 1 (routes): a service declares each operation once with ``route(...)``: method, path,
summary, whether it needs a session, the JSON schema of its body. That one table registers
the aiohttp handler and writes the service's OpenAPI 3.1 document (``GET /openapi.json``).
Bodies are JSON (``Content-Type: application/json``), at most ``MAX_BODY`` bytes, checked
against their schema (unknown fields refused) before the handler runs.
Rule 2 (login): ``POST /api/login`` looks the name up and runs exactly one scrypt, off the
event loop (``asyncio.to_thread``), for a known and an unknown name alike (``passwords.check``)
and answers both failures with the same 401 text. A locked name (sessions.py Rule 3) or an
address with ``web_source_failures`` failed logins in ``web_lockout_seconds`` gets 429
before any work, known or not. Success opens a session: an ``__Host-setpay-<service>`` cookie
(HttpOnly, Secure, SameSite=Strict, Path=/; named per service because browsers share cookies
between the ports of one host, and the wallet and the POS may share a host) for the pages
and the same token as a bearer for the CLIs; the answer carries the session's CSRF token.
``POST /api/logout`` ends it.
Rule 2b (per-source limits): a route that costs real work before anybody is logged in (the
wallet's ``POST /api/register``: one scrypt and a new account) is declared with
``per_source=N``: after N calls from one address that did their work (answered 2xx) within
``web_lockout_seconds``, the next gets 429 before any work. A refused call is not counted: it
must be cheap instead (the wallet refuses an existing name before its scrypt). Addresses are
the TCP peer's (``request.remote``): behind a reverse proxy every client has the proxy's
address, so a deployment there sets the limit at the proxy.
Rule 3 (CSRF): a state-changing request (anything but GET/HEAD) is refused (403) if it has
an ``Origin`` other than this service's own, or if it is authenticated by the cookie without
the session's ``X-CSRF-Token`` header. A bearer token is never sent by a browser on its
own, so bearer requests need no CSRF token; a cross-site page can neither read the cookie
nor send JSON without a CORS preflight, which this service never grants.
Rule 4 (answers): every answer carries the security headers (``SECURITY_HEADERS``: CSP
without inline script, no framing, no sniffing, no referrer, HSTS, no caching); every
failure is ``{"error": text}`` with its status, never a traceback; an unexpected exception
is a 500 "internal error" and one log line naming its type.
Rule 5 (logs): one line per request: method, the route's pattern (never the raw path or
query), status, milliseconds, and the session's principal once authenticated. No body, no
header, no user name of a failed login (it may be a mistyped passphrase).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from actors.web import passwords, tls
from actors.web.passwords import PassphraseRecord
from actors.web.sessions import Session, SessionStore
from setpay.config import Settings
from setpay.durability import GROUP
from setpay.logs import get_logger

log = get_logger(component="web")

MAX_BODY = 64 * 1024
COOKIE_PREFIX = "__Host-setpay-"  # + the service's name: cookies ignore ports (Rule 2)
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD"})
PRINCIPAL = web.RequestKey("principal", str)  # the session's principal, for the request log
LOGIN_FAILED = "unknown user or wrong passphrase"
LOCKED = "too many failed logins: try again later"
TOO_MANY = "too many requests from this address: try again later"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Strict-Transport-Security": "max-age=31536000",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# The lookup a party gives: name -> (passphrase record, scope) or None for no such account.
Lookup = Callable[[str], "tuple[PassphraseRecord, str] | None"]
Handler = Callable[[web.Request, Session | None, dict[str, Any]], Awaitable[Any]]

NAME = {"type": "string", "minLength": 1, "maxLength": 64}
PASSPHRASE = {"type": "string", "minLength": 1, "maxLength": passwords.MAX_LENGTH}
LOGIN_BODY = {"type": "object", "properties": {"user": NAME, "passphrase": PASSPHRASE},
              "required": ["user", "passphrase"]}  # fmt: skip


class Refused(Exception):
    """A request the service refuses: ``status`` and a text for the client (no secrets)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def check_schema(value: Any, schema: dict[str, Any], where: str = "body") -> None:
    """``value`` against the small JSON-schema subset routes use; ``Refused(400)`` naming
    the field (never its value)."""
    kind = schema.get("type")
    ok = {
        "object": isinstance(value, dict), "string": isinstance(value, str),
        "boolean": isinstance(value, bool), "array": isinstance(value, list),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        None: True,
    }[kind]  # fmt: skip
    if not ok and not (value is None and schema.get("nullable")):
        raise Refused(400, f"{where}: expected {kind}")
    if value is None:
        return
    if kind == "string":
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 4096):
            raise Refused(400, f"{where}: length out of bounds")
        allowed = schema.get("enum")
        if allowed is not None and value not in allowed:
            raise Refused(400, f"{where}: one of {', '.join(allowed)}")
    elif kind == "integer":
        if not schema.get("minimum", -(2**63)) <= value <= schema.get("maximum", 2**63 - 1):
            raise Refused(400, f"{where}: out of range")
    elif kind == "array":
        if len(value) > schema.get("maxItems", 64):
            raise Refused(400, f"{where}: too many items")
        for i, item in enumerate(value):
            check_schema(item, schema.get("items", {}), f"{where}[{i}]")
    elif kind == "object":
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        if len(value) > schema.get("maxProperties", 32):
            raise Refused(400, f"{where}: too many fields")
        for key, item in value.items():
            if key in props:
                check_schema(item, props[key], f"{where}.{key}")
            elif isinstance(extra, dict):
                if len(key) > 64:
                    raise Refused(400, f"{where}: field name too long")
                check_schema(item, extra, f"{where}.{key[:64]}")
            else:
                raise Refused(400, f"{where}: unknown field {key[:64]!r}")
        for key in schema.get("required", []):
            if key not in value:
                raise Refused(400, f"{where}: {key} missing")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    auth: bool
    body: dict[str, Any] | None
    response: dict[str, Any] | None
    per_source: int = 0  # calls per address per web_lockout_seconds (Rule 2b); 0: no limit


class SourceGuard:
    """Events per source address in a sliding window (failed logins, Rule 2; calls of a
    limited route, Rule 2b), in memory and bounded to ``MAX_SOURCES`` addresses: it slows a
    guesser down between restarts; the per-name lockout, which must survive them, is in the
    store."""

    MAX_SOURCES = 10_000

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window = window_s
        self.failures: dict[str, deque[float]] = {}

    def _recent(self, source: str, now: float) -> deque[float]:
        times = self.failures.get(source)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def blocked(self, source: str, now: float) -> bool:
        return len(self._recent(source, now)) >= self.limit

    def count(self, source: str, now: float) -> None:
        times = self._recent(source, now)
        if source not in self.failures:
            if len(self.failures) >= self.MAX_SOURCES:
                del self.failures[next(iter(self.failures))]
            self.failures[source] = times
        times.append(now)


class FrontDoor:
    """One service's HTTPS API and pages (Rules 1-5)."""

    def __init__(
        self, settings: Settings, *, name: str, title: str, port: int, sessions: SessionStore,
        lookup: Lookup, refusals: tuple[type[Exception], ...] = (),
        pages: dict[str, Path] | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.cookie = COOKIE_PREFIX + name
        self.title = title
        self.port = port
        self.sessions = sessions
        self.lookup = lookup
        self.refusals = refusals
        self.pages = pages or {}
        self.sources = SourceGuard(settings.web_source_failures, settings.web_lockout_seconds)
        self.routes: list[Route] = []
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[self._middleware])
        self.runner: web.AppRunner | None = None
        self.route("POST", "/api/login", "log in: opens a session (cookie and bearer token)",
                   auth=False, body=LOGIN_BODY, response=SESSION_SCHEMA)(self._login)  # fmt: skip
        self.route("POST", "/api/logout", "end this session", response={})(self._logout)
        self.route("GET", "/api/session", "this session: who, until when, its CSRF token",
                   response=SESSION_SCHEMA)(self._session)  # fmt: skip
        self.app.router.add_get("/openapi.json", self._openapi)
        self.app.router.add_get("/healthz", self._health)
        for path, file in self.pages.items():
            self.app.router.add_get(path, self._page(file))

    # -- declaring routes (Rule 1) ---------------------------------------------------------

    def route(self, method: str, path: str, summary: str, *, auth: bool = True,
              body: dict[str, Any] | None = None, response: dict[str, Any] | None = None,
              per_source: int = 0) -> Callable[[Handler], Handler]:  # fmt: skip
        def register(handler: Handler) -> Handler:
            self.routes.append(Route(method, path, summary, auth, body, response, per_source))
            guard = (SourceGuard(per_source, self.settings.web_lockout_seconds)
                     if per_source > 0 else None)  # fmt: skip
            self.app.router.add_route(method, path, self._wrap(handler, auth, body, guard))
            return handler

        return register

    def _wrap(self, handler: Handler, auth: bool, schema: dict[str, Any] | None,
              guard: SourceGuard | None = None
              ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:  # fmt: skip
        async def run(request: web.Request) -> web.StreamResponse:
            source = request.remote or "?"
            if guard is not None and guard.blocked(source, time.monotonic()):  # Rule 2b
                log.info("web_source_limited", limit=guard.limit)
                raise Refused(429, TOO_MANY)
            session, by_cookie = self._session_of(request) if auth else (None, False)
            if auth and session is None:
                raise Refused(401, "no session or session expired: log in")
            if request.method not in SAFE_METHODS:
                self._check_origin(request)
                if by_cookie and (session is None
                                  or not session.csrf_matches(request.headers.get(CSRF_HEADER))):
                    raise Refused(403, "missing or wrong CSRF token")  # fmt: skip
            if session is not None:
                request[PRINCIPAL] = session.principal
            body: dict[str, Any] = {}
            if schema is not None:
                if request.content_type != "application/json":
                    raise Refused(415, "send application/json")
                try:
                    body = await request.json(loads=json.loads)
                except (ValueError, UnicodeDecodeError, RecursionError):
                    raise Refused(400, "body: not JSON") from None
                check_schema(body, schema)
            try:
                result = await handler(request, session, body)
            except self.refusals as exc:
                raise Refused(422, str(exc)[:512]) from None
            if guard is not None:
                guard.count(source, time.monotonic())
            if isinstance(result, web.StreamResponse):
                return result
            return web.json_response(result)

        return run

    def _check_origin(self, request: web.Request) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"https://{request.host}":
            raise Refused(403, "cross-origin request refused")

    def _session_of(self, request: web.Request) -> tuple[Session | None, bool]:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return self.sessions.get(header[7:].strip()[:128], _now_ms()), False
        cookie = request.cookies.get(self.cookie)
        if cookie:
            return self.sessions.get(cookie[:128], _now_ms()), True
        return None, False

    # -- login, logout (Rule 2) --------------------------------------------------------------

    async def _login(self, request: web.Request, _s: Session | None, body: dict[str, Any]
                     ) -> web.StreamResponse:  # fmt: skip
        user, passphrase = body["user"], body["passphrase"]
        source = request.remote or "?"
        now = time.monotonic()
        if self.sources.blocked(source, now) or self.sessions.locked(user, _now_ms()):
            log.info("web_login_refused", reason="locked")
            raise Refused(429, LOCKED)
        found = self.lookup(user)
        record, scope = found if found is not None else (None, "")
        ok = await asyncio.to_thread(passwords.check, passphrase, record)
        if not ok:
            self.sources.count(source, time.monotonic())
            locked = self.sessions.failed(user, _now_ms())
            log.info("web_login_failed", locked=locked)
            raise Refused(401, LOGIN_FAILED)
        self.sessions.succeeded(user)
        session = self.sessions.create(user, scope, _now_ms())
        log.info("web_login", principal=user)
        response = web.json_response(_session_json(session, token=True))
        response.set_cookie(self.cookie, session.token, path="/", secure=True, httponly=True,
                            samesite="Strict",
                            max_age=int(self.settings.web_session_seconds))  # fmt: skip
        return response

    async def _logout(self, request: web.Request, _s: Session | None, _b: dict[str, Any]
                      ) -> web.StreamResponse:  # fmt: skip
        header = request.headers.get("Authorization", "")
        bearer = header.startswith("Bearer ")
        token = header[7:].strip() if bearer else request.cookies.get(self.cookie)
        if token:
            self.sessions.end(token[:128])
        response = web.json_response({})
        response.del_cookie(self.cookie, path="/", secure=True, httponly=True, samesite="Strict")
        return response

    async def _session(self, _r: web.Request, session: Session | None, _b: dict[str, Any]
                       ) -> dict[str, Any]:  # fmt: skip
        assert session is not None
        return _session_json(session, token=False)

    # -- answers (Rules 4, 5) ----------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        began = time.perf_counter()
        try:
            response = await handler(request)
        except Refused as exc:
            response = web.json_response({"error": exc.text}, status=exc.status)
        except web.HTTPException as exc:  # aiohttp's own: 404, 405, 413 ...
            response = web.json_response({"error": exc.reason}, status=exc.status)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("web_internal_error", error=type(exc).__name__)
            response = web.json_response({"error": "internal error"}, status=500)
        try:  # setpay/durability.py: what the handler committed is on disk before it answers
            await GROUP.barrier()
        except OSError as exc:
            log.error("commit_sync_failed", error=type(exc).__name__)
            response = web.json_response({"error": "internal error"}, status=500)
        response.headers.update(SECURITY_HEADERS)
        info = request.match_info.route.resource
        log.info("http_request", method=request.method,
                 route=info.canonical if info is not None else "?",
                 status=response.status, ms=round((time.perf_counter() - began) * 1000, 1),
                 principal=request.get(PRINCIPAL))  # fmt: skip
        return response

    def _page(self, file: Path) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        kinds = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
        data = file.read_bytes()
        kind = kinds.get(file.suffix, "application/octet-stream")

        async def page(_request: web.Request) -> web.StreamResponse:
            return web.Response(body=data, content_type=kind, charset="utf-8")

        return page

    async def _health(self, _request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True, "service": self.title})

    async def _openapi(self, _request: web.Request) -> web.StreamResponse:
        return web.json_response(self.openapi())

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document of every declared route (Rule 1)."""
        paths: dict[str, dict[str, Any]] = {}
        for r in self.routes:
            op: dict[str, Any] = {"summary": r.summary, "responses": {
                "200": {"description": "done", "content": {"application/json": {
                    "schema": r.response or {"type": "object"}}}},
                "default": {"description": "refused", "content": {"application/json": {
                    "schema": ERROR_SCHEMA}}},
            }}  # fmt: skip
            if r.per_source:
                op["description"] = (f"At most {r.per_source} calls per client address in "
                                     f"{self.settings.web_lockout_seconds:g} s; then 429.")
            if r.auth:
                op["security"] = [{"bearer": []}, {"cookie": [], "csrf": []}]
            else:
                op["security"] = []
            if r.body is not None:
                op["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": r.body}}}  # fmt: skip
            params = [p[1:-1] for p in r.path.split("/") if p.startswith("{")]
            if params:
                op["parameters"] = [{"name": p, "in": "path", "required": True,
                                     "schema": {"type": "string"}} for p in params]  # fmt: skip
            paths.setdefault(r.path, {})[r.method.lower()] = op
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": "1"},
            "servers": [{"url": "/"}],
            "paths": paths,
            "components": {"securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": self.cookie},
                "csrf": {"type": "apiKey", "in": "header", "name": CSRF_HEADER},
            }},
        }  # fmt: skip

    # -- serving ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``web_host``:``port`` with TLS (actors/web/tls.py)."""
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        # Replicas of one front door share its port (actors/supervisor.py Rule 6): the kernel
        # spreads connections over them (SO_REUSEPORT; the supervisor refuses a port another
        # process holds, so only our own replicas ever share one).
        site = web.TCPSite(self.runner, self.settings.web_host, self.port,
                           ssl_context=tls.server_context(self.settings),
                           reuse_port=True)  # fmt: skip
        await site.start()
        log.info("web_listening", service=self.title, host=self.settings.web_host, port=self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


SESSION_SCHEMA = {"type": "object", "properties": {
    "user": {"type": "string"}, "scope": {"type": "string"}, "csrf": {"type": "string"},
    "expires_ms": {"type": "integer"}, "token": {"type": "string"}}}  # fmt: skip
ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}}}


def _session_json(session: Session, *, token: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"user": session.principal, "scope": session.scope,
                           "csrf": session.csrf, "expires_ms": session.expires_ms}  # fmt: skip
    if token:
        out["token"] = session.token
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)
