"""The engine benchmark's floor: the same calls to the same mock, from one process, no engine.

``bench/engine.py`` starts this as a process of its stack, beside the mock, and
measures its CPU (and Postgres's, and the mock's) from outside, like any worker's:

    python -m bench.engine_floor

It makes ``BENCH_FLOOR_CALLS`` calls of :func:`campaigns.providers.cloud_api.post_message`
(the pooled session the engine's calls use, the body
:func:`~campaigns.providers.cloud_api.template_message` builds for the benchmark
campaign's template) on the call pool of :mod:`campaigns.calls`, with
``BENCH_FLOOR_IN_FLIGHT`` threads: as many calls in flight as the engine's worker
processes together. No database, no limiter, no jobs: what the calls cost alone.

The call comes from the environment, as for ``bench/engine_baseline.py``:
``BENCH_BASELINE_URL``, ``BENCH_BASELINE_PHONE_NUMBER_ID``, ``BENCH_BASELINE_PAYLOAD``.
Prints one JSON line (calls, errors, seconds, CPU seconds of this process).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter

from bench.engine_baseline import _call, phone_for
from campaigns import calls
from campaigns.providers.base import SendError
from campaigns.providers.cloud_api import post_message


def floor(count: int, in_flight: int) -> dict[str, object]:
    """Make ``count`` calls with ``in_flight`` at a time; what it took."""
    base_url, phone_number_id, payload = _call()
    errors: Counter[str] = Counter()
    wall, cpu = time.perf_counter(), time.process_time()
    futures = [
        calls.start(
            in_flight,
            post_message,
            base_url,
            phone_number_id,
            None,
            payload | {"to": phone_for(i), "biz_opaque_callback_data": str(i)},
        )
        for i in range(1, count + 1)
    ]
    for group in calls.as_they_return(futures):
        for future in group:
            error = future.exception()
            if error is not None:
                errors[str(error) if isinstance(error, SendError) else repr(error)] += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "calls": count,
        "in_flight": in_flight,
        "errors": dict(errors),
        "seconds": round(wall, 3),
        "per_s": round(count / wall, 1),
        "cpu_ms_per_call": round(cpu * 1000 / count, 3),
    }


def main() -> int:
    result = floor(int(os.environ["BENCH_FLOOR_CALLS"]), int(os.environ["BENCH_FLOOR_IN_FLIGHT"]))
    print(json.dumps(result), flush=True)
    # Stay up until stopped, so the stack reads this process's CPU after the last call.
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
