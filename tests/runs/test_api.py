"""The read API (SPEC section 6) and its errors (SPEC section 11), through real HTTP requests."""

import base64
import json
from pathlib import Path

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.serializers import Serializer

from ingest.simulator import archive_synthesize
from runs import selectors
from runs.api import RunDetailApi, RunRowSerializer
from tenants.models import Tenant
from tests.conftest import SAMPLE_ARCHIVE, ingest_quietly, write_archive_run
from tests.runs.test_reduction import RUN_FLAKY_ROW

pytestmark = pytest.mark.django_db

API = "/api/v1"
SAMPLE_NEWEST_FIRST = ["run_dirty", "run_same_ts", "run_crashed", "run_failed", "run_flaky", "run_clean"]
# run_headless has no `started`: it sorts as the newest; run_inline started last of the rest.
ALL_NEWEST_FIRST = ["run_headless", "run_inline", *SAMPLE_NEWEST_FIRST]
# Far beyond the sample's age: run_crashed is still running rather than interrupted.
NEVER_STALE = override_settings(KAHN_STALE_AFTER=10**10)


def get(client, url: str, status: int = 200) -> dict:
    response = client.get(url)
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    return response.json()


def run_ids(body: dict) -> list[str]:
    return [row["run_id"] for row in body["results"]]


def assert_error(body: dict, code: str) -> dict:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]["details"]


# ---------------------------------------------------------------- GET runs/


def test_runs_lists_every_run_newest_first(client, imported):
    body = get(client, f"{API}/runs/")
    assert run_ids(body) == ALL_NEWEST_FIRST
    assert body["next"] is None
    assert body["previous"] is None


def test_a_row_is_the_reduction_with_status_counts_and_last_event(client, imported):
    rows = {row["run_id"]: row for row in get(client, f"{API}/runs/")["results"]}
    flaky = rows["run_flaky"]
    assert {k: v for k, v in flaky.items() if k in RUN_FLAKY_ROW} == RUN_FLAKY_ROW
    assert flaky["status"] == "complete"
    assert flaky["diagnostic_counts"] == {"error": 0, "warning": 0, "info": 0}
    assert flaky["last_event_at"] == "2026-11-20T10:08:01.600Z"
    assert set(flaky) == {*RUN_FLAKY_ROW, "status", "diagnostic_counts", "last_event_at"}


@pytest.mark.parametrize("run_id", ["run_clean", "run_flaky", "run_failed", "run_same_ts"])
def test_rows_agree_with_the_producer_summary(client, imported, run_id):
    summary = json.loads((SAMPLE_ARCHIVE / "runs" / run_id / "summary.json").read_text())
    row = next(r for r in get(client, f"{API}/runs/?q={run_id}")["results"] if r["run_id"] == run_id)
    assert {name: row[name] for name in summary} == summary


def test_an_unfinished_run_has_no_outcome_and_is_interrupted_once_stale(client, imported):
    crashed = get(client, f"{API}/runs/?q=crashed")["results"][0]
    assert crashed["status"] == "interrupted"
    assert crashed["outcome"] is None
    assert crashed["ended"] is None and crashed["duration_s"] is None
    # died_mid_attempt is not stored; it counts only once the run is known to be over.
    assert crashed["diagnostic_counts"] == {"error": 0, "warning": 0, "info": 1}
    with NEVER_STALE:
        crashed = get(client, f"{API}/runs/?q=crashed")["results"][0]
    assert crashed["status"] == "running"
    assert crashed["diagnostic_counts"] == {"error": 0, "warning": 0, "info": 0}


def test_diagnostic_counts_count_stored_diagnostics(client, imported):
    rows = {row["run_id"]: row for row in get(client, f"{API}/runs/")["results"]}
    assert rows["run_dirty"]["diagnostic_counts"] == {"error": 1, "warning": 0, "info": 0}
    assert rows["run_headless"]["diagnostic_counts"]["error"] == 1  # missing_run_start
    assert rows["run_inline"]["diagnostic_counts"]["info"] == 1  # the unknown `checkpoint` event


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            "status=complete",
            ["run_inline", "run_dirty", "run_same_ts", "run_failed", "run_flaky", "run_clean"],
        ),
        ("status=interrupted", ["run_headless", "run_crashed"]),
        ("status=running", []),
        ("outcome=failed", ["run_failed"]),
        ("outcome=clean_with_flake", ["run_same_ts", "run_flaky"]),
        ("outcome=clean", ["run_inline", "run_dirty", "run_clean"]),
        ("q=FLAKY", ["run_flaky"]),
        ("q=_", ALL_NEWEST_FIRST),
        ("q=run_c", ["run_crashed", "run_clean"]),
        (
            "started_after=2026-11-20T11:00:00Z",
            ["run_inline", "run_dirty", "run_same_ts", "run_crashed", "run_failed"],
        ),
        ("started_before=2026-11-20T11:00:00Z", ["run_flaky", "run_clean"]),
        (
            "started_after=2026-11-20T11:30:00%2B01:00&started_before=2026-11-20T12:00:00.001Z",
            ["run_crashed", "run_failed"],
        ),
        ("node=api-routes", SAMPLE_NEWEST_FIRST),
        ("node=fetch", ["run_inline"]),
        ("node=warm-up", ["run_headless"]),
        ("node=no-such-node", []),
        ("failed_node=api-routes", ["run_failed"]),
        ("failed_node=lint", []),
        ("outcome=failed&node=lint", ["run_failed"]),
        ("status=complete&q=dirty", ["run_dirty"]),
    ],
)
def test_filters(client, imported, query, expected):
    assert run_ids(get(client, f"{API}/runs/?{query}")) == expected


def test_an_empty_date_range_finds_nothing(client, imported):
    assert (
        run_ids(
            get(client, f"{API}/runs/?started_after=2026-11-21T00:00:00Z&started_before=2026-11-20T00:00:00Z")
        )
        == []
    )


def test_empty_parameters_filter_nothing(client, imported):
    # What an HTML form sends for fields left empty.
    assert run_ids(get(client, f"{API}/runs/?node=&q=&failed_node=")) == ALL_NEWEST_FIRST


def test_status_running_finds_fresh_unfinished_runs(client, imported):
    with NEVER_STALE:
        assert run_ids(get(client, f"{API}/runs/?status=running")) == ["run_headless", "run_crashed"]
        assert run_ids(get(client, f"{API}/runs/?status=interrupted")) == []


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ("status=finished", ["status"]),
        ("outcome=flaky", ["outcome"]),
        ("started_after=yesterday", ["started_after"]),
        ("page_size=0", ["page_size"]),
        ("page_size=201", ["page_size"]),
        ("page_size=ten", ["page_size"]),
        ("q=" + "x" * 65, ["q"]),
        ("q=a%00b", ["q"]),
        ("status=bad&outcome=bad&page_size=-1", ["status", "outcome", "page_size"]),
        ("cursor=not-a-cursor", ["cursor"]),
        ("cursor=" + base64.b64encode(b"p=yesterday%7C1").decode(), ["cursor"]),
        (
            "cursor=" + base64.b64encode(b"p=2026-11-20T10%3A00%3A00%7C99999999999999999999").decode(),
            ["cursor"],
        ),
        ("cursor=" + base64.b64encode(b"o=5&p=%7C3").decode(), ["cursor"]),
    ],
)
def test_bad_query_parameters_are_a_400_listing_each_one(client, imported, query, fields):
    details = assert_error(get(client, f"{API}/runs/?{query}", status=400), "invalid_query")
    assert [e["field"] for e in details["errors"]] == fields
    for problem in details["errors"]:
        assert set(problem) == {"index", "field", "message"}
        assert problem["index"] is None
        assert problem["message"]


# ---------------------------------------------------------------- pagination


def walk(client, url: str, key: str) -> list[list[str]]:
    pages = []
    while url:
        body = get(client, url)
        pages.append(run_ids(body))
        url = body[key]
    return pages


@pytest.mark.parametrize("page_size", [1, 2, 5, 7, 200])
def test_pages_cover_every_run_once_in_order_forwards_and_backwards(client, many_runs, page_size):
    everything = run_ids(get(client, f"{API}/runs/?page_size=200"))
    assert len(everything) == 32
    assert len(set(everything)) == 32
    forward = walk(client, f"{API}/runs/?page_size={page_size}", "next")
    assert [run for page in forward for run in page] == everything
    assert all(len(page) == page_size for page in forward[:-1])

    last_page = get(client, f"{API}/runs/?page_size={page_size}")
    while last_page["next"]:
        last_page = get(client, last_page["next"])
    backward = walk(client, last_page["previous"], "previous") if last_page["previous"] else []
    assert [run for page in reversed(backward) for run in page] + run_ids(last_page) == everything


def test_runs_started_at_the_same_instant_page_without_loss(client, many_runs):
    # synth seeds 1 and 2 start their i-th runs at the same instant: the id breaks the tie.
    rows = get(client, f"{API}/runs/?page_size=200")["results"]
    ids = [row["run_id"] for row in rows]
    for i in range(12):
        one, two = ids.index(f"run_1_{i:06d}"), ids.index(f"run_2_{i:06d}")
        assert rows[one]["started"] == rows[two]["started"]
        assert abs(one - two) == 1
    single = [run for page in walk(client, f"{API}/runs/?page_size=1", "next") for run in page]
    assert single == ids


def test_the_first_page_has_no_previous_and_the_last_no_next(client, imported):
    first = get(client, f"{API}/runs/?page_size=3")
    assert first["previous"] is None and first["next"]
    second = get(client, first["next"])
    assert second["previous"] and second["next"]
    third = get(client, second["next"])
    assert third["next"] is None
    assert run_ids(first) + run_ids(second) + run_ids(third) == ALL_NEWEST_FIRST
    assert run_ids(get(client, third["previous"])) == run_ids(second)


def test_links_keep_the_filters(client, many_runs):
    url, rows = f"{API}/runs/?outcome=clean_with_flake&page_size=4", []
    while url:
        body = get(client, url)
        rows += body["results"]
        url = body["next"]
    assert len(rows) > 4
    assert {row["outcome"] for row in rows} == {"clean_with_flake"}
    assert [row["run_id"] for row in rows] == run_ids(get(client, f"{API}/runs/?outcome=clean_with_flake"))


def test_page_size_defaults_to_50(client, many_runs):
    archive = many_runs
    for seed in (3, 4):
        archive_synthesize(archive, runs=12, nodes=3, seed=seed)
    ingest_quietly(archive)
    body = get(client, f"{API}/runs/")
    assert len(body["results"]) == 50
    assert len(run_ids(get(client, body["next"]))) == 56 - 50


def run_table_queries(queries: list[dict]) -> list[str]:
    """The statements that read run data (the rest bind the request to its tenant)."""
    return [q["sql"] for q in queries if '"runs_' in q["sql"]]


def test_list_queries_do_not_grow_with_page_size(client, many_runs):
    counts = set()
    for page_size in (1, 10, 200):
        with CaptureQueriesContext(connection) as queries:
            body = get(client, f"{API}/runs/?page_size={page_size}")
        assert len(body["results"]) == min(page_size, 32)
        counts.add(len(queries))
        # The page itself, then the open attempts of the page's interrupted runs, in one query.
        assert len(run_table_queries(queries.captured_queries)) == 2
    assert len(counts) == 1
    with CaptureQueriesContext(connection) as queries:
        get(client, f"{API}/runs/?status=complete&page_size=200")
    assert len(run_table_queries(queries.captured_queries)) == 1


# ---------------------------------------------------------------- GET runs/{run_id}/


def test_a_run_is_its_row_graph_nodes_and_diagnostics(client, imported):
    body = get(client, f"{API}/runs/run_flaky/")
    assert {k: v for k, v in body.items() if k in RUN_FLAKY_ROW} == RUN_FLAKY_ROW
    assert body["graph"] == json.loads((SAMPLE_ARCHIVE / "runs/run_flaky/graph.json").read_text())
    assert [node["id"] for node in body["nodes"]] == [node["id"] for node in body["graph"]["nodes"]]
    assert body["diagnostics"] == []
    api_routes = next(node for node in body["nodes"] if node["id"] == "api-routes")
    assert api_routes["state"] == "done"
    assert api_routes["deps"] == ["auth-table", "users-table"]
    assert [(a["attempt"], a["ok"], a["duration_s"]) for a in api_routes["attempts"]] == [
        (1, False, 20.0),
        (2, False, 22.0),
        (3, True, 60.0),
    ]
    first = api_routes["attempts"][0]
    assert first["error"] == "api-routes: exit status 1"
    assert first["exit_code"] == 1
    assert first["start"] < first["end"]
    assert first["start_seq"] < first["end_seq"]


def test_run_failed_shows_which_node_broke_it_and_what_waited(client, imported):
    nodes = {node["id"]: node for node in get(client, f"{API}/runs/run_failed/")["nodes"]}
    assert nodes["api-routes"]["state"] == "failed"
    assert [a["ok"] for a in nodes["api-routes"]["attempts"]] == [False, False, False]
    for blocked in ("integration-tests", "deploy-preview"):
        assert nodes[blocked]["state"] == "blocked"
        assert nodes[blocked]["attempts"] == []


def test_run_same_ts_follows_append_order(client, imported):
    nodes = {node["id"]: node for node in get(client, f"{API}/runs/run_same_ts/")["nodes"]}
    attempts = nodes["auth-table"]["attempts"]
    assert [a["ok"] for a in attempts] == [False, False, True]
    # All three share one timestamp; seq alone orders them.
    assert attempts[0]["start"] == attempts[2]["end"]
    assert [a["start_seq"] for a in attempts] == sorted(a["start_seq"] for a in attempts)
    assert nodes["auth-table"]["state"] == "done"


def test_an_interrupted_run_shows_the_attempt_it_died_in(client, imported):
    body = get(client, f"{API}/runs/run_crashed/")
    assert body["status"] == "interrupted"
    died = [d for d in body["diagnostics"] if d["code"] == "died_mid_attempt"]
    assert len(died) == 1
    assert died[0]["severity"] == "info"
    assert died[0]["details"] == {"node": "api-routes", "attempt": 1}
    assert died[0]["seq"] is not None and died[0]["line"] is None
    open_attempt = next(n for n in body["nodes"] if n["id"] == "api-routes")["attempts"][-1]
    assert open_attempt["end"] is None and open_attempt["ok"] is None and open_attempt["end_seq"] is None
    with NEVER_STALE:
        assert get(client, f"{API}/runs/run_crashed/")["diagnostics"] == []


def test_a_malformed_line_is_a_diagnostic_with_its_line(client, imported):
    diagnostics = get(client, f"{API}/runs/run_dirty/")["diagnostics"]
    assert len(diagnostics) == 1
    assert diagnostics[0]["code"] == "malformed_line"
    assert diagnostics[0]["severity"] == "error"
    assert diagnostics[0]["line"] == 4
    assert diagnostics[0]["seq"] is None
    assert set(diagnostics[0]) == {"code", "severity", "seq", "line", "message", "details"}


def test_a_summary_that_disagrees_is_a_summary_mismatch(client, local_tenant, sample_archive):
    summary_path = sample_archive / "runs/run_flaky/summary.json"
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps({**summary, "total_attempts": 12, "flake_retries": 5}))
    ingest_quietly(sample_archive)
    body = get(client, f"{API}/runs/run_flaky/")
    assert body["total_attempts"] == 11  # the row is always Scope's own reduction
    mismatch = next(d for d in body["diagnostics"] if d["code"] == "summary_mismatch")
    assert set(mismatch["details"]["fields"]) == {"total_attempts", "flake_retries"}
    assert get(client, f"{API}/runs/run_flaky/summary")["total_attempts"] == 12


def test_a_graph_carried_by_run_start_is_the_run_graph(client, imported):
    body = get(client, f"{API}/runs/run_inline/")
    assert body["graph"]["nodes"][0]["label"] == "Fetch sources"
    assert [n["id"] for n in body["nodes"]] == ["fetch", "build"]
    assert body["nodes"][1]["deps"] == ["fetch"]
    assert get(client, f"{API}/runs/run_inline/graph")["nodes"][0]["kind"] == "io"


def test_a_run_without_run_start_or_graph_is_still_shown(client, imported):
    body = get(client, f"{API}/runs/run_headless/")
    assert body["started"] is None
    assert body["graph"] is None
    assert [d["code"] for d in body["diagnostics"]] == ["missing_run_start", "died_mid_attempt"]
    assert body["nodes"][0]["id"] == "warm-up"
    assert body["nodes"][0]["state"] == "running"


# ---------------------------------------------------------------- events, graph, summary


def test_events_come_in_seq_order_with_their_seq(client, imported):
    body = get(client, f"{API}/runs/run_failed/events?limit=1000")
    lines = (SAMPLE_ARCHIVE / "runs/run_failed/transitions.jsonl").read_text().splitlines()
    assert [event["seq"] for event in body["results"]] == list(range(len(lines)))
    assert [{k: v for k, v in e.items() if k != "seq"} for e in body["results"]] == [
        json.loads(x) for x in lines
    ]
    assert body["next_seq"] == len(lines)


def test_events_page_by_after_seq_and_limit(client, imported):
    first = get(client, f"{API}/runs/run_failed/events?limit=10")
    assert [e["seq"] for e in first["results"]] == list(range(10))
    assert first["next_seq"] == 10
    second = get(client, f"{API}/runs/run_failed/events?after_seq={first['next_seq'] - 1}&limit=10")
    assert [e["seq"] for e in second["results"]] == list(range(10, 20))
    rest = get(client, f"{API}/runs/run_failed/events?after_seq=19&limit=10")
    assert [e["seq"] for e in rest["results"]] == list(range(20, 25))
    assert rest["next_seq"] == 25
    past_the_end = get(client, f"{API}/runs/run_failed/events?after_seq=40")
    assert past_the_end == {"results": [], "next_seq": 41}
    assert len(get(client, f"{API}/runs/run_failed/events")["results"]) == 25  # default limit 100


def test_events_keep_unknown_fields_and_kinds(client, imported):
    events = get(client, f"{API}/runs/run_inline/events")["results"]
    assert events[0]["host"] == "ci-runner-3"
    assert events[2] == {
        "ts": "2026-11-20T15:00:02.500Z",
        "event": "checkpoint",
        "note": "cache warm",
        "seq": 2,
    }
    assert events[3]["bytes"] == 1024


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ("after_seq=-2", ["after_seq"]),
        ("limit=0", ["limit"]),
        ("limit=1001", ["limit"]),
        ("after_seq=x&limit=y", ["after_seq", "limit"]),
    ],
)
def test_bad_event_queries_are_a_400(client, imported, query, fields):
    details = assert_error(get(client, f"{API}/runs/run_failed/events?{query}", status=400), "invalid_query")
    assert [e["field"] for e in details["errors"]] == fields


def test_graph_and_summary_are_the_producers_files(client, imported):
    for name in ("graph", "summary"):
        expected = json.loads((SAMPLE_ARCHIVE / f"runs/run_failed/{name}.json").read_text())
        assert get(client, f"{API}/runs/run_failed/{name}") == expected


def test_a_run_without_summary_or_graph_answers_404_saying_which(client, imported):
    assert_error(get(client, f"{API}/runs/run_crashed/summary", status=404), "summary_not_found")
    assert_error(get(client, f"{API}/runs/run_headless/graph", status=404), "graph_not_found")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("suffix", ["/", "/events", "/graph", "/summary"])
@pytest.mark.parametrize("run_id", ["run_nope", "..", "%00", "a" * 300, "run_flaky%20"])
def test_an_unknown_run_is_404_run_not_found(client, imported, suffix, run_id):
    details = assert_error(get(client, f"{API}/runs/{run_id}{suffix}", status=404), "run_not_found")
    assert details["run_id"]


def test_an_unknown_api_path_is_404_in_the_error_shape(client, imported):
    assert_error(get(client, f"{API}/nothing/here", status=404), "not_found")


def test_writing_to_the_read_api_is_405_in_the_error_shape(client, imported):
    response = client.post(f"{API}/runs/", data={}, content_type="application/json")
    assert response.status_code == 405
    assert_error(response.json(), "method_not_allowed")
    response = client.delete(f"{API}/runs/run_flaky/")
    assert response.status_code == 405


def test_another_tenants_runs_are_invisible(client, imported, tmp_path):
    other = tmp_path / "globex"
    write_archive_run(other, "run_globex_only", [{**e, "run_id": "run_globex_only"} for e in _start_events()])
    Tenant.objects.create(slug="globex", name="Globex")
    ingest_quietly(other, "--tenant", "globex")
    ingest_quietly(Path(SAMPLE_ARCHIVE), "--tenant", "globex")

    assert run_ids(get(client, f"{API}/runs/")) == ALL_NEWEST_FIRST
    assert run_ids(get(client, f"{API}/runs/?q=globex")) == []
    assert run_ids(get(client, f"{API}/runs/?node=deploy")) == []
    for suffix in ("/", "/events", "/graph", "/summary"):
        assert_error(get(client, f"{API}/runs/run_globex_only{suffix}", status=404), "run_not_found")
    # The same run id in both tenants: each sees its own events only.
    assert len(get(client, f"{API}/runs/run_flaky/events?limit=1000")["results"]) == 35


def _start_events() -> list[dict]:
    return [
        {"ts": "2026-11-21T09:00:00.000Z", "event": "run_start", "run_id": "x"},
        {
            "ts": "2026-11-21T09:00:00.000Z",
            "event": "transition",
            "node": "deploy",
            "from": "pending",
            "to": "running",
            "attempt": 1,
        },
    ]


# ---------------------------------------------------------------- the serializers' direct paths


@pytest.mark.parametrize("run_id", [*ALL_NEWEST_FIRST])
def test_rows_built_directly_equal_drfs_field_by_field_result(imported, local_tenant, run_id):
    run = selectors.run_list(tenant=local_tenant, filters=selectors.RunFilters(q=run_id)).get(run_id=run_id)
    (row,) = selectors.run_rows([run], tenant=local_tenant, now=timezone.now())
    serializer = RunRowSerializer()
    assert serializer.to_representation(row) == Serializer.to_representation(serializer, row)

    detail = selectors.run_detail(tenant=local_tenant, run_id=run_id)
    serializer = RunDetailApi.OutputSerializer()
    assert serializer.to_representation(detail) == Serializer.to_representation(serializer, detail)
