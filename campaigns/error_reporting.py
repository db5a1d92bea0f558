"""Error reports to Sentry, opt-in with ``SENTRY_DSN``, without customers' personal data.

Unset, nothing here touches sentry-sdk: it is never initialised. Set, :func:`init`
starts it once per process — the web app and the CLI (``create_app``), both workers
(the import of ``jobs``) — with the Flask integration, and the SDK's logging
integration turns every ERROR line into an event: an unexpected exception in a view,
a job that failed for good (Procrastinate's ``… ended with status: Error`` line, its
exception attached), an error the engine logged. Events carry the request id (a tag,
``request_id``) or the job (tags ``job_id``, ``task``, ``queue``, ``attempt``), so one
search in the logs finds the lines around it (docs/logging.md).

What leaves the process holds no phone number and no customer's name or variables:

- the SDK collects no personal data of its own (``send_default_pii`` is left unset,
  which is off, and this SDK deprecates setting it) and never reads request bodies
  (``max_request_body_size="never"``);
- its ``EventScrubber`` replaces the value of every key named like customers' data
  (``redact.PERSONAL_KEYS``: name, nome, phone, to, wa_id, customer_data, params,
  variables, …) wherever it is nested in the request, extra data, breadcrumbs' data and
  stack frames' local variables, before they are serialised;
- :func:`before_send` then goes over the text of the event (messages, exception values,
  local variables' reprs, extra data, the request, breadcrumbs) with
  ``redact.redact_personal`` — phone numbers, personal keys' quoted values in reprs and
  JSON, credentials in URLs — and drops the request's body and query string (a
  recipients search is ``?q=<name or number>``) whatever they hold;
- :func:`before_breadcrumb` does the same to each breadcrumb as it is recorded.

A name in free text under no such key is not recognised (docs/logging.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from campaigns import redact
from campaigns.config import sentry_settings

if TYPE_CHECKING:
    from sentry_sdk._types import Event

_started = False
# Keys whose values an event never carries: customers' data (redact.PERSONAL_KEYS), and
# where a request's query string or the page before it hides in a WSGI environ or the
# headers (a recipients search is ?q=<name>), and the process's command line (a CLI
# command's arguments).
FILTERED_KEYS = redact.PERSONAL_KEYS | {
    "referer",
    "http_referer",
    "query_string",
    "request_uri",
    "raw_uri",
    "sys.argv",
}
# Where an event's text is; the rest (timestamps, ids, SDK and runtime facts, source
# lines) is left alone: a timestamp or a trace id is not a phone number.
_TEXT_PARTS = ("logentry", "message", "extra", "request", "user")


def enabled() -> bool:
    return _started


def init() -> bool:
    """Start error reporting in this process if ``SENTRY_DSN`` is set; whether it runs."""
    global _started
    if _started:
        return True
    settings = sentry_settings()
    if settings is None:
        return False

    import sentry_sdk
    from sentry_sdk.integrations.flask import FlaskIntegration
    from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

    sentry_sdk.init(
        dsn=settings.dsn,
        environment=settings.environment,
        # 0 is no tracing at all, rather than transactions made and never sent.
        traces_sample_rate=settings.traces_sample_rate or None,
        server_name=os.environ.get("DYNO") or None,  # web.1, worker.2 on a Heroku-style platform
        integrations=[FlaskIntegration()],
        max_request_body_size="never",
        event_scrubber=EventScrubber(
            denylist=[*DEFAULT_DENYLIST, *sorted(FILTERED_KEYS)],
            recursive=True,
        ),
        before_send=before_send,
        before_send_transaction=before_send,  # a trace's request and breadcrumbs alike
        before_breadcrumb=before_breadcrumb,
    )
    _started = True
    return True


def _filtered(key: object) -> bool:
    return isinstance(key, str) and key.strip().lower().replace("-", "_") in FILTERED_KEYS


def scrub(value: Any) -> Any:
    """``value`` with filtered keys' values replaced and its text redacted, recursively."""
    if isinstance(value, str):
        return redact.redact_personal(value)
    if isinstance(value, Mapping):
        return {
            key: redact.FILTERED if _filtered(key) else scrub(item) for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    return value


def _values(event: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The event's exceptions and threads."""
    for part in ("exception", "threads"):
        container = event.get(part)
        values = container.get("values") if isinstance(container, Mapping) else None
        yield from (value for value in values or [] if isinstance(value, dict))


def _frames(event: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for value in _values(event):
        stacktrace = value.get("stacktrace")
        frames = stacktrace.get("frames") if isinstance(stacktrace, Mapping) else None
        yield from (frame for frame in frames or [] if isinstance(frame, dict))


def _job_tags(event: dict[str, Any]) -> None:
    """Procrastinate's line about a failed job carries the job in its extra data."""
    extra = event.get("extra")
    job = extra.get("job") if isinstance(extra, Mapping) else None
    if not isinstance(job, Mapping):
        return
    from campaigns.logs import job_fields

    tags = event.setdefault("tags", {})
    for name, value in job_fields(job).items():
        tags.setdefault(name, str(value))


def before_send(event: Event, hint: dict[str, Any]) -> Event:
    scrub_event(cast("dict[str, Any]", event))
    return event


def scrub_event(event: dict[str, Any]) -> None:
    """Tag a failed job's event with its job, then take personal data out of it."""
    _job_tags(event)
    request = event.get("request")
    if isinstance(request, dict):
        for part in ("data", "query_string", "cookies"):
            if request.get(part):
                request[part] = redact.FILTERED
    for part in _TEXT_PARTS:
        if part in event:
            event[part] = scrub(event[part])
    for value in _values(event):
        if isinstance(value.get("value"), str):  # the exception's message
            value["value"] = redact.redact_personal(value["value"])
    for frame in _frames(event):
        if "vars" in frame:
            frame["vars"] = scrub(frame["vars"])
    crumbs = event.get("breadcrumbs")
    if isinstance(crumbs, Mapping) and isinstance(crumbs.get("values"), list):
        for crumb in crumbs["values"]:
            if isinstance(crumb, dict):
                before_breadcrumb(crumb, {})


def before_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    if isinstance(crumb.get("message"), str):
        crumb["message"] = redact.redact_personal(crumb["message"])
    if "data" in crumb:
        crumb["data"] = scrub(crumb["data"])
    return crumb


def tag_request(request_id: str) -> None:
    """Name the request on the events it raises (its isolation scope is the SDK's)."""
    if _started:
        import sentry_sdk

        sentry_sdk.set_tag("request_id", request_id)


@contextmanager
def job_scope(fields: Mapping[str, object]) -> Iterator[None]:
    """A job's events (an error its code logs) carry its fields as tags."""
    if not _started:
        yield
        return
    import sentry_sdk

    with sentry_sdk.isolation_scope() as scope:
        for name, value in fields.items():
            scope.set_tag(name, str(value))
        yield
