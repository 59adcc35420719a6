"""gunicorn's settings for `manage.py serve --http-workers N` (given as `--config python:...`).

A worker that exits leaves its metric files behind in PROMETHEUS_MULTIPROC_DIR: its counters still
count (they happened), its share of a live gauge (open sockets) must not (kahn_site.metrics).
"""

from typing import Any

from prometheus_client import multiprocess


def child_exit(server: Any, worker: Any) -> None:
    multiprocess.mark_process_dead(worker.pid)
