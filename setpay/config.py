"""The effective configuration: defaults, then an optional TOML file, then ``SETPAY_*`` env.

Rule 1: every setting has a default that works on a developer machine.
Rule 2: secrets (PINs, passwords in URLs) are never printed; ``describe()`` masks them.
Rule 3: the token PINs have no fixed default: empty means "the ones `setpay keystore init`
generated" (``keystore.token.token_pins`` resolves them).
Rule 4: ``SETPAY_CONFIG`` set but empty means "no file" (not even ``./setpay.toml``): the
supervisor starts its children so, with every non-secret setting in their environment
(``child_environment``) and the one secret each needs, so no child reads a file of secrets.
Rule 5: a secret setting or ``amqp_url`` may come from a file instead: ``SETPAY_<NAME>_FILE``
names it (systemd: ``LoadCredential=`` and ``%d``); its content, less the final newline,
is the value. The variable itself wins over the file.

The TOML file is ``$SETPAY_CONFIG`` or ``./setpay.toml`` when present. Keys are the field
names below, either flat (``amqp_url = "..."``) or grouped in tables whose name prefixes the
key (``[keystore] pin = "..."`` sets ``keystore_pin``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit, urlunsplit

from setpay import clock

ENV_PREFIX = "SETPAY_"
DEFAULT_ISSUER_PORT: Final = 8583  # the ISO 8583 port by convention; ``issuer_port`` sets it
SECRET_FIELDS = frozenset({"keystore_pin", "keystore_so_pin", "broker_admin_password"})
FILE_FIELDS = SECRET_FIELDS | {"amqp_url"}  # may be read from SETPAY_<NAME>_FILE (Rule 5)

_SOFTHSM_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


class ConfigError(Exception):
    """A configuration value is missing, malformed or of the wrong type."""


def _default_pkcs11_module() -> str:
    for candidate in _SOFTHSM_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return _SOFTHSM_CANDIDATES[0]


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of setpay. Field docs live in ``describe()`` output and the README."""

    data_dir: Path = Path("./var")
    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"
    suite: str = "rsa2048"  # rsa2048 | rsa3072 | p256
    # The clock every actor reads for protocol dates (setpay/clock.py): system, offset:<ms>
    # or fixed:<epoch ms>; a trace replay runs a restored environment on the trace's clock.
    clock: str = "system"

    # The event loop of the long-running processes (actors, keystore workers): auto is
    # uvloop when installed (the ``fast`` extra), else asyncio's own.
    event_loop: str = "auto"  # auto | asyncio | uvloop

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    broker_vhost: str = "setpay"
    broker_admin_user: str = "guest"
    broker_admin_password: str = "guest"  # noqa: S105 - RabbitMQ's stock dev login
    broker_prefetch: int = 64
    broker_rpc_timeout: float = 10.0
    broker_max_message_bytes: int = 1_048_576
    broker_queue_type: str = "classic"  # classic | quorum (`broker init`; broker/topology.py)
    broker_user_prefix: str = ""  # prefixes every identity's broker user (test vhosts)
    # The RabbitMQ management HTTP API (broker/admin.py; the admin login above): empty means
    # port 15672 on the host of ``amqp_url``.
    broker_management_url: str = ""

    keystore_module: str = field(default_factory=_default_pkcs11_module)
    keystore_token_label: str = "setpay"  # noqa: S105 - a label, not a secret
    keystore_pin: str = ""  # empty: the PIN `setpay keystore init` generated (Rule 3)
    keystore_so_pin: str = ""
    keystore_workers: int = 2
    # A party's sign/decrypt requests in flight before its further ones wait and go to the
    # keystore together as one batch (keystore/client.py Rule 8); 0 sends each alone.
    keystore_batching: int = 2

    issuer_host: str = "127.0.0.1"  # the ISO 8583 issuer/acquirer host the gateway reaches
    issuer_port: int = DEFAULT_ISSUER_PORT
    # The CCA verifies every card/bank account with the issuer host before certifying it;
    # off only in tests that run a CA without an issuer host (never in an environment).
    ca_verify_cards: bool = True
    # Revocation reaching running parties (actors/trust.py Rules 5, 6): the CA actor looks
    # for a new BCI in its store (`setpay ca revoke`, renewals at half a BCI's life) this
    # often and pushes it to gateways and merchants; they pull from the CA themselves, this
    # often, any BCI held past three quarters of its window.
    ca_revocation_poll_seconds: float = 2.0
    revocation_refresh_seconds: float = 600.0
    # Brands whose gateway issues AuthTokens (split shipment: a later AuthReq with the token,
    # no cardholder): a comma list, "*" every brand, "" none.
    subsequent_auth_brands: str = "*"

    # Where the stores live (setpay/store.py Rule 6): empty, a SQLite file per store under
    # the data dir; a postgresql:// URL (no password in it: PGPASSFILE), one schema per store
    # in that database, shared by every replica and CLI of the environment.
    store_url: str = ""

    # HTTPS front doors of the thin clients (actors/web/): listen address, one port per
    # service, TLS files (empty: the test environment's, made by the supervisor under
    # <data_dir>/tls/), the CA file clients trust (empty: <data_dir>/tls/ca.pem), sessions.
    web_host: str = "127.0.0.1"
    wallet_web_port: int = 8443
    pos_web_port: int = 8444
    web_tls_cert: str = ""
    web_tls_key: str = ""
    web_tls_ca: str = ""
    wallet_url: str = ""  # the wallet's public base URL in pay links (empty: web_host:port)
    web_session_seconds: float = 1800.0
    web_max_failures: int = 5  # consecutive failed logins of one user name before lockout
    web_source_failures: int = 50  # failed logins from one address before it is refused
    web_source_registrations: int = 20  # wallet registrations from one address per lockout window
    web_lockout_seconds: float = 900.0

    # Each long-running process serves /metrics (Prometheus), /healthz and /readyz over HTTP
    # on ``metrics_host`` (setpay/metrics.py): ``metrics_port`` 0 takes an ephemeral port,
    # written to the process's health file (`setpay status` reads it there); -1 serves none.
    # The supervisor gives every child 0 unless ``metrics_base_port`` is set, then base + the
    # role's offset (``actors.supervisor.METRICS_OFFSET``), the ports a scrape config names.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    metrics_base_port: int = 0

    # Which replica of its role and instance this process is (0..n-1): the supervisor sets it
    # for each process of `setpay up --replicas`; it names the process's run files and its
    # share of per-process state (the gateway link's journal rows: actors/iso8583/saf.py).
    replica: int = 0

    @property
    def softhsm_conf(self) -> Path:
        """SoftHSM2 config file that points the library at our own token directory."""
        return self.data_dir / "softhsm2.conf"

    @property
    def token_dir(self) -> Path:
        return self.data_dir / "tokens"

    def admin_url(self) -> str:
        """The broker admin's AMQP URL on ``broker_vhost`` (host and port of ``amqp_url``): the
        login of the supervisor's environment lock and of the thin clients."""
        return login_url(self.amqp_url, self.broker_admin_user, self.broker_admin_password,
                         self.broker_vhost)  # fmt: skip

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, str]:
        """All settings as strings, secrets masked, for ``setpay config``."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS:
                out[f.name] = "********"
            elif f.name == "amqp_url":
                out[f.name] = mask_url(str(value))
            else:
                out[f.name] = str(value)
        return out


def process_name(identity: str, replica: int) -> str:
    """The name of one process of ``identity`` (``merchant.pos1``): the identity itself for
    replica 0, ``<identity>@<n>`` for replica n (its run files, log lines, journal rows)."""
    return identity if replica == 0 else f"{identity}@{replica}"


def child_environment(settings: Settings) -> dict[str, str]:
    """``SETPAY_*`` variables that reproduce every non-secret setting of ``settings`` in a
    child process, with ``SETPAY_CONFIG`` empty so it reads no file (Rule 4); ``amqp_url`` is
    left out (the caller sets the child's own) and so are the secrets (``SECRET_FIELDS``)."""
    env = {f"{ENV_PREFIX}CONFIG": ""}
    for f in fields(settings):
        if f.name in SECRET_FIELDS or f.name == "amqp_url":
            continue
        value = getattr(settings, f.name)
        env[ENV_PREFIX + f.name.upper()] = (
            ("true" if value else "false") if isinstance(value, bool) else str(value)
        )
    return env


def login_url(base_url: str, user: str, password: str, vhost: str) -> str:
    """``base_url`` (an ``amqp://`` or ``amqps://`` URL) as ``user`` on ``vhost``: its scheme,
    host, port and query (TLS options such as ``cafile``, ``heartbeat``) kept, the login and
    the vhost replaced. The one way every per-identity broker URL is made."""
    parts = urlsplit(base_url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme or "amqp", netloc, "/" + quote(vhost, safe=""),
                       parts.query, ""))  # fmt: skip


def mask_url(url: str) -> str:
    """Hide the password of a URL (``amqp://user:***@host/``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    kind_name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if kind_name in ("Path",):
            return Path(str(raw))
        if kind_name == "int":
            if isinstance(raw, bool):
                raise ValueError("boolean given")
            return int(raw)
        if kind_name == "float":
            return float(raw)
        if kind_name == "bool":
            if isinstance(raw, bool):
                return raw
            return str(raw).strip().lower() in ("1", "true", "yes", "on")
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: cannot read {kind_name} from {raw!r}") from exc


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}".replace("-", "_")
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}_"))
        else:
            flat[name] = value
    return flat


# Allowed values, checked when settings load (``protocol.keys.SUITES`` is the truth for the
# suites; ground may not import it, and tests/setpay/test_config.py holds the two equal).
SUITE_NAMES = ("rsa2048", "rsa3072", "rsa2048-oaep256", "p256")
LOG_LEVELS = ("debug", "info", "warning", "error")
QUEUE_TYPES = ("classic", "quorum")  # broker/topology.py Rule 8
LOG_FORMATS = ("auto", "json", "console")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
# SETPAY_ variables that are read elsewhere and are no setting (secrets of the thin clients,
# tools, the test suite): never taken for a misspelt setting.
OTHER_VARIABLES = frozenset({
    "CONFIG", "WALLET_PASSPHRASE", "WALLET_PAN", "WALLET_PIN", "POS_PASSPHRASE", "RABBITMQCTL",
    "VENV", "SCREENSHOTS", "TEST_POSTGRES", "FUZZ_EXPLORE", "ARC",
})


def _misspelt(env: Mapping[str, str], known: Iterable[str]) -> None:
    """Refuse a ``SETPAY_`` variable that is no setting but nearly one (a typo would
    otherwise be ignored silently), naming the setting it resembles."""
    names = [n.upper() for n in known]
    allowed = set(names) | {f"{n}_FILE" for n in names} | OTHER_VARIABLES
    for variable in env:
        if not variable.startswith(ENV_PREFIX):
            continue
        name = variable[len(ENV_PREFIX):]
        if name in allowed:
            continue
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.85)
        if close:
            raise ConfigError(f"{variable} is not a setting; did you mean "
                              f"{ENV_PREFIX}{close[0]}? (`setpay config` lists them)")  # fmt: skip


def config_file(env: Mapping[str, str]) -> Path | None:
    explicit = env.get(f"{ENV_PREFIX}CONFIG")
    if explicit == "":
        return None  # Rule 4
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"SETPAY_CONFIG names {path}, which is not a file")
        return path
    local = Path("setpay.toml")
    return local if local.is_file() else None


def load(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build the effective settings: defaults < TOML file < environment < ``overrides``."""
    env = os.environ if env is None else env
    known = {f.name: f.type for f in fields(Settings)}
    values: dict[str, Any] = {}
    path = config_file(env)
    if path is not None:
        try:
            table = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
        for name, raw in _flatten(table).items():
            if name not in known:
                raise ConfigError(f"{path}: unknown setting {name!r}")
            values[name] = _coerce(name, known[name], raw)
    for name, kind in known.items():
        raw = env.get(ENV_PREFIX + name.upper())
        from_file = env.get(f"{ENV_PREFIX}{name.upper()}_FILE")
        if raw is None and from_file and name in FILE_FIELDS:
            try:
                raw = Path(from_file).read_text().removesuffix("\n")
            except OSError as exc:
                raise ConfigError(
                    f"{ENV_PREFIX}{name.upper()}_FILE: cannot read {from_file} "
                    f"({type(exc).__name__})"
                ) from None
        if raw is not None:
            values[name] = _coerce(name, kind, raw)
    for name, raw in overrides.items():
        if name not in known:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = raw
    settings = Settings(**values)
    for name, allowed in (("log_format", LOG_FORMATS), ("log_level", LOG_LEVELS),
                          ("suite", SUITE_NAMES), ("event_loop", EVENT_LOOPS),
                          ("broker_queue_type", QUEUE_TYPES)):  # fmt: skip
        if getattr(settings, name) not in allowed:
            raise ConfigError(f"{name} {getattr(settings, name)!r} is not one of "
                              f"{', '.join(allowed)}")  # fmt: skip
    if settings.store_url:
        scheme = urlsplit(settings.store_url).scheme
        if scheme not in ("postgresql", "postgresql+psycopg"):
            raise ConfigError(f"store_url must be a postgresql:// URL (empty: SQLite files), "
                              f"not {scheme or settings.store_url[:16]!r}")  # fmt: skip
        if urlsplit(settings.store_url).password is not None:
            raise ConfigError("store_url must not carry a password (every child process gets "
                              "it in its environment): use PGPASSFILE (~/.pgpass) instead")
    try:
        clock.parse(settings.clock)
    except clock.ClockSpecError as exc:
        raise ConfigError(str(exc)) from None
    _misspelt(env, known)
    return settings
