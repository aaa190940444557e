"""Log output for mesh processes: plain text for a person, or one JSON object per line for a log pipeline.

JSON lines carry `ts` (ISO 8601, UTC), `level`, `logger` and `message`, then every field the call passed with
`extra={...}` (e.g. `model`, `instance`, `ms`, `bytes` on placement events), so a pipeline filters on fields
instead of parsing the message.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra` and is a structured field.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, the record's extra fields, then any traceback."""

    def __init__(self, static_fields: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._static = dict(static_fields or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self._static,
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a field that is not JSON (a Path, an enum) still yields a line rather than no line.
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(
    level: str = "INFO",
    log_format: str = "text",
    *,
    text_format: str = TEXT_FORMAT,
    static_fields: Mapping[str, Any] | None = None,
) -> None:
    """Send every log record (and Python warnings) to stderr as `log_format` ("text" or "json"), `level` and up.

    `static_fields` go on every JSON line (a runtime names itself with them); text lines use `text_format`.
    """
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(static_fields) if log_format == "json" else logging.Formatter(text_format))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)
