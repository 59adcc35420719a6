"""A `run_start` that names another run than its URL (SPEC sections 5 and 11): 400, naming the field,
and nothing of the batch is stored."""

import orjson
import pytest

from runs.models import Event, Run

pytestmark = pytest.mark.django_db

T = "2026-11-20T10:00:00.000Z"


def post(client, run_id: str, events: list[dict], content_type: str = "application/x-ndjson"):
    body = b"".join(orjson.dumps(e) + b"\n" for e in events)
    if content_type == "application/json":
        body = orjson.dumps(events)
    return client.post(f"/api/v1/runs/{run_id}/events", data=body, content_type=content_type)


@pytest.mark.parametrize("content_type", ["application/x-ndjson", "application/json"])
def test_a_run_start_naming_another_run_is_400_naming_run_id(client, local_tenant, content_type):
    events = [
        {"seq": 0, "ts": T, "event": "run_start", "run_id": "nightly_b"},
        {"seq": 1, "ts": T, "event": "note", "text": "hello"},
    ]
    response = post(client, "nightly_a", events, content_type)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_body"
    assert "nightly_a" in error["message"]
    assert error["details"]["errors"] == [
        {
            "index": 0,
            "field": "run_id",
            "message": "run_start names run 'nightly_b', but the URL is run 'nightly_a''s",
        }
    ]
    assert not Run.objects.exists() and not Event.objects.exists()


def test_a_later_run_start_naming_another_run_is_refused_too_and_the_run_keeps_what_it_had(
    client, local_tenant
):
    assert (
        post(client, "nightly_a", [{"ts": T, "event": "run_start", "run_id": "nightly_a"}]).status_code == 200
    )
    events = [{"ts": T, "event": "note", "text": "fine"}, {"ts": T, "event": "run_start", "run_id": "other"}]
    response = post(client, "nightly_a", events)
    assert response.status_code == 400
    assert [(e["index"], e["field"]) for e in response.json()["error"]["details"]["errors"]] == [
        (1, "run_id")
    ]
    assert Event.objects.filter(run__run_id="nightly_a").count() == 1


def test_a_run_start_naming_its_own_run_is_accepted(client, local_tenant):
    response = post(client, "nightly_a", [{"seq": 0, "ts": T, "event": "run_start", "run_id": "nightly_a"}])
    assert response.status_code == 200
    assert response.json()["accepted"] == 1
