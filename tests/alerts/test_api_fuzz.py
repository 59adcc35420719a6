"""The alerts API fuzzed from its OpenAPI schema: rule bodies valid and not, changes, tests and the
deliveries list's filters never meet a server error; bad input is a 4xx naming what was wrong."""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings

from runs.alerts.services import RuleSpec, rule_create

SCHEMA_URL = "/api/v1/schema/?format=json"


@pytest.fixture
def api_schema(local_tenant):
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi(SCHEMA_URL, get_wsgi_application())
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/api/v1/alerts/rules/", "POST"),
        ("/api/v1/alerts/rules/{rule_id}/", "PATCH"),
        ("/api/v1/alerts/rules/{rule_id}/", "GET"),
        ("/api/v1/alerts/rules/{rule_id}/test", "POST"),
        ("/api/v1/alerts/deliveries/", "GET"),
    ],
)
def test_fuzzing_the_alerts_api_finds_no_server_error(api_schema, local_tenant, path, method):
    existing, _ = rule_create(
        tenant=local_tenant,
        spec=RuleSpec(
            name="kept", condition="run_failed", channel_kind="webhook", url="https://example.net/h"
        ),
    )
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def answers_without_a_server_error(case):
        if case.path_parameters and "rule_id" in case.path_parameters and case.path_parameters["rule_id"] % 2:
            case.path_parameters["rule_id"] = existing.pk  # half the cases reach a real rule
        response = case.call()
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert response.json()["error"]["message"]

    answers_without_a_server_error()
