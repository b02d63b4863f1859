"""JSON lines on stderr: one object per event, fields a log pipeline can index (python-json-logger)."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

# The field names every service's events carry; anything passed through `extra=` becomes a field of its own.
_FIELDS = "{levelname}{name}{message}"
_RENAMED = {"levelname": "level", "name": "logger", "message": "msg", "exc_info": "error"}


def formatter(service: str) -> logging.Formatter:
    json_formatter = JsonFormatter(
        _FIELDS,
        style="{",
        rename_fields=_RENAMED,
        static_fields={"service": service},
        json_default=str,
        timestamp="ts",  # ISO 8601 in UTC, with microseconds
    )
    return json_formatter


def configure(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kafka-python is chatty at INFO about every (re)connection.
    logging.getLogger("kafka").setLevel(logging.WARNING)
