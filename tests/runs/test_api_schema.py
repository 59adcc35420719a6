"""The OpenAPI schema at /api/v1/schema/: valid, true to what the views answer, and a fuzz run
generated from it finds no server error and no response that breaks it."""

from datetime import UTC

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.utils.dateparse import parse_datetime
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

pytestmark = pytest.mark.django_db

SCHEMA_URL = "/api/v1/schema/?format=json"
READ_PATHS = {
    "/api/v1/runs/",
    "/api/v1/runs/{run_id}/",
    "/api/v1/runs/{run_id}/events",
    "/api/v1/runs/{run_id}/graph",
    "/api/v1/runs/{run_id}/summary",
}


def test_the_schema_is_valid_openapi_and_covers_every_read_endpoint(client):
    response = client.get(SCHEMA_URL)
    assert response.status_code == 200
    document = response.json()
    validate_schema(document)
    assert set(document["paths"]) >= READ_PATHS
    for path in READ_PATHS:
        operation = document["paths"][path]["get"]
        assert "200" in operation["responses"]
        assert "404" in operation["responses"] or path == "/api/v1/runs/"
    assert "400" in document["paths"]["/api/v1/runs/"]["get"]["responses"]


def test_the_schema_describes_the_exports_files_and_errors(client):
    paths = client.get(SCHEMA_URL).json()["paths"]
    export = paths["/api/v1/runs/export"]["get"]
    assert set(export["responses"]["200"]["content"]) == {"text/csv", "application/x-ndjson"}
    assert "application/json" in export["responses"]["400"]["content"]
    assert {p["name"] for p in export["parameters"]} >= {"format", "status", "outcome", "q", "node"}
    assert not {p["name"] for p in export["parameters"]} & {"cursor", "page_size"}
    archive = paths["/api/v1/runs/{run_id}/archive"]["get"]
    assert set(archive["responses"]["200"]["content"]) == {"application/gzip"}
    assert {"404", "410"} <= set(archive["responses"])


@pytest.fixture
def api_schema(imported):
    # As Django's test client does: a request's end must not close the test's database connection.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi(SCHEMA_URL, get_wsgi_application())
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.mark.parametrize(
    ("path", "path_parameters", "query"),
    [
        ("/api/v1/runs/", {}, {}),
        ("/api/v1/runs/", {}, {"status": "interrupted", "page_size": 1}),
        ("/api/v1/runs/", {}, {"status": "bogus"}),
        ("/api/v1/runs/{run_id}/", {"run_id": "run_failed"}, {}),
        ("/api/v1/runs/{run_id}/", {"run_id": "run_crashed"}, {}),
        ("/api/v1/runs/{run_id}/", {"run_id": "run_headless"}, {}),
        ("/api/v1/runs/{run_id}/", {"run_id": "run_nope"}, {}),
        ("/api/v1/runs/{run_id}/events", {"run_id": "run_inline"}, {"limit": 5}),
        ("/api/v1/runs/{run_id}/events", {"run_id": "run_inline"}, {"limit": 0}),
        ("/api/v1/runs/{run_id}/graph", {"run_id": "run_failed"}, {}),
        ("/api/v1/runs/{run_id}/graph", {"run_id": "run_headless"}, {}),
        ("/api/v1/runs/{run_id}/summary", {"run_id": "run_flaky"}, {}),
        ("/api/v1/runs/{run_id}/summary", {"run_id": "run_crashed"}, {}),
        ("/api/v1/runs/export", {}, {"format": "csv"}),
        ("/api/v1/runs/export", {}, {"format": "ndjson", "outcome": "failed"}),
        ("/api/v1/runs/export", {}, {"format": "xml"}),
        ("/api/v1/runs/{run_id}/archive", {"run_id": "run_failed"}, {}),
        ("/api/v1/runs/{run_id}/archive", {"run_id": "run_nope"}, {}),
        ("/api/v1/metrics", {}, {}),
    ],
)
def test_real_responses_match_the_schema(api_schema, path, path_parameters, query):
    case = api_schema[path]["GET"].Case(path_parameters=path_parameters, query=query)
    response = case.call()
    assert response.status_code < 500
    case.validate_response(response)


def beyond_utc(value: object) -> bool:
    """A date-time whose offset takes it before year 1 or past year 9999 in UTC."""
    try:
        parsed = parse_datetime(str(value))
    except ValueError:
        return False
    if parsed is None or parsed.tzinfo is None:
        return False
    try:
        parsed.astimezone(UTC)
    except OverflowError:
        return True
    return False


def test_beyond_utc_tells_the_instants_the_api_refuses():
    assert beyond_utc("0001-01-01T00:10:12.0+01:00") and beyond_utc("9999-12-31T23:59:59-23:59")
    assert not beyond_utc("0001-01-01T00:00:00Z") and not beyond_utc("2026-11-20T10:00:00+01:00")
    assert not beyond_utc("yesterday") and not beyond_utc(5)


@pytest.mark.parametrize("path", sorted(READ_PATHS))
def test_fuzzing_the_read_api_finds_no_server_error(api_schema, path):
    """Schema-generated requests, valid and not: every answer is < 500 and matches the schema."""
    operation = api_schema[path]["GET"]

    @given(case=operation.as_strategy())
    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def answers_within_the_contract(case):
        # A cursor is opaque: only those the API gave out are valid, which no schema can say, so a
        # made-up one is rightly refused (400) though it looks valid.
        made_up_cursor = "cursor" in (case.query or {})
        # Nor can a schema's date-time say that its offset must not take it past year 1 or 9999 in
        # UTC: such an instant is rightly refused too (tests/ingest/test_bounds.py).
        beyond = any(beyond_utc(value) for value in (case.query or {}).values())
        refusable = made_up_cursor or beyond
        case.call_and_validate(excluded_checks=[positive_data_acceptance] if refusable else [])

    answers_within_the_contract()
