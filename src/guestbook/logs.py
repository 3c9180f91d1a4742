"""Logging: one line per event on stdout, as text on a terminal or one JSON object per line
(what `kubectl logs` and log shippers read), and the access log written straight into it.

Nothing here may print a secret: records carry what the code logs, and the code logs URLs only
redacted.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from .settings import Settings

access_log = logging.getLogger("guestbook.access")

# The id of the request being served, in every log line written while it is: an operator
# follows one request across frontends and proxies by it (X-Request-ID).
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what `kubectl logs` and log shippers read best."""

    def __init__(self, instance: str) -> None:
        super().__init__()
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
            "instance": self.instance,
        }
        for key in ("method", "path", "status", "duration_ms", "client"):
            value = record.__dict__.get(key)
            if value is not None:
                entry[key] = value
        current = record.__dict__.get("request_id") or request_id.get()
        if current is not None:
            entry["request_id"] = current
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class BufferedStdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to stdout but flushes at most every FLUSH_EVERY seconds (and at once for
    warnings and worse): one write syscall per access-log line would cost more than the
    request it describes. `flush_due()` is called on a timer so no line waits long."""

    FLUSH_EVERY = 0.25

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        self._flushed_at = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING:
            self.flush()
        else:
            self.flush_due()

    def write_line(self, line: str) -> None:
        self.stream.write(line + self.terminator)
        self.flush_due()

    def flush_due(self) -> None:
        if time.monotonic() - self._flushed_at >= self.FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        self._flushed_at = time.monotonic()
        super().flush()


def configure_logging(settings: Settings, instance: str) -> BufferedStdoutHandler:
    # Documented switches that spare every record a stack walk and some lookups we never show.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BufferedStdoutHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter(instance))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Granian logs its own start-up and shutdown lines; keep them, in our format.
    for name in ("granian", "_granian"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    return handler


_quote = json.encoder.encode_basestring


class AccessLog:
    """One line per request. Behind our own JSON handler it writes the line itself, in the
    formatter's shape: building a LogRecord per request would cost more than serving the first
    page. Otherwise (tests, text format) it goes through `logging` as usual."""

    def __init__(self) -> None:
        self.enabled = access_log.isEnabledFor(logging.INFO)
        handler = next(
            (h for h in logging.getLogger().handlers if isinstance(h, BufferedStdoutHandler)),
            None,
        )
        formatter = handler.formatter if handler is not None else None
        self._direct = handler if isinstance(formatter, JsonFormatter) else None
        self._instance = _quote(formatter.instance) if isinstance(formatter, JsonFormatter) else ""
        self._second = -1
        self._stamp = ""

    def write(
        self, method: str, path: str, status: int, seconds: float, client: str, rid: str
    ) -> None:
        duration_ms = round(seconds * 1000, 2)
        if self._direct is None:
            access_log.info(
                "%s %s %s",
                method,
                path,
                status,
                extra={
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": duration_ms,
                    "client": client,
                    "request_id": rid,
                },
            )
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        self._direct.write_line(
            f'{{"time": "{self._stamp}.{int(now * 1000) % 1000:03d}+00:00", "level": "info", '
            f'"event": {_quote(f"{method} {path} {status}")}, "logger": "guestbook.access", '
            f'"instance": {self._instance}, "method": {_quote(method)}, "path": {_quote(path)}, '
            f'"status": {status}, "duration_ms": {duration_ms}, "client": {_quote(client)}, '
            f'"request_id": {_quote(rid)}}}'
        )
