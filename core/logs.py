"""JSON-lines logging with the request id, and a filter that masks personal data.

Every record leaves as one JSON object per line, or as one readable line when stderr is a
terminal (a person is watching). Before it is written, ID numbers, mobile numbers and tokens
are masked wherever they appear (in the message, its arguments, or any extra field), so a
careless log call cannot leak them; the access log keeps no query string of a signed link.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from core.outages import outage_of

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# 18-digit resident ID (last may be X) and 15-digit legacy ID, not inside a longer number.
_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])(\d{6})(\d{8}|\d{6})(\d{3}[0-9Xx]|\d{3})(?![0-9A-Za-z])")
_PHONE = re.compile(r"(?<!\d)(?:\+?86[- ]?)?(1[3-9]\d)(\d{4})(\d{4})(?!\d)")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_SECRET_PARAM = re.compile(
    r"(?i)((?:access_token|refresh_token|token|secret|session_key|password|sign|signature|js_code|paysign)"
    r"[\"']?\s*[:=]\s*[\"']?)([^\"'&\s,;}]+)"
)


def mask_text(text: str) -> str:
    """`text` with ID numbers, phone numbers and tokens masked."""
    text = _BEARER.sub(r"\1***", text)
    text = _SECRET_PARAM.sub(r"\1***", text)
    text = _ID_NUMBER.sub(lambda m: m.group(1)[:3] + "*" * (len(m.group(0)) - 7) + m.group(0)[-4:], text)
    text = _PHONE.sub(lambda m: f"{m.group(1)}****{m.group(3)}", text)
    return text


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: _mask_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_mask_value(v) for v in value)
    return value


class MaskingFilter(logging.Filter):
    """Masks personal data in the record's message and extras, in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = str(record.msg)
        record.msg = mask_text(message)
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                record.__dict__[key] = _mask_value(value)
        return True


# Routes whose query string is a credential (a signed file link is a live link to an ID photo).
SIGNED_ROUTE_PREFIXES = ("/files/",)


class SignedUrlFilter(logging.Filter):
    """Drops the query string of signed routes from Sanic's access-log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        line = getattr(record, "request", None)
        if isinstance(line, str) and "?" in line:
            method, _, url = line.partition(" ")
            parts = urlsplit(url)
            if parts.path.startswith(SIGNED_ROUTE_PREFIXES):
                record.request = f"{method} {urlunsplit(parts._replace(query='redacted'))}"
        return True


# taskiq's lines for every job it schedules and starts: a few every five seconds, which bury
# what matters; the jobs log what they did themselves.
_ROUTINE_PREFIXES = {
    "taskiq.cli.scheduler.run": "Sending task ",
    "taskiq.receiver.receiver": "Executing task ",
}


class JobOutageFilter(logging.Filter):
    """A job that failed because Redis or the database is down: one warning line, no traceback
    (the next run of the job, or its redelivery, does the work once the part is back)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        part = outage_of(exc) if exc is not None else None
        if part is not None:
            record.msg, record.args = "job failed: %s unavailable (%s); it runs again later", (part, type(exc).__name__)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class RoutineJobFilter(logging.Filter):
    """Turns taskiq's per-job chatter into DEBUG records, kept only when the level is DEBUG."""

    def __init__(self, level: str = "INFO"):
        super().__init__()
        self.level = logging.getLevelName(level)

    def filter(self, record: logging.LogRecord) -> bool:
        prefix = _ROUTINE_PREFIXES.get(record.name)
        if prefix and record.levelno == logging.INFO and str(record.msg).startswith(prefix):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return self.level <= logging.DEBUG
        return True


class RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request being served, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "request_id",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request id, message, process id and extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", request_id_var.get()),
            "msg": record.getMessage(),
            "pid": record.process,  # which worker of a server with several wrote it
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = mask_text(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class ReadableFormatter(logging.Formatter):
    """One line a person reads: time, level, logger, message, then the extras as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        message = record.getMessage()
        extras = {
            key: value
            for key, value in record.__dict__.items()
            if key not in _STANDARD_ATTRS and not key.startswith("_")
        }
        if record.name == "sanic.access":
            message = f"{extras.pop('request', '')} {extras.pop('status', '')} {extras.pop('byte', '')}"
            message += extras.pop("duration", "")
            extras.pop("host", None)
        line = f"{time} {record.levelname:<7} {record.name}: {message}"
        rid = getattr(record, "request_id", "-")
        if rid != "-":
            line += f" [{rid}]"
        # An extra the message already spells out is said once.
        said = [f"{key}={value}" for key, value in extras.items() if str(value) not in message]
        if said:
            line += "  " + " ".join(said)
        if record.exc_info:
            line += "\n" + mask_text(self.formatException(record.exc_info))
        return line


def logging_config(level: str = "INFO", *, readable: bool | None = None) -> dict[str, Any]:
    """A dictConfig for our loggers and Sanic's, all on stderr, all masked: JSON lines, or readable
    lines when `readable` (by default: when stderr is a terminal)."""
    if readable is None:
        readable = sys.stderr.isatty()
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "readable" if readable else "json",
        "filters": ["request_id", "mask"],
        "stream": "ext://sys.stderr",
    }
    filters_of = {
        "sanic.access": ["signed_urls"],
        "taskiq.cli.scheduler.run": ["routine_jobs"],
        "taskiq.receiver.receiver": ["routine_jobs", "job_outages"],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": RequestIdFilter},
            "mask": {"()": MaskingFilter},
            "signed_urls": {"()": SignedUrlFilter},
            "routine_jobs": {"()": RoutineJobFilter, "level": level},
            "job_outages": {"()": JobOutageFilter},
        },
        "formatters": {"json": {"()": JsonFormatter}, "readable": {"()": ReadableFormatter}},
        "handlers": {"json": handler},
        "root": {"level": level, "handlers": ["json"]},
        "loggers": {
            name: {"level": level, "handlers": ["json"], "propagate": False, "filters": filters_of.get(name, [])}
            for name in (
                "sanic.root",
                "sanic.error",
                "sanic.access",
                "sanic.server",
                "sanic.websockets",
                "zhangban",
                "taskiq",
                "taskiq.cli.scheduler.run",
                "taskiq.receiver.receiver",
                "tortoise",
            )
        },
    }


def setup_logging(level: str = "INFO") -> None:
    """Installs the JSON, masked logging for this process."""
    import logging.config

    logging.config.dictConfig(logging_config(level))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(exc_type, exc, tb) -> None:
    logging.getLogger("zhangban").critical("uncaught exception", exc_info=(exc_type, exc, tb))
