"""structlog, configured once per process.

Rule 1: services log JSON lines; a terminal gets the console renderer.
Rule 2: secrets are never logged. Code must not pass them; ``mask_secrets`` is the safety net
under that rule: it drops fields whose name says "secret" and masks PAN-like digit runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
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


# A line is at most PIPE_BUF bytes: POSIX makes a write() of that size to a pipe whole, and
# Linux makes an O_APPEND write() to a regular file whole; so lines of several processes
# sharing one file (keystore workers, supervisor children) never interleave.
MAX_LINE = select.PIPE_BUF
# Before rendering, long strings are cut so that a traceback keeps its informative tail.
MAX_VALUE = 1500


def _cap(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_VALUE:
        return f"…[{len(value) - MAX_VALUE} chars cut]" + value[-MAX_VALUE:]
    return value


def cap_values(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: cut top-level strings to ``MAX_VALUE`` chars (keeping the end)."""
    for key, value in event_dict.items():
        event_dict[key] = _cap(value)
    return event_dict


def line_bytes(message: str) -> bytes:
    """``message`` and its newline as at most ``MAX_LINE`` bytes; an oversized line becomes a
    short JSON record naming its size, so a JSON log stays JSON line by line."""
    data = (message + "\n").encode("utf-8", "replace")
    if len(data) <= MAX_LINE:
        return data
    # ensure_ascii: at most 6 bytes per char of head, so 400 chars stay far below MAX_LINE.
    summary = {"event": "log_line_cut", "level": "warning", "bytes": len(data),
               "head": message[:400]}  # fmt: skip
    return (json.dumps(summary, ensure_ascii=True) + "\n").encode()


class LineWriter:
    """structlog logger writing each line whole: one ``write()`` of line and newline.

    With ``path``, the file is opened once with O_APPEND (shared safely by processes);
    without, lines go to whatever ``sys.stderr`` is *now* (safe when tests swap it).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._fd: int | None = None
        if path is not None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._fd = os.open(path, flags, 0o640)

    def close(self) -> None:
        """Close the file, if this writer opened one."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def msg(self, message: str) -> None:
        data = line_bytes(message)
        if self._fd is not None:
            os.write(self._fd, data)
            return
        stream = sys.stderr
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            # A swapped-in text stream (pytest capture): one write call of the whole line.
            stream.write(data.decode("utf-8", "replace"))
            stream.flush()
            return
        stream.flush()  # anything print()ed before must come out first
        os.write(fd, data)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class _ToStructlog(logging.Handler):
    """Routes libraries' stdlib logging (aio-pika, aiormq) into the same JSON lines."""

    def emit(self, record: logging.LogRecord) -> None:
        structlog.get_logger(source=record.name).log(
            record.levelno, record.getMessage(), exc_info=record.exc_info
        )


_writer: LineWriter | None = None


def configure(
    log_format: str = "auto", level: str = "info", path: str | os.PathLike[str] | None = None
) -> None:
    """Configure structlog for this process; called by entry points only, never by libraries.

    Lines go to ``path`` (O_APPEND, shareable between processes) when given, else to the
    current ``sys.stderr``; each line is one ``write()`` of at most ``MAX_LINE`` bytes.
    A later call replaces the earlier one (and closes its file).
    """
    global _writer
    if _writer is not None:
        _writer.close()
    _writer = writer = LineWriter(path)
    tty = path is None and sys.stderr.isatty()
    use_console = log_format == "console" or (log_format == "auto" and tty)
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=tty)
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
            cap_values,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=False,
    )
    # Libraries' warnings and errors become lines of this format too, never raw text.
    logging.basicConfig(handlers=[_ToStructlog()], level=logging.WARNING, force=True)


def get_logger(**bind: Any) -> Any:
    """A lazy structlog logger with ``bind`` context; it follows the entry point's
    ``configure`` whenever that runs, so libraries bind loggers at import time freely."""
    return structlog.get_logger(**bind)
