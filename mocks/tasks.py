"""The mock WhatsApp's own job: post its status webhooks back to the app, as Meta would.

``jobs.app`` imports this module only when mocks are on, so a production worker
never registers it (nor its periodic run); a process whose Flask config turns
mocks off still finds it doing nothing.
"""

from __future__ import annotations

import logging

import psycopg
from flask import current_app
from procrastinate.exceptions import AlreadyEnqueued, ProcrastinateException

from campaigns.queues import MAINTENANCE_QUEUE
from jobs import app, open_for_deferring

logger = logging.getLogger(__name__)

POST_WEBHOOKS_LOCK = "mock_whatsapp.post_webhooks"
# Sooner than this, the job comes back by itself; later, the periodic run is soon enough.
COME_BACK_WITHIN_SECONDS = 60.0


@app.periodic(cron="* * * * *", periodic_id="mock-whatsapp-webhooks")
@app.task(
    name="mock_whatsapp.post_webhooks",
    queue=MAINTENANCE_QUEUE,
    # One waiting run at most: it posts whatever is due when it starts.
    queueing_lock=POST_WEBHOOKS_LOCK,
    # And one running at most. The queueing lock frees as a run starts, and the mock
    # server defers a run every second while it accepts calls, so runs slower than that
    # (webhooks to a busy web) piled up until they held all ten of the ops worker's
    # slots and starved the pump on the same worker: sending stopped (bench/soak.py).
    lock=POST_WEBHOOKS_LOCK,
)
def post_webhooks(timestamp: int | None = None) -> None:
    """Post the mock's due status webhooks, then come back when the next one is due."""
    if not current_app.config["MOCKS_ENABLED"]:
        return
    from mocks import whatsapp

    report = whatsapp.post_due_webhooks()
    if report.next_due_in is not None and report.next_due_in < COME_BACK_WITHIN_SECONDS:
        defer_post_webhooks(report.next_due_in)


def defer_post_webhooks(seconds: float) -> None:
    """Have the due webhooks posted in about ``seconds``, unless a run is already waiting.

    Never raises: the periodic run posts whatever a failed deferral leaves behind.
    """
    try:
        open_for_deferring()
        # procrastinate types schedule_in's values int; it passes them to timedelta(), floats too
        post_webhooks.configure(schedule_in={"seconds": max(seconds, 0.0)}).defer()  # type: ignore[arg-type]
    except AlreadyEnqueued:
        pass  # the waiting run will post these too
    except (ProcrastinateException, psycopg.Error) as error:
        logger.warning("mock webhooks: could not defer the poster: %s", error)
