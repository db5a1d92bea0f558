"""The queue monitor (admin): Procrastinate's jobs by queue and status, retry and cancel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, abort, flash, render_template, request, url_for
from flask_login import current_user
from werkzeug.wrappers import Response

from campaigns import queues
from campaigns.auth import requires
from campaigns.htmx import redirect_to
from campaigns.i18n import _
from campaigns.models import Role, User
from campaigns.services import NotFound, ServiceError
from campaigns.services.queue import cancel_job, retry_job

bp = Blueprint("queue", __name__, url_prefix="/admin/queue")


def _filters() -> queues.JobFilters:
    # Failed jobs are what an admin comes here for; "any status" is one choice away.
    return queues.JobFilters.from_args(request.args, default_status="failed")


@bp.get("/")
@requires(Role.ADMIN)
def queue_index() -> str:
    """Counts per queue and status, workers, stalled jobs, and the filtered job list."""
    return render_template(
        "queue/index.html",
        health=queues.queue_health(),
        page=queues.list_jobs(_filters()),
        statuses=queues.JOB_STATUSES,
    )


@bp.get("/counts")
@requires(Role.ADMIN)
def queue_counts() -> str:
    """The counts, workers and stalled jobs alone (polled)."""
    return render_template(
        "queue/_counts.html", health=queues.queue_health(), statuses=queues.JOB_STATUSES
    )


@bp.get("/jobs")
@requires(Role.ADMIN)
def queue_jobs() -> str:
    """The job list alone: re-rendered by the filters and the "older" link."""
    return render_template("queue/_jobs.html", page=queues.list_jobs(_filters()))


def _job_action(job_id: int, action: Callable[[int, User], None], done: str) -> Response:
    try:
        action(job_id, current_user)
    except NotFound:
        abort(404)
    except ServiceError as error:
        flash(error.message, "error")
    else:
        flash(done % {"id": job_id}, "success")
    args: dict[str, Any] = _filters().as_args()  # url_for's own keywords aren't str
    return redirect_to(url_for("queue.queue_index", **args))


@bp.post("/jobs/<bigint:job_id>/retry")
@requires(Role.ADMIN)
def job_retry(job_id: int) -> Response:
    """Run a failed job once more, now."""
    return _job_action(job_id, retry_job, _("Job #%(id)d is back in its queue."))


@bp.post("/jobs/<bigint:job_id>/cancel")
@requires(Role.ADMIN)
def job_cancel(job_id: int) -> Response:
    """Cancel a waiting job."""
    return _job_action(job_id, cancel_job, _("Job #%(id)d is cancelled."))
