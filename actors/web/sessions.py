"""Front-door sessions and login lockout, kept in the party's own store.

Rule 1: a session is an opaque random token (32 bytes, URL-safe); the store keeps only its
SHA-256, the principal (cardholder or operator name), its scope (the operator's merchant; ""
for a cardholder), its CSRF token and its expiry. Losing the database does not hand out
sessions; a restart of the service keeps them (they live in the party's store, not memory).
Rule 2: a session ends at its expiry (absolute, ``web_session_seconds`` from login) or at
logout; an expired row is refused and deleted.
Rule 3: lockout per user name: ``web_max_failures`` failed logins (none apart by more than
``web_lockout_seconds``) lock the name for ``web_lockout_seconds``, whether an account of
that name exists or not (so a lock says nothing about existence); a successful login clears
the count. Kept in the store, so a restart does not reopen a locked name.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Final

import sqlalchemy as sa

from setpay.store import Schema, Store

_MD = sa.MetaData()
SESSIONS_TABLE: Final = sa.Table(
    "web_sessions", _MD,
    sa.Column("token_hash", sa.LargeBinary, primary_key=True),
    sa.Column("principal", sa.String(128), nullable=False),
    sa.Column("scope", sa.String(64), nullable=False),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("expires", sa.BigInteger, nullable=False, index=True),
)  # fmt: skip
LOGINS_TABLE: Final = sa.Table(
    "web_logins", _MD,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("locked_until", sa.BigInteger, nullable=False),
    sa.Column("updated", sa.BigInteger, nullable=False),
)  # fmt: skip
SESSIONS: Final = Schema("web_sessions", _MD)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class Session:
    principal: str
    scope: str
    csrf: str = field(repr=False)
    expires_ms: int
    token: str = field(default="", repr=False)  # only on the Session ``create`` returns

    def csrf_matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


class SessionStore:
    """Sessions and lockout rows in ``db`` (Rules 1-3)."""

    def __init__(self, db: Store, *, lifetime_s: float, max_failures: int,
                 lockout_s: float) -> None:  # fmt: skip
        self.db = db
        self.lifetime_ms = int(lifetime_s * 1000)
        self.max_failures = max_failures
        self.lockout_ms = int(lockout_s * 1000)

    def create(self, principal: str, scope: str, now_ms: int) -> Session:
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        expires = now_ms + self.lifetime_ms
        s = SESSIONS_TABLE
        with self.db.transaction() as db:
            db.execute(sa.delete(s).where(s.c.expires <= now_ms))
            db.execute(sa.insert(s).values(
                token_hash=_digest(token), principal=principal, scope=scope, csrf=csrf,
                created=now_ms, expires=expires,
            ))  # fmt: skip
        return Session(principal, scope, csrf, expires, token)

    def get(self, token: str, now_ms: int) -> Session | None:
        """The live session of ``token``, or None (unknown, ended or expired; Rule 2)."""
        s = SESSIONS_TABLE
        r = self.db.one(sa.select(s).where(s.c.token_hash == _digest(token)))
        if r is None:
            return None
        if r.expires <= now_ms:
            self.end(token)
            return None
        return Session(r.principal, r.scope, r.csrf, r.expires)

    def end(self, token: str) -> None:
        with self.db.transaction() as db:
            s = SESSIONS_TABLE
            db.execute(sa.delete(s).where(s.c.token_hash == _digest(token)))

    def locked(self, name: str, now_ms: int) -> bool:
        """``name`` may not log in now (Rule 3)."""
        lg = LOGINS_TABLE
        until = self.db.scalar(sa.select(lg.c.locked_until).where(lg.c.name == name))
        return until is not None and until > now_ms

    def failed(self, name: str, now_ms: int) -> bool:
        """Count a failed login of ``name``; True if this one locks it (Rule 3)."""
        lg = LOGINS_TABLE
        with self.db.transaction() as db:
            # Names quiet for a lockout period and not locked are forgotten: guessing many
            # names does not grow the table without bound.
            db.execute(sa.delete(lg).where(lg.c.updated < now_ms - self.lockout_ms,
                                           lg.c.locked_until < now_ms))  # fmt: skip
            r = db.execute(sa.select(lg.c.failures).where(lg.c.name == name)).first()
            failures = (r[0] if r is not None else 0) + 1
            lock = failures >= self.max_failures
            values = {"name": name, "failures": 0 if lock else failures,
                      "locked_until": now_ms + self.lockout_ms if lock else 0,
                      "updated": now_ms}  # fmt: skip
            db.execute(self.db.upsert(lg, values))
        return lock

    def succeeded(self, name: str) -> None:
        with self.db.transaction() as db:
            db.execute(sa.delete(LOGINS_TABLE).where(LOGINS_TABLE.c.name == name))
