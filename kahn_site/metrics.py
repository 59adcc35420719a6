"""The operator's metrics: what this deployment's processes did, at `/metrics` for Prometheus.

Counted where it happens (the ingest requests here, imports in `ingest.archive`, sockets in
`runs.consumers`, alert deliveries in `runs.alerts.delivery`) and served behind `KAHN_METRICS_TOKEN`;
without the token the path is not served at all. A tenant's own figures, computed from its stored
rows, are another endpoint (`GET /api/v1/metrics`, `runs.metrics`).

Several processes, one answer: `manage.py serve --http-workers N` gives its gunicorn workers and its
daphne one `PROMETHEUS_MULTIPROC_DIR`, where prometheus-client keeps each process's values in a
file; whichever worker answers a scrape adds them all up (the client's multiprocess mode). Any
other process of the host started with the same directory (a Celery worker, `ingest_archive`) is
counted with them. A single daphne (`manage.py serve`) counts in its own memory.
"""

from __future__ import annotations

import hmac
import os
import re
import time
from collections.abc import Callable

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

METRICS_PATH = "/metrics"
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# A producer's writes (SPEC section 5): events POSTed, a graph or summary PUT.
_INGEST_WRITE = re.compile(r"^/api/v1/runs/[^/]+/(events|graph|summary)/?$")

INGEST_REQUESTS = Counter(
    "kahn_ingest_requests_total",
    "Producers' ingest requests (POST events, PUT graph or summary), by result: ok or the error code.",
    ["result"],
)
INGEST_SECONDS = Histogram(
    "kahn_ingest_request_duration_seconds",
    "Time to answer an ingest request, by result.",
    ["result"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
INGEST_EVENTS = Counter(
    "kahn_ingest_events_total",
    "Events of ingest requests, by result: accepted (stored) or duplicate (already stored, a retry).",
    ["result"],
)
RATE_LIMITED = Counter(
    "kahn_rate_limited_requests_total", "Requests refused with 429 rate_limited, over a tenant's plan."
)
IMPORTED_EVENTS = Counter("kahn_import_events_total", "Events stored by archive imports.")
IMPORTED_RUNS = Counter("kahn_import_runs_total", "Runs that archive imports changed.")
IMPORT_SECONDS = Counter(
    "kahn_import_seconds_total",
    "Time spent importing archives; events per second is the rate of events over the rate of this.",
)
LIVE_SOCKETS = Gauge("kahn_live_sockets", "Live-update sockets open now.", multiprocess_mode="livesum")
LIVE_MESSAGES = Counter("kahn_live_messages_total", "Messages sent on live-update sockets.")
ALERT_DELIVERIES = Counter(
    "kahn_alert_deliveries_total",
    "Alert delivery attempts (Celery's worker in cloud mode, serve's loop in OSS), by channel and result.",
    ["channel", "result"],
)


def ingest_result(response: HttpResponse) -> str:
    """`ok`, or the contract's error code (SPEC section 11): a handful of values, never free text."""
    if response.status_code < 400:
        return "ok"
    try:
        code = orjson.loads(response.content)["error"]["code"]
    except (AttributeError, KeyError, TypeError, ValueError):
        return str(response.status_code)
    return code if isinstance(code, str) and code.isidentifier() else str(response.status_code)


def exposition() -> bytes:
    """Every metric of this deployment in Prometheus' text format: all processes sharing the
    multiprocess directory when there is one, with the answering process's own CPU and memory."""
    if not os.environ.get(MULTIPROCESS_DIR_VARIABLE):
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    ProcessCollector(registry=registry)
    return generate_latest(registry)


def _token_matches(request: HttpRequest, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


class MetricsMiddleware:
    """Serves `/metrics` (before any tenant is chosen: the operator is no tenant's member, and the
    token is no API key), and times every ingest write, whatever answers it: the view, or a
    refusal before it (a bad key, a rate limit)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = settings.KAHN_METRICS_TOKEN
        if request.path == METRICS_PATH and token:
            if not _token_matches(request, token):
                response = HttpResponse(
                    "the operator's metrics need the header Authorization: Bearer <KAHN_METRICS_TOKEN>\n",
                    status=401,
                    content_type="text/plain; charset=utf-8",
                )
                response["WWW-Authenticate"] = 'Bearer realm="metrics"'
                return response
            return HttpResponse(exposition(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
        if request.method not in ("POST", "PUT") or not _INGEST_WRITE.match(request.path):
            return self.get_response(request)
        started = time.perf_counter()
        response = self.get_response(request)
        result = ingest_result(response)
        INGEST_REQUESTS.labels(result).inc()
        INGEST_SECONDS.labels(result).observe(time.perf_counter() - started)
        if result == "rate_limited":
            RATE_LIMITED.inc()
        return response
