"""``flask queue``: the job queue from the command line, so no operator needs SQL.

``status`` reads what the queue monitor shows (counts per queue and status, workers and
their heartbeats, stalled jobs) plus how long each queue's oldest due job has waited;
``retry-failed`` and ``cancel-campaign`` run the monitor's and the campaign page's own
actions (``services/queue``); ``purge`` deletes finished jobs as the hourly maintenance
does, sooner. Every statement on Procrastinate's tables is in ``campaigns/queues.py``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import babel.dates
import click
from flask.cli import AppGroup

from app import db
from campaigns import audit, queries, queues, reasons
from campaigns.i18n import _, format_datetime, format_number, get_locale, ngettext
from campaigns.labels import label_for
from campaigns.services import ServiceError
from campaigns.services import queue as queue_service

queue_cli = AppGroup("queue", help="Inspect and repair the job queue.")

# The maintenance task's own age for finished jobs (jobs/tasks.py, remove_old_jobs: 72 h).
PURGE_DEFAULT_DAYS = 3


def _duration(seconds: float) -> str:
    """A wait in the reader's words: "3 min", "2 h"."""
    # Babel's own: Flask-Babel's wrapper has no short format.
    return str(
        babel.dates.format_timedelta(
            timedelta(seconds=seconds), threshold=0.9, format="short", locale=get_locale()
        )
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """Columns padded to their widest cell; the ``right`` ones (numbers) aligned right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _known_queue(value: str | None) -> str | None:
    """``--queue``: one of Disparo's queues, or one that holds jobs now."""
    if value is None:
        return None
    names = [counts.queue for counts in queues.queue_counts()]
    db.session.rollback()
    if value not in names:
        raise click.BadParameter(
            _("There is no queue “%(queue)s”. Queues: %(names)s.")
            % {"queue": value, "names": ", ".join(names)},
            param_hint="--queue",
        )
    return value


def _existing_campaign(campaign_id: int | None, hint: str) -> int | None:
    if campaign_id is None:
        return None
    found = queries.get_campaign(campaign_id) is not None
    db.session.rollback()
    if not found:
        raise click.BadParameter(
            _("There is no campaign #%(id)d.") % {"id": campaign_id}, param_hint=hint
        )
    return campaign_id


def _as_json(health: queues.QueueHealth, oldest: dict[str, float]) -> dict[str, Any]:
    """``status --json``: codes, counts, ids, seconds and ISO times; no words."""
    return {
        "queues": [
            {
                "queue": counts.queue,
                **{status: counts.count(status) for status in queues.JOB_STATUSES},
                "due": counts.due,
                "oldest_due_seconds": (
                    round(oldest[counts.queue], 1) if counts.queue in oldest else None
                ),
            }
            for counts in health.queues
        ],
        "workers": [
            {
                "id": worker.id,
                "last_heartbeat": worker.last_heartbeat.isoformat(),
                "seconds_since_heartbeat": round(worker.seconds_since_heartbeat, 1),
                "running": worker.running,
                "live": worker.is_live,
            }
            for worker in health.workers
        ],
        "live_workers": health.live_workers,
        "heartbeat_seconds": health.heartbeat_seconds,
        "stalled_jobs": [job.id for job in health.stalled],
        "stalled_after_seconds": health.stalled_after_seconds,
    }


@queue_cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
def queue_status(as_json: bool) -> None:
    """Jobs by queue and status, each queue's oldest due job, workers and heartbeats."""
    health = queues.queue_health()
    oldest = queues.oldest_due_seconds()
    db.session.rollback()
    if as_json:
        click.echo(json.dumps(_as_json(health, oldest), indent=2))
        return
    n = format_number
    statuses = [s for s in queues.JOB_STATUSES if s != "todo"]
    header = [
        _("Queue"),
        label_for("job_status", "todo"),
        _("due now"),
        *(label_for("job_status", s) for s in statuses),
        _("oldest due job waiting"),
    ]
    rows = [
        [
            counts.queue,
            n(counts.todo),
            n(counts.due),
            *(n(counts.count(s)) for s in statuses),
            _duration(oldest[counts.queue]) if counts.queue in oldest else "—",
        ]
        for counts in health.queues
    ]
    click.echo(_table(header, rows, right=set(range(1, len(header)))))
    click.echo()
    if not health.workers:
        click.echo(_("No worker is registered: nothing runs the jobs."))
    else:
        worker_rows = [
            [
                str(worker.id),
                format_datetime(worker.last_heartbeat, "medium"),
                _duration(worker.seconds_since_heartbeat),
                n(worker.running),
                _("live") if worker.is_live else _("silent"),
            ]
            for worker in health.workers
        ]
        header = [_("Worker"), _("Last heartbeat"), _("ago"), _("running"), _("state")]
        click.echo(_table(header, worker_rows, right={0, 3}))
    click.echo(
        _("Live workers (a heartbeat within %(s)s s): %(n)s.")
        % {"s": health.heartbeat_seconds, "n": n(health.live_workers)}
    )
    if health.stalled:
        click.echo(
            ngettext(
                "%(n)s stalled job (its worker silent over %(s)s s): maintenance retries"
                " it within 2 minutes: %(ids)s",
                "%(n)s stalled jobs (their worker silent over %(s)s s): maintenance retries"
                " them within 2 minutes: %(ids)s",
                len(health.stalled),
                n=n(len(health.stalled)),
                s=health.stalled_after_seconds,
                ids=", ".join(f"#{job.id}" for job in health.stalled),
            )
        )


@queue_cli.command("retry-failed")
@click.option("--queue", "queue", metavar="QUEUE", help="Only this queue's failed jobs.")
@click.option("--campaign", "campaign_id", type=int, metavar="ID", help="Only this campaign's.")
def queue_retry_failed(queue: str | None, campaign_id: int | None) -> None:
    """Run every failed job (of a queue, of a campaign) once more, now, as the monitor's
    retry does."""
    queue = _known_queue(queue)
    campaign_id = _existing_campaign(campaign_id, "--campaign")
    done = queue_service.retry_failed_jobs(queue, campaign_id, None)
    click.echo(
        ngettext(
            "Retried %(n)s failed job.",
            "Retried %(n)s failed jobs.",
            len(done.retried),
            n=format_number(len(done.retried)),
        )
    )
    if done.held:
        click.echo(
            ngettext(
                "%(n)s left failed: a waiting job holds its queueing lock and will run: %(ids)s",
                "%(n)s left failed: a waiting job holds each one's queueing lock and will"
                " run: %(ids)s",
                len(done.held),
                n=format_number(len(done.held)),
                ids=", ".join(f"#{job_id}" for job_id in done.held),
            )
        )
    if campaign_id is not None:
        # A failed message job's messages are failed by maintenance (job_failed): a job
        # retried after that finds nothing to send. The campaign's own retry sends them.
        click.echo(
            _(
                "Messages the campaign already failed are sent again from its page: the"
                " Errors section's “Retry … failed messages”."
            )
        )


@queue_cli.command("cancel-campaign")
@click.argument("campaign_id", type=int, metavar="ID")
def queue_cancel_campaign(campaign_id: int) -> None:
    """Cancel a campaign as its page does, and its waiting jobs with it."""
    actor = audit.current_actor()
    detail = reasons.Reason(reasons.COMMAND_LINE, {"actor": str(actor)})
    try:
        done = queue_service.cancel_campaign_and_jobs(campaign_id, None, detail)
    except ServiceError as error:
        raise click.ClickException(error.message) from None
    n = format_number
    if done.already_cancelled:
        click.echo(_("Campaign #%(id)d was already cancelled.") % {"id": campaign_id})
    else:
        click.echo(
            _(
                "Campaign #%(id)d is cancelled: its messages not sent yet are cancelled and"
                " its owner is notified."
            )
            % {"id": campaign_id}
        )
    click.echo(
        _("Waiting jobs cancelled: %(jobs)s (with %(messages)s messages still waiting in them).")
        % {"jobs": n(done.jobs), "messages": n(done.messages)}
    )


@queue_cli.command("purge")
@click.option(
    "--older-than",
    "days",
    type=click.IntRange(min=0),
    default=PURGE_DEFAULT_DAYS,
    show_default=True,
    metavar="DAYS",
    help="Only jobs that ended more than this many days ago (0: every finished job).",
)
@click.option(
    "--status",
    "statuses",
    type=click.Choice(queues.FINISHED_STATUSES),
    multiple=True,
    help="Only jobs that ended so (repeat for several); default: every finished status.",
)
@click.option("--yes", is_flag=True, help="Delete without asking.")
def queue_purge(days: int, statuses: tuple[str, ...], yes: bool) -> None:
    """Delete finished jobs (never waiting or running ones), in batches."""
    chosen = list(statuses or queues.FINISHED_STATUSES)
    words = ", ".join(label_for("job_status", s) for s in chosen)
    deletable, kept = queue_service.purgeable_jobs(days, chosen)
    n = format_number
    if kept:
        click.echo(
            ngettext(
                "%(n)s failed message job is kept: its messages still wait, and maintenance"
                " settles them within 2 minutes.",
                "%(n)s failed message jobs are kept: their messages still wait, and"
                " maintenance settles them within 2 minutes.",
                kept,
                n=n(kept),
            )
        )
    # The age as its own phrase, so each sentence's plural follows its own count.
    age = ngettext("%(n)s day", "%(n)s days", days, n=n(days))
    click.echo(
        _("Finished jobs (%(statuses)s) that ended over %(age)s ago: %(n)s.")
        % {"statuses": words, "age": age, "n": n(deletable)}
    )
    if not deletable:
        return
    if not yes:
        click.confirm(_("Delete them?"), abort=True)
    done = queue_service.purge_finished_jobs(days, chosen, None)
    click.echo(
        ngettext(
            "Deleted %(n)s finished job.",
            "Deleted %(n)s finished jobs.",
            done.deleted,
            n=n(done.deleted),
        )
    )
