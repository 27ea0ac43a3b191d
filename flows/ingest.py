"""The ``ingest_queue`` flow: queue rows become render flow runs (scheduled every POLL_INTERVAL).

Each run: requeue expired leases; settle rows whose flow run ended without writing back; claim up to the
free capacity (MAX_JOBS minus this worker's rows in processing); create one render flow run per row with
``run_deployment(timeout=0, idempotency_key=...)``. An invalid payload fails its row and ingestion goes on.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python flows/ingest.py`: make the project root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from typing import Any, Literal

from prefect import flow

from mindscript.settings import get_settings
from tasks.ingest import RENDER_DEPLOYMENT, claim, reconcile_flow_runs, requeue_expired, submit, summary


@flow(name="ingest_queue", flow_run_name="ingest")
def ingest_queue(max_jobs: int | None = None, deployment: str = RENDER_DEPLOYMENT,
                 capacity: Literal["worker", "pool"] = "worker") -> dict[str, Any]:
    """Turn available queue rows into render flow runs; returns what it requeued, settled and submitted.

    ``capacity="worker"`` (serve.py) counts this worker's active rows against ``max_jobs``; ``"pool"``
    (prefect.yaml) counts every active row against ``max_jobs``, the work pool's total."""
    requeued = requeue_expired()
    settled = reconcile_flow_runs()
    rows = claim(max_jobs if max_jobs is not None else get_settings().max_jobs, capacity)
    runs = [submit(row, deployment) for row in rows]
    return summary(requeued, settled, rows, runs)


if __name__ == "__main__":
    print(ingest_queue())
