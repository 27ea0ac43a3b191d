"""MindScript render worker: the domain library (no Prefect imports below this package)."""
