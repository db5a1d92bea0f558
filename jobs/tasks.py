"""Procrastinate tasks: ids in, one domain call, nothing else."""

from __future__ import annotations

import logging

from campaigns import queries
from jobs import MAINTENANCE_QUEUE, app

logger = logging.getLogger(__name__)


@app.task(name="maintenance.ping", queue=MAINTENANCE_QUEUE)
def ping(token: str) -> str:
    """Prove the round trip web → Postgres → worker → Flask app context → database."""
    queries.database_time()
    logger.info("ping %s", token)
    return token
