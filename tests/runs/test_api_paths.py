"""Every endpoint of the ingest and read APIs (SPEC sections 5 and 6) answers in both spellings,
with and without a trailing slash, through the same view: a producer's POST or PUT body is never
lost to a redirect, and a reader gets what the contract's spelling gives."""

import orjson
import pytest

from runs.models import Event, Run

pytestmark = pytest.mark.django_db

T = "2026-11-20T10:00:00.000Z"
GRAPH = {"version": 1, "nodes": [{"id": "build", "deps": []}]}
SUMMARY = {"run_id": "run_slash", "outcome": "clean"}
EVENTS = [
    {"ts": T, "event": "run_start", "run_id": "run_slash"},
    {"ts": T, "event": "transition", "node": "build", "from": "pending", "to": "running", "attempt": 1},
    {
        "ts": T,
        "event": "node_attempt",
        "node": "build",
        "attempt": 1,
        "ok": True,
        "duration_s": 1.0,
        "exit_code": 0,
    },
    {"ts": T, "event": "transition", "node": "build", "from": "running", "to": "done", "attempt": 1},
    {"ts": T, "event": "run_end", "exit_code": 0},
]
# The contract's spelling of each path (SPEC sections 5 and 6).
CANONICAL = {
    "runs": "/api/v1/runs/",
    "run": "/api/v1/runs/{run_id}/",
    "events": "/api/v1/runs/{run_id}/events",
    "graph": "/api/v1/runs/{run_id}/graph",
    "summary": "/api/v1/runs/{run_id}/summary",
    "archive": "/api/v1/runs/{run_id}/archive",
    # One spelling only: with a slash it is the page of a run named "export".
    "export": "/api/v1/runs/export",
    # The tenant's figures for Prometheus (issue 19), spelled as Prometheus' own `/metrics` is.
    "metrics": "/api/v1/metrics",
}


# SPEC section 12's alert endpoints, as it spells them (tests/alerts checks what they do).
ALERT_PATHS = {
    "/api/v1/alerts/rules/",
    "/api/v1/alerts/rules/{rule_id}/",
    "/api/v1/alerts/rules/{rule_id}/test",
    "/api/v1/alerts/deliveries/",
}


def other_spelling(path: str) -> str:
    return path.removesuffix("/") if path.endswith("/") else f"{path}/"


def as_contract(path: str) -> str:
    return path


SPELLINGS = pytest.mark.parametrize("spelled", [as_contract, other_spelling], ids=["contract", "other"])


def url(name: str, spelled=as_contract, run_id: str = "run_slash", query: str = "") -> str:
    return spelled(CANONICAL[name].format(run_id=run_id)) + query


def ndjson(events: list[dict]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


@SPELLINGS
def test_a_producer_writes_through_either_spelling(client, local_tenant, spelled):
    response = client.post(url("events", spelled), ndjson(EVENTS), content_type="application/x-ndjson")
    assert response.status_code == 200, response.content
    assert response.json() == {"run_id": "run_slash", "accepted": 5, "duplicates": 0, "next_seq": 5}
    for kind, document in (("graph", GRAPH), ("summary", SUMMARY)):
        response = client.put(url(kind, spelled), orjson.dumps(document), content_type="application/json")
        assert response.status_code == 200, response.content
        assert response.json() == {"run_id": "run_slash", "written": True}
    run = Run.objects.get(run_id="run_slash")
    assert (run.graph, run.summary, run.outcome) == (GRAPH, SUMMARY, "clean")
    assert Event.objects.filter(run=run).count() == 5


@SPELLINGS
def test_a_refused_write_is_refused_alike_in_either_spelling(client, local_tenant, spelled):
    late = [{"ts": T, "event": "run_end", "exit_code": 0}]
    response = client.post(url("events", spelled), ndjson(late), content_type="application/x-ndjson")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "run_not_started"
    response = client.put(url("graph", spelled), b"[]", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_body"
    assert not Run.objects.exists()


@pytest.mark.parametrize(
    ("name", "query"),
    [
        ("runs", ""),
        ("runs", "?q=slash&page_size=1"),
        ("run", ""),
        ("events", "?after_seq=1&limit=2"),
        ("graph", ""),
        ("summary", ""),
    ],
)
def test_every_read_answers_the_same_in_either_spelling(client, local_tenant, name, query):
    client.post(url("events"), ndjson(EVENTS), content_type="application/x-ndjson")
    client.put(url("graph"), orjson.dumps(GRAPH), content_type="application/json")
    client.put(url("summary"), orjson.dumps(SUMMARY), content_type="application/json")
    contract = client.get(url(name, query=query))
    other = client.get(url(name, other_spelling, query=query))
    assert contract.status_code == other.status_code == 200, (contract.content, other.content)
    assert other.json() == contract.json()


@pytest.mark.parametrize("name", ["run", "events", "graph", "summary"])
def test_an_unknown_run_is_404_run_not_found_in_either_spelling(client, local_tenant, name):
    for spelled in (as_contract, other_spelling):
        response = client.get(url(name, spelled, run_id="run_nope"))
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "run_not_found"


def test_the_schema_lists_each_endpoint_once_as_the_contract_spells_it(client):
    paths = client.get("/api/v1/schema/?format=json").json()["paths"]
    assert set(paths) == set(CANONICAL.values()) | ALERT_PATHS
    assert client.get("/api/v1/schema?format=json").json()["paths"] == paths


def test_the_export_has_one_spelling_and_a_run_named_export_keeps_its_own(client, local_tenant):
    assert client.get("/api/v1/runs/export?format=csv").status_code == 200
    response = client.get("/api/v1/runs/export/")
    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "run_not_found",
        "message": "there is no run 'export'",
        "details": {"run_id": "export"},
    }
    assert client.get("/api/v1/runs/run_nope/archive/").json()["error"]["code"] == "run_not_found"


def test_a_path_of_no_endpoint_is_a_json_404_naming_it(client, local_tenant):
    response = client.post("/api/v1/runs/run_slash/event", b"{}", content_type="application/json")
    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "not_found",
        "message": "no API endpoint at /api/v1/runs/run_slash/event",
        "details": {},
    }
