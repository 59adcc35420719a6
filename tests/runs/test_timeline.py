"""The timeline: attempts and state changes from a log, in seq order, agreeing with the reduction."""

import json
from datetime import datetime

import pytest

from runs.reduction import reduce_events, validate_event
from runs.timeline import build_timeline
from tests.conftest import INLINE_GRAPH, SAMPLE_ARCHIVE

SAMPLE_RUNS = ["run_clean", "run_flaky", "run_failed", "run_crashed", "run_same_ts", "run_dirty"]


def sample(run_id: str) -> tuple[dict, list[dict]]:
    folder = SAMPLE_ARCHIVE / "runs" / run_id
    events = []
    for line in (folder / "transitions.jsonl").read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            continue  # a write in progress
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not validate_event(event):
            events.append(event)
    return json.loads((folder / "graph.json").read_text()), events


def rows(events: list[dict]) -> list[tuple]:
    return [
        (seq, datetime.fromisoformat(e["ts"]), e["event"], e.get("node"), e) for seq, e in enumerate(events)
    ]


@pytest.mark.parametrize("run_id", SAMPLE_RUNS)
def test_final_states_and_attempt_counts_agree_with_the_reduction(run_id):
    graph, events = sample(run_id)
    reduction, _ = reduce_events(run_id, events, graph)
    timeline = build_timeline(graph, rows(events))
    last = timeline.last_seq
    for node_id, state, attempts in reduction.node_states():
        node = timeline.nodes[node_id]
        assert node.state == state
        assert node.state_at(last) == state
        assert node.attempts_at(last) == attempts


def test_attempts_carry_their_records():
    graph, events = sample("run_flaky")
    api_routes = build_timeline(graph, rows(events)).nodes["api-routes"]
    assert [(a.attempt, a.ok, a.duration_s, a.error) for a in api_routes.attempts] == [
        (1, False, 20.0, "api-routes: exit status 1"),
        (2, False, 22.0, "api-routes: exit status 1"),
        (3, True, 60.0, None),
    ]
    assert all(a.start <= a.end and a.start_seq < a.end_seq for a in api_routes.attempts)
    assert api_routes.deps == ["auth-table", "users-table"]


def test_replay_states_follow_seq_not_ts():
    graph, events = sample("run_same_ts")
    auth = build_timeline(graph, rows(events)).nodes["auth-table"]
    # Failure and retry share one millisecond: only the order of the log says which came last.
    assert len({ts for seq, ts, *_ in rows(events) if seq in {a.start_seq for a in auth.attempts}}) == 1
    states = [state for _seq, state in auth.changes]
    assert states == ["running", "failed", "running", "failed", "running", "done"]
    failed_at = auth.changes[1][0]
    assert auth.state_at(failed_at) == "failed"
    assert auth.state_at(failed_at + 1) == "running"
    assert auth.attempts_at(failed_at) == 1
    assert auth.attempts_at(failed_at + 1) == 2


def test_an_attempt_still_open_when_the_log_stops_has_no_end():
    graph, events = sample("run_crashed")
    timeline = build_timeline(graph, rows(events))
    last = timeline.nodes["api-routes"].attempts[-1]
    assert last.open and last.end is None and last.ok is None
    assert timeline.finished == datetime.fromisoformat(events[-1]["ts"])


def test_an_attempt_without_record_ends_when_its_node_moves_on():
    def at(seconds: int) -> str:
        return f"2026-11-20T10:00:{seconds:02d}.000Z"

    def move(seconds: int, source: str, target: str, attempt: int) -> dict:
        return {
            "ts": at(seconds),
            "event": "transition",
            "node": "a",
            "from": source,
            "to": target,
            "attempt": attempt,
        }

    events = [
        {"ts": at(0), "event": "run_start", "run_id": "r"},
        move(0, "pending", "running", 1),
        move(3, "running", "failed", 1),
        move(3, "failed", "running", 2),
        {"ts": at(5), "event": "run_end", "exit_code": 1},
        move(9, "running", "done", 2),
    ]
    timeline = build_timeline(None, rows(events))
    first, second = timeline.nodes["a"].attempts
    assert (first.end_seq, first.duration_s, first.ok, first.recorded) == (2, 3.0, False, False)
    # run_end closes what is still open; nothing after run_end changes the picture.
    assert (second.end_seq, second.ok) == (4, None)
    assert timeline.nodes["a"].state == "running"
    assert timeline.last_seq == 5


def test_depth_layers_and_the_edges_a_blocked_node_waited_on():
    graph, events = sample("run_failed")
    timeline = build_timeline(graph, rows(events))
    assert timeline.depth() == {
        "schema-init": 0,
        "auth-table": 1,
        "users-table": 1,
        "api-routes": 2,
        "lint": 0,
        "integration-tests": 3,
        "deploy-preview": 4,
    }
    final = {node_id: node.state for node_id, node in timeline.nodes.items()}
    assert timeline.blocking_edges(final) == {
        ("api-routes", "integration-tests"),
        ("integration-tests", "deploy-preview"),
    }


def test_extra_fields_of_graph_nodes_are_kept():
    timeline = build_timeline(INLINE_GRAPH, [])
    assert timeline.nodes["fetch"].extra == {"label": "Fetch sources", "kind": "io"}
    assert timeline.nodes["build"].deps == ["fetch"]


def test_a_cyclic_graph_still_gets_layers():
    graph = {"nodes": [{"id": "a", "deps": ["b"]}, {"id": "b", "deps": ["a"]}, {"id": "c", "deps": ["c"]}]}
    depth = build_timeline(graph, []).depth()
    assert set(depth) == {"a", "b", "c"}


def test_a_late_record_belongs_to_the_attempt_its_node_moved_on_from():
    def at(seconds: int) -> str:
        return f"2026-11-20T10:00:{seconds:02d}.000Z"

    events = [
        {"ts": at(0), "event": "run_start", "run_id": "r"},
        {"ts": at(0), "event": "transition", "node": "a", "from": "pending", "to": "running", "attempt": 1},
        {"ts": at(4), "event": "transition", "node": "a", "from": "running", "to": "failed", "attempt": 1},
        {
            "ts": at(5),
            "event": "node_attempt",
            "node": "a",
            "attempt": 1,
            "ok": False,
            "duration_s": 4.0,
            "exit_code": 2,
        },
    ]
    (only,) = build_timeline(None, rows(events)).nodes["a"].attempts
    assert (only.start_seq, only.end_seq, only.recorded, only.ok, only.exit_code) == (1, 3, True, False, 2)


def test_a_stored_event_missing_a_fact_is_passed_over():
    events = [
        (0, datetime.fromisoformat("2026-11-20T10:00:00+00:00"), "run_start", None, {}),
        (1, datetime.fromisoformat("2026-11-20T10:00:01+00:00"), "transition", "a", {"to": "running"}),
        (2, datetime.fromisoformat("2026-11-20T10:00:02+00:00"), "run_end", None, {"exit_code": 0}),
    ]
    timeline = build_timeline(None, events)
    assert timeline.nodes == {} and timeline.last_seq == 2
    assert timeline.finished == events[2][1]
