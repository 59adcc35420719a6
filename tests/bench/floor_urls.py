"""The floor of bench_ingest_http.py: the least a request that stores one event can cost behind the
same server, settings and middleware as the ingest API: parse the event, one INSERT, answer."""

import orjson
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from kahn_site.urls import handler404, handler500
from kahn_site.urls import urlpatterns as scope_urlpatterns

# Not bench_import.py's table of the same shape: that one is dropped and made again each round.
FLOOR_TABLE = "bench_floor_view_event"
FLOOR_SEQUENCE = "bench_floor_view_seq"


@csrf_exempt
def insert_one_event(request: HttpRequest) -> HttpResponse:
    event = orjson.loads(request.body)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {FLOOR_TABLE} (run_id, seq, tenant_id, ts, kind, node, payload) "
            f"VALUES (1, nextval('{FLOOR_SEQUENCE}'), 1, %s, %s, %s, %s)",
            [event["ts"], event["event"], event.get("node"), request.body.decode()],
        )
    return HttpResponse(b'{"accepted": 1}', content_type="application/json")


urlpatterns = [path("bench/floor", insert_one_event), *scope_urlpatterns]

__all__ = ["handler404", "handler500", "urlpatterns"]
