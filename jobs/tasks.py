"""Procrastinate tasks: ids in, one domain call, nothing else."""

from __future__ import annotations

import logging

from procrastinate import RetryStrategy

from campaigns import queries, services
from jobs import MAINTENANCE_QUEUE, app

logger = logging.getLogger(__name__)


@app.task(name="maintenance.ping", queue=MAINTENANCE_QUEUE)
def ping(token: str) -> str:
    """Prove the round trip web → Postgres → worker → Flask app context → database."""
    queries.database_time()
    logger.info("ping %s", token)
    return token


@app.task(
    name="templates.sync",
    queue=MAINTENANCE_QUEUE,
    retry=RetryStrategy(max_attempts=2, exponential_wait=5),
)
def sync_template(template_id: int) -> None:
    """Record a submitted template's review outcome (later ones: the periodic sync)."""
    services.sync_template_status(template_id)


@app.periodic(cron="*/5 * * * *", periodic_id="sync-pending-templates")
@app.task(
    name="templates.sync_pending", queue=MAINTENANCE_QUEUE, queueing_lock="templates.sync_pending"
)
def sync_pending_templates(timestamp: int) -> None:
    """Every five minutes, refresh every template still under review."""
    for template_id in services.pending_template_ids():
        try:
            services.sync_template_status(template_id)
        except services.ServiceError as error:
            logger.warning("template %s: status sync failed: %s", template_id, error.message)
