"""The floors of bench_ingest_http.py, behind the same server, settings and middleware as the ingest API.

- `bench/floor`: the least a request that stores one event can cost: parse it, one INSERT, answer.
- `bench/round-trips`: the same, plus the round trips a producer's single-event request makes
  beyond the floor's three (BEGIN, INSERT, COMMIT), each doing nothing: what the conversation alone
  costs, before any work. Its share of the floor is the most a single-event request could reach
  with those round trips, whatever its work cost.
"""

import orjson
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from kahn_site.urls import handler404, handler500
from kahn_site.urls import urlpatterns as scope_urlpatterns

# Not bench_import.py's table of the same shape: that one is dropped and made again each round.
FLOOR_TABLE = "bench_floor_view_event"
FLOOR_SEQUENCE = "bench_floor_view_seq"


# What a single event's request sends beyond the floor's BEGIN, INSERT and COMMIT (its key's lookup
# travels with its BEGIN; see tenants.models.ApiKeyManager.pre_tenant_by_hash): the run's lock, its
# writes in place of the INSERT, and the rate limit's one script in the cache (ingest.ratelimit).
# Kept in step with the code by hand: the benchmark prints them beside the figures.
EXTRA_DATABASE_ROUND_TRIPS = 1
CACHE_ROUND_TRIPS = 1


def _insert(request: HttpRequest) -> None:
    event = orjson.loads(request.body)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {FLOOR_TABLE} (run_id, seq, tenant_id, ts, kind, node, payload) "
            f"VALUES (1, nextval('{FLOOR_SEQUENCE}'), 1, %s, %s, %s, %s)",
            [event["ts"], event["event"], event.get("node"), request.body.decode()],
        )


@csrf_exempt
def insert_one_event(request: HttpRequest) -> HttpResponse:
    _insert(request)
    return HttpResponse(b'{"accepted": 1}', content_type="application/json")


@csrf_exempt
def round_trips_then_insert(request: HttpRequest) -> HttpResponse:
    for _ in range(CACHE_ROUND_TRIPS):
        cache.get("bench-round-trip")
    with connection.cursor() as cursor:
        for _ in range(EXTRA_DATABASE_ROUND_TRIPS):
            cursor.execute("SELECT 1")
    _insert(request)
    return HttpResponse(b'{"accepted": 1}', content_type="application/json")


urlpatterns = [
    path("bench/floor", insert_one_event),
    path("bench/round-trips", round_trips_then_insert),
    *scope_urlpatterns,
]

__all__ = ["handler404", "handler500", "urlpatterns"]
