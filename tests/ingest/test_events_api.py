"""The ingest API of SPEC section 5, through HTTP: every status and error code, and retry safety."""

import json
import random
import threading

import orjson
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.simulator import run_simulate, synthetic_edges
from runs.models import Diagnostic, Event, Run, RunNode
from runs.reduction import MAX_EVENT_BYTES, parse_ts, reduce_events
from tests.conftest import SAMPLE_ARCHIVE

pytestmark = pytest.mark.django_db

T = "2026-11-20T10:00:00.000Z"
GRAPH = {"version": 1, "nodes": [{"id": "a", "deps": []}, {"id": "b", "deps": ["a"]}]}


def sample_events(run_id: str = "run_flaky") -> list[dict]:
    lines = (SAMPLE_ARCHIVE / "runs" / run_id / "transitions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def ndjson(events: list[dict]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


def with_seq(events: list[dict], start: int = 0) -> list[dict]:
    return [dict(e, seq=start + i) for i, e in enumerate(events)]


def post(client, run_id: str, body: bytes | str, content_type: str = "application/x-ndjson"):
    return client.post(f"/api/v1/runs/{run_id}/events", data=body, content_type=content_type)


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"]), body
    return body["error"]


def snapshot() -> tuple:
    """Everything a batch could change, to show a rejected one changed nothing."""
    runs = list(Run.objects.order_by("id").values())
    events = list(Event.objects.order_by("run_id", "seq").values_list("run_id", "seq", "payload"))
    diagnostics = list(Diagnostic.objects.order_by("id").values_list("run_id", "code", "seq"))
    nodes = list(RunNode.objects.order_by("run_id", "position").values_list("run_id", "node_id", "state"))
    return runs, events, diagnostics, nodes


def stored(run_id: str) -> list[dict]:
    return [
        {**payload, "seq": seq}
        for seq, payload in Event.objects.filter(run__run_id=run_id)
        .order_by("seq")
        .values_list("seq", "payload")
    ]


# ---------------------------------------------------------------- accepted


def test_an_ndjson_batch_is_stored_and_reduced(client, local_tenant):
    events = sample_events()
    response = post(client, "run_flaky", ndjson(with_seq(events)))
    assert response.status_code == 200, response.content
    assert response.json() == {"run_id": "run_flaky", "accepted": 35, "duplicates": 0, "next_seq": 35}
    run = Run.objects.get(run_id="run_flaky")
    whole, _ = reduce_events("run_flaky", events)
    assert (run.total_attempts, run.flake_retries, run.outcome, run.duration_s) == (
        11,
        4,
        "clean_with_flake",
        481.6,
    )
    assert run.node_attempts == whole.row()["node_attempts"]
    assert [e["seq"] for e in stored("run_flaky")] == list(range(35))


def test_a_json_array_without_seq_is_appended_in_order(client, local_tenant):
    events = sample_events("run_clean")
    first = post(client, "run_clean", orjson.dumps(events[:10]), "application/json")
    second = post(client, "run_clean", orjson.dumps(events[10:]), "application/json")
    assert first.json()["next_seq"] == 10
    assert second.json() == {"run_id": "run_clean", "accepted": 13, "duplicates": 0, "next_seq": 23}
    assert [{k: v for k, v in e.items() if k != "seq"} for e in stored("run_clean")] == events


def test_run_start_may_carry_the_graph(client, local_tenant):
    start = {"ts": T, "event": "run_start", "run_id": "g", "graph": GRAPH}
    assert post(client, "g", ndjson([start])).status_code == 200
    run = Run.objects.get(run_id="g")
    assert run.graph == GRAPH and run.total_nodes == 2
    assert client.get("/api/v1/runs/g/graph").json() == GRAPH


def test_get_on_the_same_path_still_reads_the_events(client, local_tenant):
    post(client, "run_clean", ndjson(sample_events("run_clean")))
    page = client.get("/api/v1/runs/run_clean/events?after_seq=20").json()
    assert [e["seq"] for e in page["results"]] == [21, 22]


# ---------------------------------------------------------------- retries


def test_the_same_batch_twice_is_stored_once(client, local_tenant):
    body = ndjson(with_seq(sample_events()))
    post(client, "run_flaky", body)
    again = post(client, "run_flaky", body)
    assert again.status_code == 200
    assert again.json() == {"run_id": "run_flaky", "accepted": 0, "duplicates": 35, "next_seq": 35}
    assert Event.objects.count() == 35


def test_a_batch_cut_by_a_dropped_connection_and_sent_again_stores_each_event_once(client, local_tenant):
    events = with_seq(sample_events())
    post(client, "run_flaky", ndjson(events[:12]))  # the producer never saw this receipt
    response = post(client, "run_flaky", ndjson(events[:20]))
    assert response.json() == {"run_id": "run_flaky", "accepted": 8, "duplicates": 12, "next_seq": 20}
    assert [e["seq"] for e in stored("run_flaky")] == list(range(20))


# ---------------------------------------------------------------- refused, and nothing changes


def refused(client, run_id, body, content_type="application/x-ndjson", status=None, code=None) -> dict:
    before = snapshot()
    response = post(client, run_id, body, content_type)
    assert response.status_code == status, response.content
    error = error_of(response)
    assert error["code"] == code
    assert error["message"]
    assert snapshot() == before
    return error


@pytest.fixture
def started(client, local_tenant):
    """run_flaky with its first 10 events stored."""
    post(client, "run_flaky", ndjson(with_seq(sample_events()[:10])))


def test_seq_conflict(client, started):
    events = with_seq(sample_events()[:12])
    events[5] = dict(events[5], node="someone-else")
    error = refused(client, "run_flaky", ndjson(events), status=409, code="seq_conflict")
    assert error["details"]["seq"] == 5


def test_seq_gap_names_next_seq(client, started):
    events = with_seq(sample_events()[12:15], start=12)
    error = refused(client, "run_flaky", ndjson(events), status=409, code="seq_gap")
    assert error["details"]["next_seq"] == 10


def test_run_not_started(client, local_tenant):
    events = sample_events()[1:4]
    refused(client, "fresh", ndjson(events), status=409, code="run_not_started")
    assert not Run.objects.filter(run_id="fresh").exists()


def test_nothing_is_accepted_after_run_end(client, local_tenant):
    events = sample_events()
    post(client, "run_flaky", ndjson(events))
    late = {"ts": T, "event": "note", "text": "late"}
    error = refused(client, "run_flaky", ndjson([late]), status=409, code="run_ended")
    assert error["details"]["next_seq"] == 35
    # ... nor after a run_end earlier in the same batch.
    refused(client, "run_clean", ndjson([*sample_events("run_clean"), late]), status=409, code="run_ended")


def test_schema_errors_are_listed_by_index_and_field(client, started):
    events = with_seq(sample_events()[10:13], start=10)
    events[0] = dict(events[0], attempt=-1)
    events[2] = {k: v for k, v in events[2].items() if k != "ts"}
    error = refused(client, "run_flaky", ndjson(events), status=400, code="invalid_body")
    assert {(e["index"], e["field"]) for e in error["details"]["errors"]} == {(0, "attempt"), (2, "ts")}
    assert all(e["message"] for e in error["details"]["errors"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"ts":"2026-11-20T10:00:00.000Z","event":"note","text":"a\\u0000b"}\n', ""),
        (b'{"ts":"2026-11-20T10:00:00.000Z","event":"note","text":"\xff\xfe"}\n', ""),
        (b"not json\n", ""),
        (b"[1]\n", ""),
        (b'{"seq":"0","ts":"2026-11-20T10:00:00.000Z","event":"note"}\n', "seq"),
        (
            b'{"ts":"2026-11-20T10:00:00.000Z","event":"transition","node":"a","from":[],'
            b'"to":"running","attempt":1}\n',
            "from",
        ),
        (
            b'{"ts":"2026-11-20T10:00:00.000Z","event":"transition","node":"a","from":"pending",'
            b'"to":{"state":"running"},"attempt":1}\n',
            "to",
        ),
    ],
    ids=["nul", "invalid-utf8", "not-json", "not-an-object", "bad-seq", "state-a-list", "state-an-object"],
)
def test_bad_bodies_are_400_with_a_reason(client, started, body, field):
    error = refused(client, "run_flaky", body, status=400, code="invalid_body")
    assert error["details"]["errors"][0]["field"] == field


@pytest.mark.parametrize("content_type", ["application/x-ndjson", "application/json"])
@pytest.mark.parametrize(
    "event",
    [
        {"ts": T, "event": "note", "nested": {"list": ["ok", "a\x00b"]}},
        {"ts": T, "event": "note", "key\x00": 1},
    ],
    ids=["in-a-nested-value", "in-a-key"],
)
def test_nul_anywhere_in_an_event_is_refused(client, started, event, content_type):
    body = ndjson([event]) if content_type == "application/x-ndjson" else orjson.dumps([event])
    error = refused(client, "run_flaky", body, status=400, code="invalid_body", content_type=content_type)
    assert error["details"]["errors"][0]["message"] == "must not contain NUL characters"
    # An escaped backslash before "u0000" is text, not NUL: stored as sent.
    text = {"ts": T, "event": "note", "path": "C:\\u0000"}
    assert post(client, "run_flaky", ndjson([text])).status_code == 200


def test_seq_on_some_events_only_is_refused(client, started):
    events = with_seq(sample_events()[10:12], start=10)
    events[1].pop("seq")
    refused(client, "run_flaky", ndjson(events), status=400, code="invalid_body")


def test_event_too_large(client, started):
    big = {"ts": T, "event": "note", "seq": 10, "text": "x" * MAX_EVENT_BYTES}
    error = refused(client, "run_flaky", ndjson([big]), status=413, code="event_too_large")
    assert error["details"]["index"] == 0


def test_batch_too_large_by_count_and_by_bytes(client, started):
    notes = [{"ts": T, "event": "note"}] * 1001
    refused(client, "run_flaky", ndjson(notes), status=413, code="batch_too_large")
    padded = [{"ts": T, "event": "note", "text": "x" * 3000}] * 400  # 1.2 MB
    refused(client, "run_flaky", ndjson(padded), status=413, code="batch_too_large")


def test_unsupported_media_type(client, started):
    refused(
        client, "run_flaky", "hello", content_type="text/plain", status=415, code="unsupported_media_type"
    )


def test_an_invalid_run_id_is_refused(client, local_tenant):
    start = {"ts": T, "event": "run_start", "run_id": "x"}
    refused(client, ".hidden", ndjson([start]), status=400, code="invalid_run_id")
    # "$" in a pattern matches before a final newline: the id must match whole.
    refused(client, "run%0A", ndjson([start]), status=400, code="invalid_run_id")


def node_rows(run_id: str) -> list[tuple]:
    return list(
        RunNode.objects.filter(run__run_id=run_id)
        .order_by("position")
        .values_list("node_id", "position", "state", "attempts")
    )


def reduced_nodes(events: list[dict], graph: dict | None = None) -> list[tuple]:
    reduction, _ = reduce_events("r", events)
    if graph is not None:
        reduction.set_graph(graph)
    states = reduction.node_states()
    return [(node, position, state, attempts) for position, (node, state, attempts) in enumerate(states)]


def test_node_rows_follow_the_reduction_one_event_or_batch_at_a_time(client, local_tenant):
    # A batch writes only the node rows it changes: after each one, they are the reduction's own.
    events = [e for e in sample_events("run_failed") if e["event"] != "run_start"]
    start = {"ts": T, "event": "run_start", "run_id": "nodes"}
    assert post(client, "nodes", ndjson([start])).status_code == 200
    sent = [start]
    for size in (1, 1, 3, 1, 7, 1, 2, 100):
        chunk, events = events[:size], events[size:]
        if not chunk:
            break
        assert post(client, "nodes", ndjson(chunk)).status_code == 200
        sent += chunk
        assert node_rows("nodes") == reduced_nodes(sent), f"after {len(sent)} events"
    # A graph written after the events puts the nodes in graph order, moving their positions.
    graph = {
        "version": 1,
        "nodes": [{"id": n, "deps": []} for n in sorted({e["node"] for e in sent if "node" in e})[::-1]],
    }
    put = client.put("/api/v1/runs/nodes/graph", data=json.dumps(graph), content_type="application/json")
    assert put.status_code == 200
    assert node_rows("nodes") == reduced_nodes(sent, graph)


# ---------------------------------------------------------------- graph and summary


@pytest.mark.parametrize("kind", ["graph", "summary"])
def test_graph_and_summary_are_written_once(client, local_tenant, kind):
    document = GRAPH if kind == "graph" else {"run_id": "x", "total_nodes": 2}
    url = f"/api/v1/runs/x/{kind}"
    first = client.put(url, data=json.dumps(document), content_type="application/json")
    assert (first.status_code, first.json()["written"]) == (200, True)
    again = client.put(url, data=json.dumps(document), content_type="application/json")
    assert (again.status_code, again.json()["written"]) == (200, False)
    before = snapshot()
    other = client.put(url, data=json.dumps({**document, "extra": 1}), content_type="application/json")
    assert (other.status_code, error_of(other)["code"]) == (409, "already_written")
    assert snapshot() == before
    assert client.get(url).json() == document


def test_an_invalid_graph_is_refused(client, local_tenant):
    response = client.put(
        "/api/v1/runs/x/graph", data=json.dumps({"nodes": [{"id": 3}]}), content_type="application/json"
    )
    assert response.status_code == 400
    assert error_of(response)["details"]["errors"][0]["field"] == "nodes[0].id"
    assert not Run.objects.filter(run_id="x").exists()


def test_a_summary_that_disagrees_is_a_diagnostic(client, local_tenant):
    post(client, "run_flaky", ndjson(sample_events()))
    summary = json.loads((SAMPLE_ARCHIVE / "runs" / "run_flaky" / "summary.json").read_text())
    client.put(
        "/api/v1/runs/run_flaky/summary",
        data=json.dumps(dict(summary, flake_retries=9)),
        content_type="application/json",
    )
    assert Diagnostic.objects.get(run__run_id="run_flaky").details["fields"] == {
        "flake_retries": {"summary": 9, "reduction": 4}
    }


# ---------------------------------------------------------------- fuzz


# Any JSON value, of any shape, for any field.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=2) | st.dictionaries(st.text(max_size=3), children, max_size=2)
    ),
    max_leaves=4,
)
# Events of a kind with fields of its own, each field present or not and of any shape.
KNOWN_KIND_EVENTS = st.fixed_dictionaries(
    {"ts": st.just(T), "event": st.sampled_from(["run_start", "transition", "node_attempt", "run_end"])},
    optional={
        name: JSON_VALUES
        for name in (
            "run_id",
            "graph",
            "node",
            "from",
            "to",
            "attempt",
            "ok",
            "duration_s",
            "exit_code",
            "error",
        )
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.lists(KNOWN_KIND_EVENTS, min_size=1, max_size=4).map(
            lambda events: b"".join(orjson.dumps(e) + b"\n" for e in events)
        ),
        st.lists(
            st.dictionaries(
                st.sampled_from(["ts", "event", "seq", "node", "from", "to", "attempt", "ok", "exit_code"]),
                st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=8), st.just(T)),
            ),
            max_size=4,
        ).map(lambda events: b"".join(orjson.dumps(e) + b"\n" for e in events)),
    ),
    content_type=st.sampled_from(["application/x-ndjson", "application/json"]),
)
def test_random_bodies_never_fail_the_server_and_store_nothing_when_refused(
    client, started, body, content_type
):
    before = snapshot()
    response = post(client, "run_flaky", body, content_type)
    assert response.status_code in (200, 400, 409, 413, 415), response.content
    if response.status_code != 200:
        assert error_of(response)["code"]
        assert snapshot() == before


# ---------------------------------------------------------------- concurrency, over real HTTP


@pytest.mark.django_db(transaction=True)
def test_concurrent_producers_end_with_contiguous_seqs_and_rows_equal_to_their_logs(
    live_server, local_tenant
):
    url = live_server.url + "/api/v1/runs/{}/events"
    failures: list[str] = []

    def produce(run_id: str, events: list[dict], batch: int) -> None:
        with requests.Session() as session:
            for start in range(0, len(events), batch):
                chunk = [
                    dict(e, run_id=run_id) if e["event"] == "run_start" else e
                    for e in events[start : start + batch]
                ]
                response = session.post(
                    url.format(run_id),
                    data=ndjson(chunk),
                    headers={"Content-Type": "application/x-ndjson"},
                    timeout=60,
                )
                if response.status_code != 200:
                    failures.append(f"{run_id}: {response.status_code} {response.text[:200]}")

    sample = sample_events()
    threads = [threading.Thread(target=produce, args=(f"run_{i}", sample, 4)) for i in range(8)]
    # Four writers on one run, appending without seq once it has started: every event lands once.
    post_start = threading.Event()

    def shared_writer(k: int) -> None:
        post_start.wait(30)
        notes = [{"ts": T, "event": "note", "writer": k, "n": n} for n in range(25)]
        produce("shared", notes, 5)

    shared = [threading.Thread(target=shared_writer, args=(k,)) for k in range(4)]
    produce("shared", [{"ts": T, "event": "run_start", "run_id": "shared"}], 1)
    post_start.set()
    for thread in threads + shared:
        thread.start()
    for thread in threads + shared:
        thread.join(120)
    assert failures == []

    for i in range(8):
        run = Run.objects.get(run_id=f"run_{i}")
        events = stored(f"run_{i}")
        assert [e["seq"] for e in events] == list(range(35))
        whole, _ = reduce_events(run.run_id, [{k: v for k, v in e.items() if k != "seq"} for e in events])
        assert (run.total_attempts, run.flake_retries, run.outcome, run.next_seq) == (
            whole.row()["total_attempts"],
            whole.row()["flake_retries"],
            whole.row()["outcome"],
            35,
        )
    notes = stored("shared")
    assert [e["seq"] for e in notes] == list(range(101))
    assert sorted((e["writer"], e["n"]) for e in notes[1:]) == [(k, n) for k in range(4) for n in range(25)]
    # Each writer's own events kept their order.
    for k in range(4):
        assert [e["n"] for e in notes[1:] if e["writer"] == k] == list(range(25))


@pytest.mark.django_db(transaction=True)
def test_simulated_runs_posted_over_http_reduce_to_what_the_simulator_wrote(live_server, local_tenant):
    """Runs of the project's simulator sent as a producer sends them (graph in run_start, batches of
    seven with `seq`) to the real server: each row is the simulator's own account of the run."""
    edges = synthetic_edges(6, random.Random(5))
    plans = [{}, {"n001": [False, True]}, {"n002": [False, False, False]}]
    runs = [run_simulate(f"post_{i}", edges, plan) for i, plan in enumerate(plans)]
    with requests.Session() as session:
        for run in runs:
            events = [dict(event, seq=seq) for seq, event in enumerate(run.events)]
            events[0]["graph"] = run.graph
            for first in range(0, len(events), 7):
                response = session.post(
                    f"{live_server.url}/api/v1/runs/{run.run_id}/events",
                    data=ndjson(events[first : first + 7]),
                    headers={"Content-Type": "application/x-ndjson"},
                    timeout=30,
                )
                assert response.status_code == 200, response.text
    assert [run.summary["outcome"] for run in runs] == ["clean", "clean_with_flake", "failed"]
    for run in runs:
        stored_run = Run.objects.get(run_id=run.run_id)
        assert stored_run.complete and stored_run.next_seq == len(run.events)
        row = {name: getattr(stored_run, name) for name in run.summary if name not in ("started", "ended")}
        assert row == {name: value for name, value in run.summary.items() if name not in ("started", "ended")}
        assert (stored_run.started, stored_run.ended) == tuple(
            parse_ts(run.summary[name]) for name in ("started", "ended")
        )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_producers_creating_one_run_queue_and_the_second_finds_the_first_run(local_tenant):
    # A run_start sent twice at once (a retry racing its original): the second writer waits for the
    # first to commit the new run, then sees its own event already stored.
    from django.db import connection

    from ingest.services import Receipt, events_parse, run_append_batch
    from runs.services import RunBatch
    from tenants.context import tenant_atomic

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's row locks")
    start = {"ts": T, "event": "run_start", "run_id": "racing"}
    opened, release = threading.Event(), threading.Event()
    outcomes: dict[str, object] = {}

    def first() -> None:
        try:
            with tenant_atomic(local_tenant):
                batch = RunBatch(tenant=local_tenant)
                change = batch.open(["racing"])["racing"]
                change.append(start, orjson.dumps(start).decode())
                opened.set()
                release.wait(30)
                batch.flush()
                outcomes["first"] = change.created
        finally:
            connection.close()

    def second() -> None:
        try:
            batch = events_parse(ndjson([dict(start, seq=0)]), "application/x-ndjson")
            outcomes["second"] = run_append_batch(tenant=local_tenant, run_id="racing", batch=batch)
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert opened.wait(30)
    threads[1].start()
    waiting = 0
    for _ in range(300):
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
            (waiting,) = cursor.fetchone()
        if waiting:
            break
        threading.Event().wait(0.05)
    release.set()
    for thread in threads:
        thread.join(30)
    assert waiting == 1, "the second writer did not wait for the run's creation"
    assert outcomes == {
        "first": True,
        "second": Receipt(run_id="racing", accepted=0, duplicates=1, next_seq=1),
    }
    assert Run.objects.filter(run_id="racing").count() == 1
    assert [e["seq"] for e in stored("racing")] == [0]
