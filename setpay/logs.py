"""structlog, configured once per process.

Rule 1: services log JSON lines; a terminal gets the console renderer.
Rule 2: secrets are never logged. Code must not pass them; ``mask_secrets`` is the safety net
under that rule: it drops fields whose name says "secret" and masks PAN-like digit runs.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

# Field names whose values are never logged, whatever they hold.
SECRET_NAME = re.compile(
    r"(^|_)(pan|pin|pin_?block|secret|card_?secret|pan_?secret|password|passphrase|key_?material"
    r"|private_?key|plaintext|cvv|track\d?)($|_)",
    re.IGNORECASE,
)
# 12 to 19 digits, possibly grouped by spaces or dashes: a card number or account number.
PAN_LIKE = re.compile(r"(?<!\d)(?:\d[ -]?){11,18}\d(?!\d)")
REDACTED = "[redacted]"


def _mask_digits(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return f"{digits[:4]}…{digits[-2:]}[masked]" if len(digits) >= 12 else match.group(0)


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > 6:
        return value
    if isinstance(value, str):
        return PAN_LIKE.sub(_mask_digits, value)
    if isinstance(value, int) and not isinstance(value, bool) and 10**11 <= abs(value) < 10**19:
        return _mask_digits(re.match(r".*", str(abs(value))))  # type: ignore[arg-type]
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and SECRET_NAME.search(k) else _scrub(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v, depth + 1) for v in value]
    return value


def mask_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: drop secret-named fields, mask PAN-like numbers, hide raw bytes."""
    for key in list(event_dict):
        if SECRET_NAME.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


_configured = False


class _StderrLogger:
    """Writes each line to whatever ``sys.stderr`` is *now* (safe when tests swap it)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def configure(log_format: str = "auto", level: str = "info", stream: Any = None) -> None:
    """Configure structlog for this process (idempotent; the last call wins).

    Lines go to ``stream`` when given, else to the current ``sys.stderr`` at each call.
    """
    global _configured
    factory: Any = (
        structlog.PrintLoggerFactory(stream) if stream else (lambda *_: _StderrLogger())
    )
    stream = stream or sys.stderr
    use_console = log_format == "console" or (log_format == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            mask_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(**bind: Any) -> Any:
    """A lazy structlog logger with ``bind`` context: it follows later ``configure`` calls,
    so module-level loggers pick up a worker's format and level."""
    if not _configured:
        configure()
    return structlog.get_logger(**bind)
