"""The engine benchmark's baseline: Procrastinate jobs that make the send call and nothing else.

``bench/engine.py`` defers these in bulk and runs them with the Procfile's worker
command, pointed at ``--app=bench.engine_baseline.app``: same queue, concurrency,
polling interval, job deletion and thread pool as ``jobs.app``, and the same HTTP
call the mock provider makes (:func:`campaigns.providers.cloud_api.post_message`,
its pooled session, the body :func:`~campaigns.providers.cloud_api.template_message`
builds). No Flask app context, no database work of its own, no rate limit: what
the queue and the call cost alone, on the same machine in the same run.

The worker reads the call from the environment ``bench/engine.py`` gives it:
``BENCH_BASELINE_URL`` (the mock's Cloud API base), ``BENCH_BASELINE_PHONE_NUMBER_ID``
and ``BENCH_BASELINE_PAYLOAD`` (a template message for the benchmark campaign's template).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import procrastinate

from campaigns.config import database_url
from campaigns.providers.cloud_api import post_message
from campaigns.queues import MESSAGES_QUEUE
from jobs import app as jobs_app
from jobs.context import size_thread_pool

SEND_TASK = "bench.baseline_send"

app = procrastinate.App(
    # jobs.app's pool: one connection at least, ten at most.
    connector=procrastinate.PsycopgConnector(conninfo=database_url, min_size=1, max_size=10),
    worker_defaults={
        **jobs_app.worker_defaults,
        # No Flask app context per job: nothing here touches the app's database.
        "task_middleware": [],
        "worker_middleware": [size_thread_pool],
    },
)


@functools.cache
def _call() -> tuple[str, str, dict[str, Any]]:
    return (
        os.environ["BENCH_BASELINE_URL"],
        os.environ["BENCH_BASELINE_PHONE_NUMBER_ID"],
        json.loads(os.environ["BENCH_BASELINE_PAYLOAD"]),
    )


def phone_for(message_id: int) -> str:
    """A distinct Brazilian mobile per message, never one of the mock's forced-error endings."""
    return f"+55119{message_id % 10_000_000:07d}1"


@app.task(name=SEND_TASK, queue=MESSAGES_QUEUE)
def send(message_id: int) -> None:
    """POST one template message to the mock, as the mock provider does; raise if refused."""
    base_url, phone_number_id, payload = _call()
    body = payload | {"to": phone_for(message_id), "biz_opaque_callback_data": str(message_id)}
    post_message(base_url, phone_number_id, None, body)
