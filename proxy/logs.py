"""Log output: plain text for people, or one JSON object per line for log pipelines.

Context travels as ``logging`` ``extra=`` fields (:data:`CONTEXT_FIELDS`): a log call
that knows the client, tenant, database or event passes them, and the JSON formatter
emits each one that is set. Secrets never go into log records in the first place; the
formatter adds nothing that the record does not already carry.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Record attributes emitted as JSON fields when a log call sets them through ``extra=``.
CONTEXT_FIELDS = ("client_id", "tenant", "database", "event", "worker")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"timestamp", "level", "logger", "message", ...context, "exception"?}`` per line."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(level: str, log_format: str = "text", worker: int | None = None) -> None:
    """Configure the root logger once: ``level`` name, ``"text"`` or ``"json"`` lines on stderr.

    ``worker`` (the worker index under a supervisor) is added to every line.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        prefix = f"[worker {worker}] " if worker is not None else ""
        handler.setFormatter(logging.Formatter(
            TEXT_FORMAT.replace("%(message)s", prefix + "%(message)s")))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
