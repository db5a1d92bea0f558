"""Every process's log lines: ``LOG_FORMAT=text`` (the default) or ``json``.

In JSON every line is one object: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
``message``, then the context of the line — ``request_id`` while a request is
handled, ``job_id``, ``task``, ``queue``, ``attempt`` (and ``campaign_id`` when the job
names one) while a job runs — the fields a caller passed in ``extra=``, and
``exception`` (the formatted traceback, as one string) when there is one. ``json.dumps``
escapes newlines, so no line ever spans two.

The context lives in a context variable (:func:`bind`, set by ``request_id.py``'s
middleware and by the worker's task middleware, ``jobs/context.py``) and a
:class:`ContextFilter` copies it onto each record as it is handled, in the thread that
wrote it. Procrastinate's own lines about a job (``Starting job …``, ``… ended with
status``) are written by the worker's event loop, outside the job's thread: their
``extra`` carries the job, which the formatter reads instead.

The formatter is the standard library's ``json`` over a dict: the fields are this
project's (gunicorn's access log atoms, Procrastinate's job extras), so a JSON logging
library would save only the ``json.dumps`` call while adding a dependency to every
process. Nothing here imports Flask: gunicorn's master process loads it from
``gunicorn.conf.py``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any, TextIO

from campaigns.config import log_format

# The fields of the line being written, beyond the record's own: request_id, job_id, ...
_EMPTY: Mapping[str, object] = MappingProxyType({})
_context: ContextVar[Mapping[str, object]] = ContextVar("log_context", default=_EMPTY)

# A LogRecord's own attributes: whatever else a record holds came in ``extra=``.
_BARE_RECORD = logging.LogRecord("", logging.INFO, "", 0, "", None, None)
_RECORD_ATTRIBUTES = frozenset(vars(_BARE_RECORD)) | {"message", "asctime", "taskName"}
# Procrastinate's extras: ``job`` becomes the job's fields; ``jobs`` (every deferred
# job's context, on a batch defer) and ``worker`` (repeated on every line) are dropped.
_DROPPED_EXTRAS = frozenset({"job", "jobs", "worker"})


def json_enabled() -> bool:
    return log_format() == "json"


def bind(**fields: object) -> Token[Mapping[str, object]]:
    """Add fields to every line this thread (or task) writes, until :func:`unbind`."""
    return _context.set({**_context.get(), **fields})


def unbind(token: Token[Mapping[str, object]]) -> None:
    _context.reset(token)


@contextmanager
def bound(**fields: object) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def job_fields(job: Any) -> dict[str, object]:
    """The fields a job's lines carry, from a Procrastinate ``Job`` or its log context."""
    get = job.get if isinstance(job, Mapping) else lambda name: getattr(job, name, None)
    fields: dict[str, object] = {
        "job_id": get("id"),
        "task": get("task_name"),
        "queue": get("queue"),
    }
    attempts, status = get("attempts"), get("status")
    # attempts counts the runs before this one; a job only deferred (todo) has no attempt.
    if isinstance(attempts, int) and status in (None, "doing"):
        fields["attempt"] = attempts + 1
    kwargs = get("task_kwargs")
    if isinstance(kwargs, Mapping) and isinstance(kwargs.get("campaign_id"), int):
        fields["campaign_id"] = kwargs["campaign_id"]
    return {name: value for name, value in fields.items() if value is not None}


class ContextFilter(logging.Filter):
    """Copies the bound context onto the record, in the thread that wrote it."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def _unescape(value: object) -> object:
    # gunicorn's SafeAtoms escapes double quotes for its text format.
    return value.replace('\\"', '"') if isinstance(value, str) else value


def _access_fields(atoms: Mapping[str, Any]) -> dict[str, object]:
    """gunicorn's access log line as fields: never the query string nor the Referer,
    which carry recipients' phones and names (gunicorn.conf.py)."""
    status = str(atoms["s"])
    fields: dict[str, object] = {
        "remote_addr": atoms["h"],
        "method": atoms["m"],
        "path": _unescape(atoms["U"]),
        "status": int(status) if status.isdigit() else status,
        "bytes": atoms["B"] if isinstance(atoms["B"], int) else None,
        "duration_ms": atoms["M"],
        "user_agent": _unescape(atoms["a"]),
    }
    request_id = atoms["{x-request-id}o"]  # the response's header: request_id.py set it
    if request_id != "-":
        fields["request_id"] = request_id
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, context, extra, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
        }
        if record.name == "gunicorn.access" and isinstance(record.args, Mapping):
            atoms = record.args
            line["message"] = f"{atoms['m']} {_unescape(atoms['U'])} {atoms['s']}"
            line |= _access_fields(atoms)
        else:
            line["message"] = record.getMessage()
            job = getattr(record, "job", None)
            if isinstance(job, Mapping):  # Procrastinate's line about a job
                line |= job_fields(job)
            worker = getattr(record, "worker", None)
            if isinstance(worker, Mapping) and worker.get("name"):
                line["worker"] = worker["name"]
            for name, value in vars(record).items():
                if name not in _RECORD_ATTRIBUTES and name not in _DROPPED_EXTRAS:
                    line.setdefault(name, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def _is_ours(handler: logging.Handler) -> bool:
    return isinstance(handler.formatter, JsonFormatter)


def json_handler(stream: TextIO | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    return handler


def _log_uncaught(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, traceback)
        return
    logging.getLogger("disparo").critical("uncaught exception", exc_info=(kind, error, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        logging.getLogger("disparo").critical(
            "uncaught exception in thread %s",
            args.thread.name if args.thread else "?",
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )


def configure(level: int | str = logging.INFO) -> None:
    """Set up this process's logging to stdout (12-factor), once; later calls change nothing.

    Text: the format Disparo always wrote, unless something (Procrastinate's CLI,
    gunicorn) configured the root logger first. JSON: the JSON handler on the root
    logger, in place of any plain stream handler already there, and warnings and
    uncaught exceptions go through it too, so every line of the process is JSON.
    """
    root = logging.getLogger()
    if not json_enabled():
        if not root.handlers:
            text = logging.StreamHandler(sys.stdout)
            text.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root.addHandler(text)
            root.setLevel(level)
        return
    if not any(_is_ours(handler) for handler in root.handlers):  # gunicorn's config may have
        for handler in list(root.handlers):
            # Another configuration's plain console handler (alembic.ini's, basicConfig's);
            # pytest's capture handlers and files stay.
            if type(handler) is logging.StreamHandler and handler.stream in (
                sys.stdout,
                sys.stderr,
                sys.__stdout__,
                sys.__stderr__,
            ):
                root.removeHandler(handler)
        root.addHandler(json_handler())
        root.setLevel(level)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def gunicorn_logconfig() -> dict[str, Any]:
    """gunicorn's ``logconfig_dict`` in JSON: its error and access logs through the
    root logger's JSON handler (gunicorn replaces its own handlers with these)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"context": {"()": ContextFilter}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "json",
                "filters": ["context"],
            }
        },
        "root": {"level": "INFO", "handlers": ["json"]},
        # No level on gunicorn.error: gunicorn's --log-level has set it.
        "loggers": {
            "gunicorn.error": {"handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
        },
    }
