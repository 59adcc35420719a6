"""The bounds of SPEC section 2: whatever the schema accepts, both databases store and every page
and endpoint reads back; whatever it cannot, the schema refuses (400 through the API, a
`malformed_line` diagnostic in an archive), and the database stays exactly as it was.

Each hostile example the bounds were written for is a named test below; a hypothesis property
then walks the whole event schema, extremes included, through the API and through an archive.
"""

import itertools
import json
from base64 import b64encode
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from urllib.parse import quote, urlencode

import orjson
import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runs.models import Diagnostic, Event, Run, RunNode
from runs.reduction import (
    MAX_ATTEMPT,
    MAX_DURATION_S,
    MAX_EVENT_BYTES,
    MAX_EXIT_CODE,
    MAX_GRAPH_EDGES,
    MAX_GRAPH_NODES,
    MAX_JSON_DEPTH,
    MAX_SEQ,
    MIN_EXIT_CODE,
    json_has_nul,
    ts_utc,
    validate_event,
)
from runs.views import MAX_DRAWN_NODES
from tests.conftest import write_archive_run

pytestmark = pytest.mark.django_db

T = "2026-11-20T10:00:00.000Z"


def line(event: object) -> bytes:
    """One NDJSON line as a producer might write it; Python's json writes integers of any size."""
    return json.dumps(event, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"


def post(client, run_id: str, *events: object, content_type: str = "application/x-ndjson"):
    body = b"".join(line(e) for e in events)
    if content_type == "application/json":
        body = b"[" + b",".join(line(e)[:-1] for e in events) + b"]"
    return client.post(f"/api/v1/runs/{run_id}/events", data=body, content_type=content_type)


def run_start(run_id: str, **extra: object) -> dict:
    return {"ts": T, "event": "run_start", "run_id": run_id, **extra}


def started(client, run_id: str) -> None:
    response = post(client, run_id, run_start(run_id))
    assert response.status_code == 200, response.content


def transition(node: object, attempt: object = 1, **extra: object) -> dict:
    return {
        "ts": T,
        "event": "transition",
        "node": node,
        "from": "pending",
        "to": "running",
        "attempt": attempt,
    } | extra


def node_attempt(node: object = "build", **extra: object) -> dict:
    fields = {"attempt": 1, "ok": True, "duration_s": 1.5, "exit_code": 0} | extra
    return {"ts": T, "event": "node_attempt", "node": node, **fields}


def snapshot(run_id: str | None = None) -> tuple:
    """Everything a write could change, to show a refused one changed nothing: every row, or with
    `run_id`, that run's rows and how many rows each table holds (a write to one run's URL can
    change only that run, or add rows)."""
    runs, events = Run.objects.order_by("id"), Event.objects.order_by("run_id", "seq")
    diagnostics, nodes = Diagnostic.objects.order_by("id"), RunNode.objects.order_by("run_id", "position")
    counts = tuple(table.count() for table in (runs, events, diagnostics, nodes))
    if run_id is not None:
        runs, events = runs.filter(run_id=run_id), events.filter(run__run_id=run_id)
        diagnostics, nodes = diagnostics.filter(run__run_id=run_id), nodes.filter(run__run_id=run_id)
    return (
        counts,
        list(runs.values()),
        list(events.values_list("run_id", "seq", "ts", "kind", "node", "payload")),
        list(diagnostics.values_list("run_id", "code", "seq", "line", "message")),
        list(nodes.values_list("run_id", "node_id", "state", "attempts")),
    )


def refused(response, *fields: str) -> list[dict]:
    """The 400 of SPEC section 11: its problems, each naming its index, field and reason."""
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    problems = error["details"]["errors"]
    assert all(set(p) == {"index", "field", "message"} and p["message"] for p in problems), problems
    assert {p["field"] for p in problems} >= set(fields), problems
    return problems


def read_urls(run_id: str) -> list[str]:
    """Every page and read endpoint of the tenant that shows this run or its nodes."""
    run = Run.objects.get(run_id=run_id)
    urls = [
        "/",
        f"/?q={run_id}",  # the history row of this run, whatever its start
        "/nodes/",
        f"/runs/{run_id}/?log_from=1",
        "/api/v1/runs/",
        f"/api/v1/runs/?q={run_id}",
        f"/api/v1/runs/{run_id}/",
        f"/api/v1/runs/{run_id}/events?limit=1000",
    ]
    if run.graph is not None:
        urls.append(f"/api/v1/runs/{run_id}/graph")
    for node in RunNode.objects.filter(run=run).values_list("node_id", flat=True):
        urls += [f"/nodes/{quote(node, safe='')}/", "/api/v1/runs/?" + urlencode({"node": node})]
    return urls


def assert_reads_answer(client, run_id: str) -> None:
    failures = []
    for url in read_urls(run_id):
        response = client.get(url)
        if response.status_code != 200:
            failures.append((url, response.status_code, response.content[:300]))
    assert failures == []


def import_archive(root: Path) -> str:
    """`ingest_archive` as an operator runs it; what it printed, warnings included."""
    out, err = StringIO(), StringIO()
    call_command("ingest_archive", str(root), stdout=out, stderr=err)
    return out.getvalue() + err.getvalue()


def malformed(run_id: str) -> dict[int, str]:
    return dict(
        Diagnostic.objects.filter(run__run_id=run_id, code="malformed_line").values_list("line", "message")
    )


# ---------------------------------------------------------------- ts


@pytest.mark.parametrize(
    "ts",
    [
        "0001-01-01T00:00:00+00:01",  # one minute before year 1, once in UTC
        "9999-12-31T23:59:59-00:01",  # one second into year 10000
        "9999-12-31T23:30:00.000-23:59",
        "0000-12-31T23:59:59Z",
        "2026-11-20T10:00:00+24:00",
        "2026-11-20T10:00:00+01:60",
        "2026-11-20T10:00:00",  # no zone
    ],
)
def test_a_ts_outside_years_1_to_9999_in_utc_or_with_an_impossible_offset_is_refused(
    client, local_tenant, ts
):
    started(client, "run_ts")
    before = snapshot()
    problems = refused(post(client, "run_ts", {"ts": ts, "event": "note"}), "ts")
    assert problems[0]["index"] == 0 and "1 to 9999" in problems[0]["message"]
    assert snapshot() == before
    assert_reads_answer(client, "run_ts")


def test_a_ts_offset_of_23_59_is_stored_as_its_utc_instant(client, local_tenant):
    started(client, "run_offset")
    response = post(client, "run_offset", {"ts": "2026-11-20T10:00:00.000+23:59", "event": "note"})
    assert response.status_code == 200, response.content
    event = Event.objects.get(run__run_id="run_offset", seq=1)
    assert event.ts == datetime(2026, 11, 19, 10, 1, tzinfo=UTC)
    assert event.payload["ts"] == "2026-11-20T10:00:00.000+23:59"  # kept as sent
    assert_reads_answer(client, "run_offset")


def test_an_import_of_thousands_of_events_stores_each_ts_as_its_utc_instant(local_tenant, tmp_path):
    """Past a thousand rows the events stream into a COPY on PostgreSQL: the same instants."""
    offsets = ["+23:59", "-23:59", "Z", "z", "+05:30"]
    events = [run_start("run_copy")] + [
        {"ts": f"2026-11-20T10:00:00.000{offsets[i % 5]}", "event": "note", "i": i} for i in range(1500)
    ]
    write_archive_run(tmp_path, "run_copy", events)
    import_archive(tmp_path)
    stored = list(Event.objects.filter(run__run_id="run_copy").order_by("seq").values_list("ts", flat=True))
    base = datetime(2026, 11, 20, 10, tzinfo=UTC)
    shifts = {"+23:59": -1439, "-23:59": 1439, "Z": 0, "z": 0, "+05:30": -330}
    assert len(stored) == 1501
    assert stored[1:] == [base + timedelta(minutes=shifts[offsets[i % 5]]) for i in range(1500)]


def test_an_import_stores_a_utc_ts_of_any_precision_as_its_instant(local_tenant, tmp_path):
    """Through the COPY too: to the microsecond, with the digits past it dropped, never rounded."""
    fractions = ["", ".5", ".123", ".123456", ".1234569", ".999999999"]
    events = [run_start("run_precision")] + [
        {"ts": f"2026-11-20T10:00:00{fractions[i % 6]}Z", "event": "note", "i": i} for i in range(1500)
    ]
    write_archive_run(tmp_path, "run_precision", events)
    import_archive(tmp_path)
    stored = Event.objects.filter(run__run_id="run_precision").order_by("seq").values_list("ts", flat=True)
    microseconds = [0, 500000, 123000, 123456, 123456, 999999]
    base = datetime(2026, 11, 20, 10, tzinfo=UTC)
    assert list(stored)[1:] == [base + timedelta(microseconds=microseconds[i % 6]) for i in range(1500)]


@pytest.mark.parametrize(
    ("ts", "instant"),
    [
        ("2026-11-20t10:00:00.000z", datetime(2026, 11, 20, 10, tzinfo=UTC)),
        ("0001-01-01T00:00:00.000Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("0001-01-01T23:59:00-00:00", datetime(1, 1, 1, 23, 59, tzinfo=UTC)),
        ("9999-12-31T23:59:59.999999999Z", datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("9999-12-31T23:59:59+23:59", datetime(9999, 12, 31, 0, 0, 59, tzinfo=UTC)),
    ],
)
def test_timestamps_at_the_edges_are_stored_and_read_back(client, local_tenant, ts, instant):
    response = post(
        client,
        "run_edge",
        {"ts": ts, "event": "run_start", "run_id": "run_edge"},
        node_attempt("build", duration_s=MAX_DURATION_S) | {"ts": ts},
        {"ts": ts, "event": "run_end", "exit_code": 0},
    )
    assert response.status_code == 200, response.content
    assert (
        list(Event.objects.filter(run__run_id="run_edge").values_list("ts", flat=True))[::2] == [instant] * 2
    )
    run = Run.objects.get(run_id="run_edge")
    assert (run.started, run.ended) == (instant, instant)
    assert_reads_answer(client, "run_edge")


# ---------------------------------------------------------------- node ids


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (transition("build\nstep"), "node"),
        (transition("tab\there"), "node"),
        (transition("del\x7f"), "node"),
        (transition("c1\x85control"), "node"),
        (transition(""), "node"),
        (transition("n" * 201), "node"),
        ({"ts": T, "event": "run_end", "exit_code": 0, "node": "n" * 300}, "node"),
        ({"ts": T, "event": "custom_kind", "node": "n" * 300}, "node"),
        ({"ts": T, "event": "custom_kind", "node": {"id": "build"}}, "node"),
        ({"ts": T, "event": "custom_kind", "node": None}, "node"),
        ({"ts": T, "event": "custom_kind", "node": "line\nbreak"}, "node"),
    ],
)
def test_a_node_id_that_is_not_1_to_200_characters_without_controls_is_refused_on_any_kind(
    client, local_tenant, event, field
):
    started(client, "run_nodes")
    before = snapshot()
    problems = refused(post(client, "run_nodes", event), field)
    assert "control" in problems[0]["message"]
    assert snapshot() == before


def test_node_ids_at_the_limits_are_stored_and_every_page_that_names_them_answers(client, local_tenant):
    longest, astral, spaced = "n" * 200, "déploiement 🚀 \U0001d518 \u4e2d", " padded / with ? and # "
    events = [run_start("run_names")]
    for node in (longest, astral, spaced):
        events += [transition(node), node_attempt(node, ok=False, exit_code=MIN_EXIT_CODE)]
        events.append(transition(node, **{"from": "running", "to": "failed"}))
    events.append({"ts": T, "event": "custom_kind", "node": longest})
    response = post(client, "run_names", *events)
    assert response.status_code == 200, response.content
    assert set(RunNode.objects.values_list("node_id", flat=True)) == {longest, astral, spaced}
    assert_reads_answer(client, "run_names")
    assert astral in client.get(f"/nodes/{quote(astral, safe='')}/").content.decode()


def test_a_node_id_with_a_newline_stored_before_the_bound_still_reads_on_every_page(client, local_tenant):
    """A database written by an earlier version may hold one: the run page, `/nodes/`, the node's
    page and the history (where it failed) answer all the same."""
    from runs.services import RunBatch
    from tenants.context import tenant_atomic

    node = "build\nstep"
    events = [
        run_start("run_old"),
        transition(node),
        transition(node, **{"from": "running", "to": "failed"}),
        {"ts": T, "event": "run_end", "exit_code": 1},
    ]
    with tenant_atomic(local_tenant):
        batch = RunBatch(tenant=local_tenant)
        change = batch.open(["run_old"])["run_old"]
        for event in events:  # straight to the write path, as before the bound: no validation
            change.append(event, orjson.dumps(event).decode())
        batch.flush()
    assert Run.objects.get(run_id="run_old").failed_nodes == [node]
    assert_reads_answer(client, "run_old")
    assert "build\nstep" in client.get("/nodes/build%0Astep/").content.decode()


def test_an_archive_line_with_a_bad_node_is_a_malformed_line_and_the_rest_is_imported(
    client, local_tenant, tmp_path
):
    write_archive_run(
        tmp_path,
        "run_lines",
        [
            run_start("run_lines"),
            transition("build\nstep"),
            {"ts": T, "event": "custom_kind", "node": {"id": "x"}},
            {"ts": T, "event": "run_end", "exit_code": 0, "node": "n" * 300},
            transition("build", attempt=2**63 - 1),
            {"ts": "0000-01-01T00:00:00Z", "event": "note"},
            transition("build"),
            {"ts": T, "event": "run_end", "exit_code": 0},
        ],
    )
    import_archive(tmp_path)
    problems = malformed("run_lines")
    assert sorted(problems) == [2, 3, 4, 5, 6]
    assert "node: must be a string of 1 to 200 characters" in problems[2]
    assert "attempt: must be an integer from 0 to 2147483647" in problems[5]
    assert "ts: must be an RFC 3339 timestamp" in problems[6]
    assert Run.objects.get(run_id="run_lines").next_seq == 3
    assert_reads_answer(client, "run_lines")


# ---------------------------------------------------------------- integers


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (transition("build", attempt=MAX_ATTEMPT + 1), "attempt"),
        (transition("build", attempt=2**63 - 1), "attempt"),
        (transition("build", attempt=2**64), "attempt"),
        (transition("build", attempt=-1), "attempt"),
        (node_attempt(attempt=MAX_ATTEMPT + 1), "attempt"),
        (node_attempt(exit_code=MAX_EXIT_CODE + 1), "exit_code"),
        (node_attempt(exit_code=MIN_EXIT_CODE - 1), "exit_code"),
        ({"ts": T, "event": "run_end", "exit_code": 2**40}, "exit_code"),
        ({"ts": T, "event": "run_end", "exit_code": -(2**63)}, "exit_code"),
        (node_attempt(duration_s=MAX_DURATION_S + 1), "duration_s"),
        (node_attempt(duration_s=1.5e308), "duration_s"),
        (node_attempt(duration_s=-0.001), "duration_s"),
    ],
)
def test_integers_and_durations_outside_their_range_are_refused(client, local_tenant, event, field):
    started(client, "run_ints")
    before = snapshot()
    problems = refused(post(client, "run_ints", event), field)
    assert problems[0]["index"] == 0
    assert snapshot() == before


def test_integers_at_the_edges_are_stored_in_both_databases(client, local_tenant):
    response = post(
        client,
        "run_ints",
        run_start("run_ints"),
        transition("a", attempt=MAX_ATTEMPT),
        node_attempt("a", attempt=MAX_ATTEMPT, exit_code=MAX_EXIT_CODE, duration_s=0),
        transition("a", attempt=MAX_ATTEMPT, **{"from": "running", "to": "done"}),
        transition("b", attempt=MAX_ATTEMPT),
        transition("b", attempt=MAX_ATTEMPT, **{"from": "running", "to": "done"}),
        {"ts": T, "event": "run_end", "exit_code": MIN_EXIT_CODE},
    )
    assert response.status_code == 200, response.content
    run = Run.objects.get(run_id="run_ints")
    # Two nodes' attempts already outgrow 32 bits.
    assert (run.total_attempts, run.flake_retries, run.exit_code) == (
        2 * MAX_ATTEMPT,
        2 * (MAX_ATTEMPT - 1),
        MIN_EXIT_CODE,
    )
    assert_reads_answer(client, "run_ints")


def test_nodes_page_sums_huge_attempt_counts_without_overflow(client, local_tenant):
    for i in range(5):
        run_id = f"run_huge_{i}"
        response = post(client, run_id, run_start(run_id), transition("flaky", attempt=MAX_ATTEMPT))
        assert response.status_code == 200, response.content
    assert client.get("/nodes/?last=1000").status_code == 200
    page = client.get("/nodes/flaky/?last=200")
    assert page.status_code == 200
    assert f'<span class="value">{5 * MAX_ATTEMPT}</span>' in page.content.decode()


@pytest.mark.skipif(
    "sqlite" not in django_settings.DATABASES["default"]["ENGINE"],
    reason="only SQLite could store an unbounded attempt: PostgreSQL's 32-bit column refused it",
)
def test_nodes_page_answers_over_attempts_stored_before_the_bound(client, local_tenant):
    from runs.services import RunBatch
    from tenants.context import tenant_atomic

    with tenant_atomic(local_tenant):
        batch = RunBatch(tenant=local_tenant)
        changes = batch.open(["run_legacy_1", "run_legacy_2"])
        for run_id, change in changes.items():
            for event in (run_start(run_id), transition("flaky", attempt=2**63 - 1)):
                change.append(event, orjson.dumps(event).decode())  # no validation, as before the bound
        batch.flush()
    assert client.get("/nodes/").status_code == 200


@pytest.mark.parametrize("seq", [MAX_SEQ + 1, 2**64, -1, 1.0, True])
def test_a_seq_outside_0_to_2_63_minus_1_is_refused(client, local_tenant, seq):
    started(client, "run_seq")
    before = snapshot()
    problems = refused(post(client, "run_seq", {"ts": T, "event": "note", "seq": seq}), "seq")
    assert str(MAX_SEQ) in problems[0]["message"]
    assert snapshot() == before


def test_the_largest_seq_is_a_gap_not_a_failure(client, local_tenant):
    started(client, "run_seq")
    response = post(client, "run_seq", {"ts": T, "event": "note", "seq": MAX_SEQ})
    assert response.status_code == 409 and response.json()["error"]["code"] == "seq_gap"
    response = client.get(f"/api/v1/runs/run_seq/events?after_seq={MAX_SEQ}")
    assert response.status_code == 200 and response.json()["results"] == []


# ---------------------------------------------------------------- unknown fields


def nested(depth: int) -> object:
    value: object = "deep"
    for _ in range(depth):
        value = [value]
    return value


def test_unknown_fields_nested_to_the_limit_are_kept_and_deeper_ones_refused(client, local_tenant):
    started(client, "run_deep")
    # The event itself is the first level.
    kept = {"ts": T, "event": "note", "deep": nested(MAX_JSON_DEPTH - 1)}
    assert post(client, "run_deep", kept).status_code == 200
    before = snapshot()
    for depth in (MAX_JSON_DEPTH, 300, 900):
        too_deep = {"ts": T, "event": "note", "deep": nested(depth)}
        for content_type in ("application/x-ndjson", "application/json"):
            response = post(client, "run_deep", too_deep, content_type=content_type)
            if len(line(too_deep)) > MAX_EVENT_BYTES:
                assert response.status_code in (400, 413), response.content
            else:
                assert "nest" in refused(response, "")[0]["message"]
    assert snapshot() == before
    assert_reads_answer(client, "run_deep")


def test_an_event_nested_too_deep_around_a_nul_is_refused_not_a_server_error(client, local_tenant):
    """The walk looking for NUL characters must not recurse as deep as a hostile event nests."""
    started(client, "run_deep_nul")
    before = snapshot()
    deep: object = "a\x00b"
    for _ in range(900):
        deep = [deep]
    event = {"ts": T, "event": "note", "deep": deep}
    assert json_has_nul(line(event), parsed(event))
    for content_type in ("application/x-ndjson", "application/json"):
        problems = refused(post(client, "run_deep_nul", event, content_type=content_type), "")
        assert any("nest" in p["message"] for p in problems), problems
    assert snapshot() == before
    assert_reads_answer(client, "run_deep_nul")


def test_huge_numbers_in_unknown_fields_are_read_back(client, local_tenant):
    started(client, "run_numbers")
    events = [
        {"ts": T, "event": "note", "big": 2**64 - 1, "bigger": 2**200, "float": 1e300, "tiny": 5e-324},
        {"ts": T, "event": "note", "negative": -(2**63) - 1, "exp": 1.5e308},
    ]
    assert post(client, "run_numbers", *events).status_code == 200
    assert_reads_answer(client, "run_numbers")
    shown = client.get("/api/v1/runs/run_numbers/events").json()["results"]
    assert shown[1]["big"] == 2**64 - 1 and float(shown[1]["float"]) == 1e300


# ---------------------------------------------------------------- graphs


def chain(nodes: int, extra_edges_per_node: int = 0) -> dict:
    """A DAG as long as it is wide: each node depends on the one before (and a few more)."""
    return {
        "version": 1,
        "nodes": [
            {"id": f"n{i}", "deps": [f"n{j}" for j in range(max(0, i - 1 - extra_edges_per_node), i)]}
            for i in range(nodes)
        ],
    }


def put_graph(client, run_id: str, graph: dict):
    return client.put(
        f"/api/v1/runs/{run_id}/graph", data=orjson.dumps(graph), content_type="application/json"
    )


def test_a_graph_over_the_node_or_edge_limit_is_refused_through_the_api(client, local_tenant):
    started(client, "run_graph")
    before = snapshot()
    problems = refused(put_graph(client, "run_graph", chain(MAX_GRAPH_NODES + 1)), "nodes")
    assert str(MAX_GRAPH_NODES) in problems[0]["message"]
    over = {
        "version": 1,
        "nodes": [{"id": "hub", "deps": []}]
        + [{"id": f"n{i}", "deps": ["hub"] * 20} for i in range(MAX_GRAPH_EDGES // 20 + 1)],
    }
    problems = refused(put_graph(client, "run_graph", over), "nodes")
    assert str(MAX_GRAPH_EDGES) in problems[-1]["message"]
    bad = {"version": 1, "nodes": [{"id": "a\nb", "deps": []}, {"id": "c", "deps": ["x" * 201]}]}
    assert {p["field"] for p in refused(put_graph(client, "run_graph", bad))} == {
        "nodes[0].id",
        "nodes[1].deps",
    }
    # A run_start's graph is held to the same rules.
    assert refused(post(client, "run_graph2", run_start("run_graph2", graph=bad)), "graph.nodes[0].id")
    assert snapshot() == before


def test_a_graph_at_the_limits_is_stored_and_its_page_is_drawn(client, local_tenant):
    graph = chain(MAX_GRAPH_NODES, extra_edges_per_node=9)
    assert sum(len(n["deps"]) for n in graph["nodes"]) <= MAX_GRAPH_EDGES
    started(client, "run_big_graph")
    assert put_graph(client, "run_big_graph", graph).status_code == 200
    response = post(client, "run_big_graph", transition("n9999"))
    assert response.status_code == 200, response.content
    # Its depth (a chain 10,000 long) is walked without recursion; the whole graph, drawn when
    # asked for, is a bounded part of it, the node that moved first, and the page says so.
    page = client.get("/runs/run_big_graph/?dag=full")
    assert page.status_code == 200
    html = page.content.decode()
    assert f"the pictures show {MAX_DRAWN_NODES} of its {MAX_GRAPH_NODES} nodes" in html
    assert html.index('data-node="n9999"') < html.index('data-node="n0"')
    detail = client.get("/api/v1/runs/run_big_graph/")
    assert detail.status_code == 200 and len(detail.json()["nodes"]) == MAX_GRAPH_NODES


def test_a_300000_node_graph_json_is_refused_with_a_warning_and_its_run_is_shown(
    client, local_tenant, tmp_path
):
    write_archive_run(
        tmp_path, "run_huge_graph", [run_start("run_huge_graph"), transition("n1")], graph=chain(300_000)
    )
    write_archive_run(
        tmp_path, "run_many_nodes", [run_start("run_many_nodes")], graph=chain(MAX_GRAPH_NODES + 1)
    )
    output = import_archive(tmp_path)
    assert "graph.json is" in output and "bytes, over the 8388608" in output
    assert f"a graph has at most {MAX_GRAPH_NODES}" in output
    for run_id in ("run_huge_graph", "run_many_nodes"):
        assert Run.objects.get(run_id=run_id).graph is None
        assert_reads_answer(client, run_id)


# ---------------------------------------------------------------- filters


def test_history_filters_at_the_last_day_answer(client, local_tenant):
    started(client, "run_any")
    for query in (
        "started_to=9999-12-31",
        "started_from=9999-12-31&started_to=9999-12-31",
        "started_from=0001-01-01",
    ):
        assert client.get(f"/?{query}").status_code == 200
    assert "run_any" in client.get("/?started_to=9999-12-31").content.decode()
    assert "run_any" not in client.get("/?started_from=9999-12-31").content.decode()


@pytest.mark.parametrize(
    "query", ["started_to=10000-01-01", "started_from=2026-02-30", "started_to=0000-01-01"]
)
def test_history_explains_an_impossible_date(client, local_tenant, query):
    page = client.get(f"/?{query}")
    assert page.status_code == 200
    assert "Enter a valid date" in page.content.decode()


@pytest.mark.parametrize(
    "query",
    [
        "started_before=9999-12-31T23:59:59-23:59",
        "started_after=0001-01-01T00:00:00%2B23:59",
        "started_before=10000-01-01T00:00:00Z",
        # A hand-made cursor whose offset carries its time before year 1.
        "cursor=" + quote(b64encode(urlencode({"p": "0001-01-01T00:00:00+23:59|1"}).encode()).decode()),
    ],
)
def test_the_run_list_api_refuses_impossible_times_as_invalid_query(client, local_tenant, query):
    started(client, "run_any")
    response = client.get(f"/api/v1/runs/?{query}")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "invalid_query"


def test_the_run_list_api_takes_times_at_the_edges(client, local_tenant):
    started(client, "run_any")
    for query in ("started_before=9999-12-31T23:59:59Z", "started_after=0001-01-01T00:00:00Z"):
        response = client.get(f"/api/v1/runs/?{query}")
        assert response.status_code == 200 and len(response.json()["results"]) == 1


# ---------------------------------------------------------------- the property


# The integer and float edges of every bound, and a little either side.
EDGE_INTS = st.sampled_from(
    [
        0,
        1,
        -1,
        MAX_ATTEMPT,
        MAX_ATTEMPT + 1,
        MIN_EXIT_CODE,
        MIN_EXIT_CODE - 1,
        MAX_SEQ,
        MAX_SEQ + 1,
        2**64,
        -(2**63) - 1,
    ]
)
NUMBERS = st.one_of(
    EDGE_INTS,
    st.integers(-5, 5),
    st.integers(),
    st.sampled_from([0.0, -0.0, 0.5, float(MAX_DURATION_S), MAX_DURATION_S + 0.5, 5e-324, 1e300, 1.7e308]),
    st.floats(allow_nan=False, allow_infinity=False),
)
# Text of every kind: control characters, the edges of the BMP and beyond, and lengths either
# side of a node id's limit.
TEXT = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(codec="utf-8"), max_size=12),
    st.text(st.characters(min_codepoint=0, max_codepoint=0xA0), max_size=6),
    st.text(st.characters(min_codepoint=0x10000), min_size=1, max_size=4),
    st.sampled_from(["a\nb", "\x7f", "\x9f", "\u2028", "🚀" * 200, "é" * 201, "n" * 199]),
    st.integers(195, 205).map(lambda n: "x" * n),
)
EDGE_TIMESTAMPS = [
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+00:01",
    "0001-01-01T23:59:00+23:59",
    "9999-12-31T23:59:59.999999999Z",
    "9999-12-31T23:59:59-00:01",
    "9999-12-31T00:00:00-23:59",
    "2026-11-20t10:00:00z",
    "2026-11-20 10:00:00+05:30",
    "2026-02-29T00:00:00Z",
    "2026-11-20T10:00:00+24:00",
    "0000-01-01T00:00:00Z",
]


def timestamps(hours: st.SearchStrategy, minutes: st.SearchStrategy) -> st.SearchStrategy:
    """Any moment in UTC (Z) or with an offset of these hours and minutes, to 0 to 6 digits of
    fraction."""
    return st.builds(
        lambda moment, zone, hours, minutes, digits: (
            moment.replace(microsecond=0).isoformat()
            + (f".{moment.microsecond:06d}"[: digits + 1] if digits else "")
            + (zone if zone == "Z" else f"{zone}{hours:02d}:{minutes:02d}")
        ),
        st.datetimes(),
        st.sampled_from("Z+-"),
        hours,
        minutes,
        st.integers(0, 6),
    )


TIMESTAMPS = st.one_of(
    st.just(T),
    st.sampled_from(EDGE_TIMESTAMPS),
    timestamps(st.integers(0, 25), st.integers(0, 61)),
    TEXT,
)


def json_containers(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3)


JSON_VALUES = st.recursive(st.none() | st.booleans() | NUMBERS | TEXT, json_containers, max_leaves=8)
# Deep nesting, either side of the bound, and large values that stay under the event size limit.
UNKNOWN_FIELDS = st.one_of(
    JSON_VALUES,
    st.integers(MAX_JSON_DEPTH - 3, MAX_JSON_DEPTH + 2).map(nested),
    st.integers(200, 950).map(nested),
    st.integers(1, 3900).map(lambda n: "z" * n),
)
GRAPHS = st.fixed_dictionaries(
    {
        "version": st.just(1),
        "nodes": st.lists(
            st.fixed_dictionaries(
                {"id": TEXT}, optional={"deps": st.lists(TEXT, max_size=2), "label": JSON_VALUES}
            ),
            max_size=3,
        ),
    }
)
FIELD_VALUES = {
    "node": st.one_of(TEXT, JSON_VALUES),
    "from": st.sampled_from(["pending", "running", "done", "failed", "blocked"]) | TEXT,
    "to": st.sampled_from(["pending", "running", "done", "failed", "blocked"]) | TEXT,
    "attempt": NUMBERS | JSON_VALUES,
    "exit_code": NUMBERS | JSON_VALUES,
    "duration_s": NUMBERS | JSON_VALUES,
    "ok": st.booleans() | JSON_VALUES,
    "error": TEXT | JSON_VALUES,
    "run_id": TEXT,
    "producer": TEXT | JSON_VALUES,
    "graph": GRAPHS | JSON_VALUES,
}
EVENTS = st.fixed_dictionaries(
    {
        "ts": TIMESTAMPS,
        "event": st.sampled_from(["transition", "node_attempt", "run_end", "run_start"]) | TEXT,
    },
    optional={**FIELD_VALUES, "extra": UNKNOWN_FIELDS, "x-note": UNKNOWN_FIELDS},
)
# Valid parts, extremes included, so that many events are stored and the reads see them.
# Made valid rather than filtered from TIMESTAMPS (most of which are not): hypothesis gives up on a
# strategy that filters out most of what it draws. Only an offset carrying a moment out of years
# 1 to 9999 is filtered out.
VALID_TIMESTAMPS = st.one_of(
    st.just(T),
    st.sampled_from([ts for ts in EDGE_TIMESTAMPS if ts_utc(ts) is not None]),
    timestamps(st.integers(0, 23), st.integers(0, 59)).filter(lambda ts: ts_utc(ts) is not None),
)
VALID_NODES = st.one_of(
    st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=12),
    st.sampled_from(["n" * 200, "🚀" * 200, "a b/c?d#e%20", "\u2028", "\U0001d518", "..", "-"]),
)
VALID_KINDS = st.text(
    st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), min_size=1, max_size=64
)
VALID_EVENTS = st.one_of(
    st.builds(
        lambda ts, node, attempt, to, extra: {
            "ts": ts,
            "event": "transition",
            "node": node,
            "from": "pending",
            "to": to,
            "attempt": attempt,
            "x": extra,
        },
        VALID_TIMESTAMPS,
        VALID_NODES,
        st.integers(0, MAX_ATTEMPT) | st.sampled_from([MAX_ATTEMPT]),
        st.sampled_from(["running", "done", "failed", "blocked"]),
        UNKNOWN_FIELDS,
    ),
    st.builds(
        lambda ts, node, attempt, ok, duration, code, error: {
            "ts": ts,
            "event": "node_attempt",
            "node": node,
            "attempt": attempt,
            "ok": ok,
            "duration_s": duration,
            "exit_code": code,
            "error": error,
        },
        VALID_TIMESTAMPS,
        VALID_NODES,
        st.integers(0, MAX_ATTEMPT),
        st.booleans(),
        st.floats(0, MAX_DURATION_S) | st.sampled_from([0, MAX_DURATION_S]),
        st.integers(MIN_EXIT_CODE, MAX_EXIT_CODE) | st.sampled_from([MIN_EXIT_CODE, MAX_EXIT_CODE]),
        st.none() | TEXT,
    ),
    st.builds(
        lambda ts, kind, extra: {"ts": ts, "event": kind, "payload": extra},
        VALID_TIMESTAMPS,
        VALID_KINDS,
        JSON_VALUES,
    ),
)
HOSTILE_RUNS = st.lists(st.one_of(EVENTS, VALID_EVENTS, VALID_EVENTS), min_size=1, max_size=4)

_runs = itertools.count()


def parsed(event: dict) -> object:
    """The event as the server reads it (orjson), or None when that text is not an event at all."""
    try:
        return orjson.loads(line(event))
    except orjson.JSONDecodeError:
        return None


def accepted_by_schema(event: dict) -> bool:
    """What both write paths accept: an event within the size limit, with no NUL anywhere
    (PostgreSQL stores none), that `validate_event` finds nothing wrong with."""
    text = line(event)
    value = parsed(event)
    return (
        len(text) - 1 <= MAX_EVENT_BYTES
        and value is not None
        and not validate_event(value)
        and not json_has_nul(text, value)
    )


# A few hundred examples over both write paths and both databases: each reads every page and
# endpoint of the run it wrote, which is most of its cost.
PROPERTY = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# An import per example costs more than a request: fewer of them.
ARCHIVE_PROPERTY = settings(PROPERTY, max_examples=60)


@PROPERTY
@given(events=HOSTILE_RUNS, graph=st.none() | GRAPHS)
def test_any_event_through_the_api_is_stored_whole_or_refused_and_every_read_answers(
    client, local_tenant, events, graph
):
    run_id = f"run_api_{next(_runs)}"
    start = run_start(run_id) if graph is None else run_start(run_id, graph=graph)
    if post(client, run_id, start).status_code != 200:
        started(client, run_id)
    for event in events:
        if event.get("event") == "run_start" and isinstance(event.get("run_id"), str):
            event = {**event, "run_id": run_id}  # a run_start naming another run is another check
        before = snapshot(run_id)
        response = post(client, run_id, event)
        if not accepted_by_schema(event):
            assert response.status_code in (400, 413), (event, response.content)
            assert snapshot(run_id) == before
        elif response.status_code != 200:
            # Schema-valid, refused by the run's state (after run_end): nothing written either.
            assert response.status_code == 409, (event, response.content)
            assert snapshot(run_id) == before
    assert_reads_answer(client, run_id)


@ARCHIVE_PROPERTY
@given(events=HOSTILE_RUNS, graph=st.none() | GRAPHS)
def test_any_line_of_an_archive_is_an_event_or_a_malformed_line_and_every_read_answers(
    client, local_tenant, tmp_path_factory, events, graph
):
    root = tmp_path_factory.mktemp("archive")
    run_id = f"run_archive_{next(_runs)}"
    folder = root / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "transitions.jsonl").write_bytes(line(run_start(run_id)) + b"".join(line(e) for e in events))
    if graph is not None:
        (folder / "graph.json").write_bytes(line(graph))
    import_archive(root)
    valid = [e for e in events if accepted_by_schema(e)]
    stored = Event.objects.filter(run__run_id=run_id).order_by("seq").values_list("payload", flat=True)
    # Compared by kind and time: PostgreSQL's jsonb writes numbers its own way (1e300 as digits).
    assert [(p["event"], p["ts"]) for p in stored] == [
        (e["event"], e["ts"]) for e in [run_start(run_id), *valid]
    ]
    assert sorted(malformed(run_id)) == [
        n for n, e in enumerate(events, start=2) if not accepted_by_schema(e)
    ]
    assert_reads_answer(client, run_id)
