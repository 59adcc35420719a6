"""The reduction of SPEC section 4, pure: no database, fed events the way every writer feeds them."""

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runs.reduction import (
    NODE_STATES,
    ReductionStateError,
    RunReduction,
    reduce_events,
    summary_mismatch,
    ts_utc,
    ts_utc_text,
    validate_event,
    validate_graph,
)
from tests.conftest import PROJECT, SAMPLE_ARCHIVE

# The reference row of SPEC section 2, written out by hand: the contract, not a copy of the fixture.
RUN_FLAKY_ROW = {
    "run_id": "run_flaky",
    "started": "2026-11-20T10:00:00.000Z",
    "ended": "2026-11-20T10:08:01.600Z",
    "duration_s": 481.6,
    "outcome": "clean_with_flake",
    "total_nodes": 7,
    "done": 7,
    "failed": 0,
    "blocked": 0,
    "total_attempts": 11,
    "flake_retries": 4,
    "exit_code": 0,
    "failed_nodes": [],
    "node_attempts": {
        "schema-init": 1,
        "auth-table": 2,
        "users-table": 1,
        "api-routes": 3,
        "lint": 1,
        "integration-tests": 2,
        "deploy-preview": 1,
    },
}

T = "2026-11-20T10:00:00.000Z"


def sample_run(run_id: str) -> tuple[list[dict], dict]:
    folder = SAMPLE_ARCHIVE / "runs" / run_id
    events = []
    for raw in folder.joinpath("transitions.jsonl").read_bytes().split(b"\n")[:-1]:
        try:
            events.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            continue
    return events, json.loads(folder.joinpath("graph.json").read_text())


def t(node: str, source: str, target: str, attempt: int) -> dict:
    return {"ts": T, "event": "transition", "node": node, "from": source, "to": target, "attempt": attempt}


def record(node: str, attempt: int, ok: bool = True) -> dict:
    return {"ts": T, "event": "node_attempt", "node": node, "attempt": attempt, "ok": ok,
            "duration_s": 1.0, "exit_code": 0 if ok else 1}  # fmt: skip


START = {"ts": T, "event": "run_start", "run_id": "r"}
END = {"ts": "2026-11-20T10:00:05.250Z", "event": "run_end", "exit_code": 0}
GRAPH = {"version": 1, "nodes": [{"id": "a", "deps": []}, {"id": "b", "deps": ["a"]}]}


def codes(diagnostics) -> list[str]:
    return [d.code for d in diagnostics]


# ---------------------------------------------------------------- the sample archive


def test_run_flaky_is_the_reference_row_field_by_field():
    reduction, diagnostics = reduce_events("run_flaky", *sample_run("run_flaky"))
    assert reduction.row() == RUN_FLAKY_ROW
    assert diagnostics == []


@pytest.mark.parametrize("run_id", ["run_clean", "run_flaky", "run_failed", "run_same_ts"])
def test_sample_runs_agree_with_the_producer_summary(run_id):
    reduction, _ = reduce_events(run_id, *sample_run(run_id))
    summary = json.loads((SAMPLE_ARCHIVE / "runs" / run_id / "summary.json").read_text())
    assert summary_mismatch(summary, reduction.row()) is None


def test_run_failed_blocks_the_dependents_of_the_failed_node():
    reduction, _ = reduce_events("run_failed", *sample_run("run_failed"))
    row = reduction.row()
    assert (row["outcome"], row["exit_code"], row["failed_nodes"]) == ("failed", 1, ["api-routes"])
    assert row["node_attempts"]["api-routes"] == 3
    states = {node: state for node, state, _ in reduction.node_states()}
    assert [n for n, s in states.items() if s == "blocked"] == ["integration-tests", "deploy-preview"]


def test_run_same_ts_follows_append_order_not_timestamps():
    reduction, _ = reduce_events("run_same_ts", *sample_run("run_same_ts"))
    states = dict((node, (state, attempts)) for node, state, attempts in reduction.node_states())
    assert states["auth-table"] == ("done", 3)
    assert all(state == "done" for state, _ in states.values())
    # Sorting by ts (a stable sort keeps file order for ties) must not be what makes this pass:
    # reversing the equal-ts failure and retry would leave auth-table failed.
    assert reduction.row()["flake_retries"] == 2


def test_run_crashed_is_incomplete_and_died_mid_attempt():
    reduction, diagnostics = reduce_events("run_crashed", *sample_run("run_crashed"))
    assert not reduction.complete
    assert reduction.row()["outcome"] is None
    assert diagnostics == []
    died = reduction.died_mid_attempt()
    assert [(d.code, d.details["node"], d.details["attempt"]) for d in died] == [
        ("died_mid_attempt", "api-routes", 1)
    ]
    assert died[0].severity == "info"


# ---------------------------------------------------------------- diagnostics


def test_missing_run_start_and_events_after_run_end_are_errors():
    reduction, diagnostics = reduce_events("r", [t("a", "pending", "running", 1), record("a", 1), END, START])
    # The late run_start is also earlier than run_end: the producer's clock went back.
    assert codes(diagnostics) == ["missing_run_start", "ts_went_back", "events_after_run_end"]
    by_code = {d.code: d for d in diagnostics}
    assert by_code["missing_run_start"].seq == 0 and by_code["missing_run_start"].severity == "error"
    assert by_code["events_after_run_end"].seq == 3
    # Events after run_end are stored but do not change the finished row.
    assert reduction.row()["started"] is None


def test_attempt_without_record_when_the_node_moves_on_without_one():
    events = [START, t("a", "pending", "running", 1), t("a", "running", "failed", 1),
              t("a", "failed", "running", 2), record("a", 2), t("a", "running", "done", 2), END]  # fmt: skip
    _, diagnostics = reduce_events("r", events, GRAPH)
    assert codes(diagnostics) == ["attempt_without_record"]
    assert diagnostics[0].details == {"node": "a", "attempt": 1, "moved_on_at_seq": 2}
    assert diagnostics[0].seq == 1 and diagnostics[0].severity == "warning"


def test_run_end_closes_open_attempts_without_record():
    _, diagnostics = reduce_events("r", [START, t("a", "pending", "running", 1), END], GRAPH)
    assert codes(diagnostics) == ["attempt_without_record"]


def test_an_attempt_that_has_its_record_did_not_die_mid_attempt():
    reduction, _ = reduce_events("r", [START, t("a", "pending", "running", 1), record("a", 1)], GRAPH)
    assert reduction.died_mid_attempt() == []


def test_an_attempt_still_running_in_a_live_run_is_not_a_problem_yet():
    reduction, diagnostics = reduce_events(
        "r", [START, t("a", "pending", "running", 1), record("b", 1)], GRAPH
    )
    assert diagnostics == []
    assert codes(reduction.died_mid_attempt()) == ["died_mid_attempt"]


def test_invalid_transitions_are_reported_and_still_applied():
    events = [START, t("a", "running", "done", 1), t("a", "done", "failed", 1), END]
    reduction, diagnostics = reduce_events("r", events, GRAPH)
    assert codes(diagnostics) == ["invalid_transition", "invalid_transition"]
    assert diagnostics[0].details["current"] == "pending"
    assert "out of 'done'" in diagnostics[1].message
    assert reduction.row()["failed_nodes"] == ["a"]


def test_unknown_nodes_and_unknown_events():
    events = [START, t("ghost", "pending", "running", 1), {"ts": T, "event": "heartbeat", "cpu": 3}]
    reduction, diagnostics = reduce_events("r", events, GRAPH)
    assert codes(diagnostics) == ["unknown_node", "unknown_event"]
    assert diagnostics[0].details == {"node": "ghost"}
    assert reduction.row()["total_nodes"] == 3  # graph nodes plus any node an event names


def test_a_ts_earlier_than_the_one_before_is_noted_and_changes_nothing_else():
    back = {**record("a", 1), "ts": "2026-11-20T09:59:59.999Z"}
    # The same instant written with an offset is not a step back.
    same = {**t("a", "running", "done", 1), "ts": "2026-11-20T10:59:59.999+01:00"}
    events = [START, t("a", "pending", "running", 1), back, same, END]
    reduction, diagnostics = reduce_events("r", events, GRAPH)
    assert codes(diagnostics) == ["ts_went_back"]
    (went_back,) = diagnostics
    assert (went_back.seq, went_back.severity) == (2, "info")
    assert went_back.details == {"ts": back["ts"], "previous_ts": T, "event": "node_attempt", "node": "a"}
    in_order = [START, t("a", "pending", "running", 1), record("a", 1), t("a", "running", "done", 1), END]
    assert reduction.row() == reduce_events("r", in_order, GRAPH)[0].row()


def test_a_graph_arriving_after_the_events_reports_unknown_nodes_then():
    reduction = RunReduction("r")
    assert reduction.apply(START) == []
    assert reduction.apply(t("ghost", "pending", "running", 1)) == []
    assert codes(reduction.set_graph(GRAPH)) == ["unknown_node"]
    assert [n for n, _, _ in reduction.node_states()] == ["a", "b", "ghost"]


def test_run_start_may_carry_the_graph():
    reduction, _ = reduce_events("r", [dict(START, graph=GRAPH), END])
    assert reduction.row()["total_nodes"] == 2


def test_summary_mismatch_lists_the_differing_fields():
    reduction, _ = reduce_events("run_flaky", *sample_run("run_flaky"))
    summary = dict(RUN_FLAKY_ROW, total_attempts=12, duration_s=481.6000001)
    mismatch = summary_mismatch(summary, reduction.row())
    assert mismatch is not None and mismatch.code == "summary_mismatch"
    assert mismatch.details["fields"] == {"total_attempts": {"summary": 12, "reduction": 11}}


def test_outcome_is_failed_on_a_nonzero_exit_even_when_every_node_is_done():
    events = [START, t("a", "pending", "running", 1), record("a", 1), t("a", "running", "done", 1),
              dict(END, exit_code=3)]  # fmt: skip
    reduction, _ = reduce_events("r", events, {"nodes": [{"id": "a"}]})
    assert reduction.row()["outcome"] == "failed"


# ---------------------------------------------------------------- the event schema


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ([1, 2], ""),
        ({"event": "run_end", "exit_code": 0}, "ts"),
        ({"ts": "2026-11-20 10:00:00", "event": "run_end", "exit_code": 0}, "ts"),
        ({"ts": "yesterday", "event": "run_end", "exit_code": 0}, "ts"),
        ({"ts": T, "event": "", "exit_code": 0}, "event"),
        ({"ts": T, "event": "run_end", "exit_code": "0"}, "exit_code"),
        ({"ts": T, "event": "run_start"}, "run_id"),
        (t("a", "pending", "sleeping", 1), "to"),
        # Not a state, and not a string at all: refused, never a TypeError (a set cannot hold them).
        (t("a", [], "running", 1), "from"),
        (t("a", "pending", {"state": "running"}, 1), "to"),
        (t("a", "pending", "running", -1), "attempt"),
        (t("a", "pending", "running", True), "attempt"),
        (t("", "pending", "running", 1), "node"),
        (t("a\x00b", "pending", "running", 1), "node"),
        (dict(record("a", 1), ok="yes"), "ok"),
        (dict(record("a", 1), duration_s=-1), "duration_s"),
        (dict(record("a", 1), error=5), "error"),
        (dict(START, graph={"nodes": [{"id": "a"}, {"id": "a"}]}), "graph.nodes[1].id"),
        # Bounded by what the event store holds: longer would fail the database, not the schema.
        (t("n" * 201, "pending", "running", 1), "node"),
        (dict(record("n" * 201, 1)), "node"),
        ({"ts": T, "event": "k" * 65}, "event"),
        (dict(START, graph={"nodes": [{"id": "n" * 201}]}), "graph.nodes[0].id"),
    ],
)
def test_schema_errors_name_the_field(event, field):
    errors = validate_event(event)
    assert field in [e.field for e in errors], errors
    assert all(e.message for e in errors)


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        # Already UTC as producers write it: stored as written.
        ("2026-11-20T10:00:00.000Z", "2026-11-20T10:00:00.000Z"),
        ("2026-11-20T10:00:00Z", "2026-11-20T10:00:00Z"),
        ("0001-01-01T00:00:00.123456Z", "0001-01-01T00:00:00.123456Z"),
        # Written out again: past microseconds PostgreSQL would round, and Python truncates.
        ("2026-11-20T10:00:00.9999995Z", "2026-11-20T10:00:00.999999+00:00"),
        ("2026-11-20t10:00:00.000z", "2026-11-20T10:00:00+00:00"),
        ("2026-11-20 10:00:00.000Z", "2026-11-20T10:00:00+00:00"),
        ("2026-11-20T10:00:00.000+23:59", "2026-11-19T10:01:00+00:00"),
        ("2026-11-20T10:00:00.000-00:00", "2026-11-20T10:00:00+00:00"),
    ],
)
def test_a_ts_is_stored_as_the_text_of_its_utc_instant(ts, text):
    assert ts_utc_text(ts) == text
    assert datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC) == ts_utc(ts)


def test_valid_events_and_unknown_kinds_pass_the_schema():
    for event in (
        START,
        END,
        t("a", "pending", "running", 0),
        record("a", 1),
        {"ts": T, "event": "x", "y": 1},
    ):
        assert validate_event(event) == []
    assert validate_graph(GRAPH) == []
    assert validate_graph({"nodes": "a"})[0].field == "nodes"


# ---------------------------------------------------------------- the property: batches never matter

NODES = ["a", "b", "c", "d"]
timestamps = st.integers(0, 59).map(lambda s: f"2026-11-20T10:00:{s:02d}.000Z")
any_state = st.sampled_from(NODE_STATES)
events_strategy = st.one_of(
    st.builds(
        lambda ts, node, source, target, attempt: {
            "ts": ts,
            "event": "transition",
            "node": node,
            "from": source,
            "to": target,
            "attempt": attempt,
        },
        timestamps,
        st.sampled_from([*NODES, "ghost"]),
        any_state,
        any_state,
        st.integers(0, 4),
    ),
    st.builds(
        lambda ts, node, attempt, ok: {
            "ts": ts,
            "event": "node_attempt",
            "node": node,
            "attempt": attempt,
            "ok": ok,
            "duration_s": 1.5,
            "exit_code": 0 if ok else 1,
        },
        timestamps,
        st.sampled_from(NODES),
        st.integers(0, 4),
        st.booleans(),
    ),
    st.builds(
        lambda ts, code: {"ts": ts, "event": "run_end", "exit_code": code}, timestamps, st.integers(0, 2)
    ),
    st.builds(lambda ts: {"ts": ts, "event": "heartbeat"}, timestamps),
    st.builds(lambda ts: {"ts": ts, "event": "run_start", "run_id": "r"}, timestamps),
)


@st.composite
def runs_in_batches(draw):
    events = [START, *draw(st.lists(events_strategy, max_size=60))]
    cuts = sorted(draw(st.lists(st.integers(0, len(events)), max_size=6)))
    graph = draw(st.sampled_from([None, GRAPH, {"nodes": [{"id": n} for n in NODES]}]))
    graph_at = draw(st.integers(0, len(cuts)))
    return events, cuts, graph, graph_at


def comparable(diagnostics) -> list[tuple]:
    # A graph arriving after some events reports unknown nodes when it arrives, not where they
    # appeared: compare those as a set, and everything else in order.
    in_order = [(d.code, d.seq, d.details) for d in diagnostics if d.code != "unknown_node"]
    unknown = sorted(d.details["node"] for d in diagnostics if d.code == "unknown_node")
    return [*in_order, ("unknown_node", unknown)]


@settings(max_examples=300, deadline=None)
@given(runs_in_batches())
def test_incremental_reduction_in_any_batches_equals_the_whole_log(case):
    events, cuts, graph, graph_at = case
    whole, whole_diagnostics = reduce_events("r", events, graph)

    state: dict = {}
    diagnostics = []
    bounds = [0, *cuts, len(events)]
    for i, (start, stop) in enumerate(itertools.pairwise(bounds)):
        # Each batch starts from the state a run row would carry: through JSON, as the database does.
        reduction = RunReduction("r", json.loads(json.dumps(state)))
        if graph is not None and i == graph_at:
            diagnostics.extend(reduction.set_graph(graph))
        for event in events[start:stop]:
            diagnostics.extend(reduction.apply(event))
        state = reduction.to_state()
    final = RunReduction("r", state)
    if graph is not None and graph_at >= len(bounds) - 1:
        diagnostics.extend(final.set_graph(graph))

    assert final.row() == whole.row()
    assert final.node_states() == whole.node_states()
    assert comparable(diagnostics) == comparable(whole_diagnostics)
    assert final.died_mid_attempt() == whole.died_mid_attempt()


def test_state_stays_small_however_long_the_log():
    reduction = RunReduction("r")
    reduction.set_graph(GRAPH)
    reduction.apply(START)
    for attempt in range(1, 2001):
        reduction.apply(t("a", "pending" if attempt == 1 else "failed", "running", attempt))
        reduction.apply(record("a", attempt, ok=False))
        reduction.apply(t("a", "running", "failed", attempt))
    assert len(json.dumps(reduction.to_state())) < 500
    assert reduction.next_seq == 6001


def test_the_state_carries_its_version_and_another_version_is_refused():
    reduction = RunReduction("r")
    reduction.set_graph(GRAPH)
    reduction.apply(START)
    state = reduction.to_state()
    assert state["version"] == RunReduction.STATE_VERSION
    assert RunReduction("r", state).node_states() == reduction.node_states()
    # A state stored before states carried a version reads as version 1.
    unversioned = {k: v for k, v in state.items() if k != "version"}
    assert RunReduction("r", unversioned).to_state() == state
    with pytest.raises(ReductionStateError, match="version 2"):
        RunReduction("r", {**state, "version": 2})


def test_the_sample_archive_is_in_the_project_with_its_six_runs():
    # Guard: the sample tests above read these files; none of them may quietly go missing.
    runs = Path(SAMPLE_ARCHIVE, "runs")
    assert sorted(folder.name for folder in runs.iterdir()) == [
        "run_clean", "run_crashed", "run_dirty", "run_failed", "run_flaky", "run_same_ts"
    ]  # fmt: skip
    for folder in runs.iterdir():
        assert (folder / "transitions.jsonl").stat().st_size > 0 and (folder / "graph.json").is_file()
    # A summary exactly where the run ended (SPEC section 3: the crashed and the dirty run have none).
    assert sorted(f.parent.name for f in runs.glob("*/summary.json")) == [
        "run_clean", "run_failed", "run_flaky", "run_same_ts"
    ]  # fmt: skip
    assert SAMPLE_ARCHIVE.is_relative_to(PROJECT)
