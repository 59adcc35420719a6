"""The project's run simulator (ingest/simulator.py, `manage.py simulate_archive`): it writes the
archive format of SPEC section 2, and what Scope makes of its archives is what it says it wrote,
row by row: attempts, flake retries, outcome, every field of summary.json; by the module, by the
command, and live, with `manage.py serve` following the archive and pushing the run over /ws/live."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.simulator import (
    WEB_APP,
    SimulationError,
    archive_synthesize,
    plan_draw,
    run_live,
    run_simulate,
    synthetic_edges,
)
from runs.models import Diagnostic, Event, Run
from runs.reduction import reduce_events, validate_event, validate_graph
from tests.conftest import PROJECT, manage, manage_env, scope_server
from tests.runs.live_client import LiveClient

API = "/api/v1"
# A run's result as the commands print it: the history's words, not summary.json's enum values.
WORDS = {"clean": "clean", "clean_with_flake": "flaky", "failed": "failed"}


def rows_by_run(client) -> dict[str, dict]:
    rows, url = {}, f"{API}/runs/?page_size=200"
    while url:
        body = client.get(url).json()
        rows.update((row["run_id"], row) for row in body["results"])
        url = body["next"]
    return rows


def summaries_on_disk(root: Path) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text()) for path in root.glob("runs/*/summary.json")}


def lines_on_disk(root: Path, run_id: str) -> list[str]:
    return (root / "runs" / run_id / "transitions.jsonl").read_text().splitlines(keepends=True)


def simulate(*args: str) -> StringIO:
    out = StringIO()
    call_command("simulate_archive", *args, stdout=out, stderr=StringIO())
    return out


# ---------------------------------------------------------------- the format, without a database


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    nodes=st.integers(1, 30),
    workers=st.integers(1, 4),
    flake=st.floats(0, 0.5),
    fail=st.floats(0, 0.3),
)
def test_every_simulated_run_reduces_to_the_summary_the_simulator_kept(seed, nodes, workers, flake, fail):
    rng = random.Random(seed)
    edges = synthetic_edges(nodes, rng)
    run = run_simulate(f"run_{seed}", edges, plan_draw(edges, rng, flake=flake, fail=fail), workers=workers)
    assert validate_graph(run.graph) == []
    assert [error for event in run.events for error in validate_event(event)] == []
    reduction, diagnostics = reduce_events(run.run_id, run.events, run.graph)
    assert diagnostics == []
    assert reduction.row() == run.summary


def test_a_run_has_the_shapes_of_section_2_retries_blocking_and_shared_instants():
    # api-routes fails all three attempts: its two dependents are blocked; auth-table is flaky.
    plan = {"auth-table": [False, True], "api-routes": [False, False, False]}
    run = run_simulate("run_shapes", WEB_APP, plan)
    events = run.events
    assert events[0]["event"] == "run_start" and events[0]["run_id"] == "run_shapes"
    assert events[-1] == {"ts": events[-1]["ts"], "event": "run_end", "exit_code": 1}
    starts = [(e["node"], e["from"], e["attempt"]) for e in events if e.get("to") == "running"]
    assert [s for s in starts if s[0] == "api-routes"] == [
        ("api-routes", "pending", 1), ("api-routes", "failed", 2), ("api-routes", "failed", 3)
    ]  # fmt: skip
    # A retry begins at the very instant its failure is recorded: only append order tells them apart.
    for index, event in enumerate(events):
        if event.get("from") == "failed":
            assert events[index - 1]["to"] == "failed" and events[index - 1]["ts"] == event["ts"]
    blocked = [(e["node"], e["from"], e["attempt"]) for e in events if e.get("to") == "blocked"]
    assert blocked == [("integration-tests", "pending", 0), ("deploy-preview", "pending", 0)]
    assert max(Counter(e["ts"] for e in events).values()) > 2
    assert run.summary["outcome"] == "failed"
    assert (run.summary["failed_nodes"], run.summary["blocked"]) == (["api-routes"], 2)
    assert (run.summary["total_attempts"], run.summary["flake_retries"]) == (8, 1)


@pytest.mark.parametrize(
    ("edges", "plan", "message"),
    [
        ({"a": ["b"], "b": ["a"], "c": []}, {}, "the graph is not a DAG: a cycle holds back a, b"),
        ({"a": ["ghost"]}, {}, "the graph names dependencies that are not nodes: ghost"),
        ({"a": []}, {"b": [True]}, "the plan names nodes the graph lacks: b"),
        ({"a": []}, {"a": []}, "the plan gives no attempt to: a"),
    ],
)
def test_a_graph_or_plan_that_cannot_run_is_refused_by_name(edges, plan, message):
    with pytest.raises(SimulationError, match=message):
        run_simulate("run_x", edges, plan)


def test_the_same_seed_writes_the_same_archive_and_another_seed_another(tmp_path):
    for name, seed in (("one", 4), ("two", 4), ("three", 5)):
        archive_synthesize(tmp_path / name, runs=3, nodes=10, seed=seed, flake=0.4)
    one, two = (lines_on_disk(tmp_path / name, "run_4_000002") for name in ("one", "two"))
    assert one == two
    assert summaries_on_disk(tmp_path / "three").keys() == {f"run_5_{i:06d}" for i in range(3)}


def test_the_simulator_never_writes_over_a_run(tmp_path):
    archive_synthesize(tmp_path, runs=2, nodes=4, seed=1)
    before = lines_on_disk(tmp_path, "run_1_000001")
    with pytest.raises(SimulationError, match=r"run_1_000000 already exists \(and 1 more\)"):
        archive_synthesize(tmp_path, runs=3, nodes=4, seed=1)
    assert lines_on_disk(tmp_path, "run_1_000001") == before
    assert not (tmp_path / "runs" / "run_1_000002").exists()  # refused before anything was written


def test_a_live_run_writes_the_graph_first_paces_its_instants_and_the_summary_last(tmp_path):
    folder = tmp_path / "runs" / "run_paced"
    seen, pauses = [], []
    # A clock that moves only when the producer sleeps: each instant gets its own `ts`.
    began = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)

    def now():
        return began + timedelta(seconds=sum(pauses))

    def on_line(event):
        # What a reader sees at each line: the graph already there, the summary not yet.
        seen.append(((folder / "graph.json").is_file(), (folder / "summary.json").exists()))

    run = run_live(
        tmp_path, "run_paced", interval=0.25, now=now, sleep=pauses.append, on_line=on_line, flake=0.5
    )
    assert seen == [(True, False)] * len(run.events)
    assert (folder / "summary.json").is_file()
    # One pause between two instants; the events of one instant are written together.
    instants = sorted({e["ts"] for e in run.events})
    assert pauses == [0.25] * (len(instants) - 1)
    assert (instants[0], instants[-1]) == ("2026-12-01T08:00:00.000Z", run.summary["ended"])
    assert run.summary["duration_s"] == 0.25 * len(pauses)
    # An attempt lasts, in the log, as long as it took to write: the clock, not the simulation.
    began_at, durations = {}, []
    for event in run.events:
        if event.get("to") == "running":
            began_at[event["node"]] = datetime.fromisoformat(event["ts"])
        elif event["event"] == "node_attempt":
            took = datetime.fromisoformat(event["ts"]) - began_at[event["node"]]
            durations.append((event["duration_s"], took.total_seconds()))
    assert durations and all(written == took > 0 for written, took in durations)
    assert [json.loads(line) for line in lines_on_disk(tmp_path, "run_paced")] == run.events
    reduction, diagnostics = reduce_events("run_paced", run.events, run.graph)
    assert diagnostics == [] and reduction.row() == run.summary
    assert json.loads((folder / "summary.json").read_text()) == run.summary
    assert run.summary["total_nodes"] == len(WEB_APP) and run.summary["flake_retries"] > 0


def test_an_interrupted_live_run_is_left_as_a_crashed_producer_leaves_it(tmp_path):
    def on_line(event):
        if event["event"] == "node_attempt":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_live(tmp_path, "run_cut", interval=0, on_line=on_line)
    lines = lines_on_disk(tmp_path, "run_cut")
    assert lines and all(line.endswith("\n") for line in lines)
    assert json.loads(lines[-1])["event"] == "node_attempt"
    assert not (tmp_path / "runs" / "run_cut" / "summary.json").exists()


# ---------------------------------------------------------------- through ingest_archive


@pytest.mark.django_db
def test_a_synthetic_archive_imports_to_exactly_what_the_simulator_wrote(client, local_tenant, tmp_path):
    synthesis = archive_synthesize(tmp_path, runs=40, nodes=9, seed=11, flake=0.3, fail=0.08)
    # Not vacuous: every outcome, retries and blocked nodes are among the runs compared.
    outcomes = Counter(summary["outcome"] for summary in synthesis.summaries)
    assert set(outcomes) == {"clean", "clean_with_flake", "failed"}
    assert any(summary["blocked"] for summary in synthesis.summaries)
    call_command("ingest_archive", str(tmp_path), stdout=StringIO(), stderr=StringIO())
    rows = rows_by_run(client)
    assert len(rows) == 40
    for summary in synthesis.summaries:
        row = rows[summary["run_id"]]
        assert {name: row[name] for name in summary} == summary
        assert row["status"] == "complete"
        assert row["diagnostic_counts"] == {"error": 0, "warning": 0, "info": 0}
    assert Event.objects.count() == synthesis.events
    assert summaries_on_disk(tmp_path) == {s["run_id"]: s for s in synthesis.summaries}


@pytest.mark.django_db(transaction=True)
def test_simulate_archive_then_ingest_archive_as_processes(client, local_tenant, tmp_path):
    args = ["--runs", "25", "--nodes", "8", "--seed", "3", "--flake", "0.3", "--fail", "0.05"]
    wrote = manage("simulate_archive", str(tmp_path), *args)
    assert wrote.returncode == 0, wrote.stderr
    summaries = summaries_on_disk(tmp_path)
    outcomes = Counter(summary["outcome"] for summary in summaries.values())
    assert len(summaries) == 25 and set(outcomes) == {"clean", "clean_with_flake", "failed"}
    events = sum(len(lines_on_disk(tmp_path, run_id)) for run_id in summaries)
    # Counted in the history's words: flaky for clean_with_flake.
    counts = f"{outcomes['clean']} clean, {outcomes['clean_with_flake']} flaky, {outcomes['failed']} failed"
    assert wrote.stdout == f"wrote 25 runs ({counts}), {events} events, under {tmp_path / 'runs'}\n"

    imported = manage("ingest_archive", str(tmp_path))
    assert imported.returncode == 0, imported.stderr
    rows = rows_by_run(client)
    assert {run_id: {name: rows[run_id][name] for name in s} for run_id, s in summaries.items()} == summaries
    assert Event.objects.count() == events
    assert not Diagnostic.objects.exists()


@pytest.mark.django_db
def test_a_live_run_written_by_the_command_imports_to_its_summary(client, local_tenant, tmp_path):
    out = simulate(str(tmp_path), "--live", "run_watch", "--interval", "0", "--flake", "0.4", "--seed", "2")
    summary = summaries_on_disk(tmp_path)["run_watch"]
    lines = lines_on_disk(tmp_path, "run_watch")
    shown = out.getvalue().splitlines()
    assert shown[0] == f"writing run run_watch under {tmp_path / 'runs'}, one instant every 0.0 s"
    assert len(shown) == 1 + len(lines) + 1
    assert shown[-1] == (
        f"run run_watch ended: {WORDS[summary['outcome']]}, {summary['total_attempts']} attempts, "
        f"{summary['flake_retries']} flake retries"
    )
    call_command("ingest_archive", str(tmp_path), stdout=StringIO(), stderr=StringIO())
    row = rows_by_run(client)["run_watch"]
    assert {name: row[name] for name in summary} == summary
    assert summary["flake_retries"] > 0 and summary["total_nodes"] == len(WEB_APP)


@pytest.mark.django_db
def test_a_bigger_live_dag_with_nodes(client, local_tenant, tmp_path):
    simulate(str(tmp_path), "--live", "run_wide", "--interval", "0", "--nodes", "15", "--fail", "0")
    summary = summaries_on_disk(tmp_path)["run_wide"]
    assert summary["total_nodes"] == 15 and summary["outcome"] != "failed"
    call_command("ingest_archive", str(tmp_path), stdout=StringIO(), stderr=StringIO())
    row = rows_by_run(client)["run_wide"]
    assert {name: row[name] for name in summary} == summary


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--runs", "0"], "--runs must be at least 1 (got 0)"),
        (["--nodes", "0"], "--nodes must be at least 1 (got 0)"),
        (["--seed", "-3"], "--seed must be 0 or more (got -3)"),
        (["--flake", "1.5"], "--flake is a probability between 0 and 1 (got 1.5)"),
        (["--fail", "-0.1"], "--fail is a probability between 0 and 1 (got -0.1)"),
        (["--flake", "0.7", "--fail", "0.5"], "--flake plus --fail is at most 1 (got 0.7 + 0.5)"),
        (["--interval", "2"], "--interval paces a live run: it needs --live RUN_ID"),
        (["--live", "run_x", "--runs", "3"], "--runs writes many runs at once and --live one run slowly"),
        (["--live", "../escape"], "run id '../escape' is not valid: 1 to 64 letters, digits, '_' or '-'"),
        (["--live", "run_x", "--interval", "-1"], "--interval must be 0 or more seconds (got -1.0)"),
        (["--live", "run_x", "--nodes", "0"], "--nodes must be at least 1 (got 0)"),
        (["--live", "run_x", "--flake", "2"], "--flake is a probability between 0 and 1 (got 2.0)"),
    ],
)
def test_bad_arguments_are_refused_naming_what_is_wrong_and_nothing_is_written(tmp_path, args, message):
    with pytest.raises(CommandError) as refused:
        simulate(str(tmp_path / "archive"), *args)
    assert message in str(refused.value)
    assert not (tmp_path / "archive").exists()


def test_an_existing_run_is_refused_and_left_as_it_was(tmp_path):
    simulate(str(tmp_path), "--live", "run_once", "--interval", "0")
    log = lines_on_disk(tmp_path, "run_once")
    with pytest.raises(CommandError, match="run_once already exists: the simulator never writes over a run"):
        simulate(str(tmp_path), "--live", "run_once", "--interval", "0")
    assert lines_on_disk(tmp_path, "run_once") == log


def test_a_file_in_place_of_the_archive_is_refused(tmp_path):
    (tmp_path / "not-a-folder").write_text("")
    with pytest.raises(CommandError, match="not-a-folder is not a folder: give an archive root"):
        simulate(str(tmp_path / "not-a-folder"), "--runs", "2")


@pytest.mark.django_db(transaction=True)
def test_bad_arguments_as_a_process_exit_non_zero_with_one_clear_line(tmp_path):
    result = manage("simulate_archive", str(tmp_path), "--flake", "0.9", "--fail", "0.2")
    assert result.returncode != 0
    assert result.stderr.strip() == "CommandError: --flake plus --fail is at most 1 (got 0.9 + 0.2)"
    assert not (tmp_path / "runs").exists()


# The producer writes its first instant, then waits far longer than any test: the signal finds it
# mid-run however slow the machine is.
LIVE_STOPPED = ["--live", "run_stopped", "--interval", "600"]


@pytest.mark.django_db(transaction=True)
def test_ctrl_c_stops_a_live_producer_and_leaves_the_run_unfinished(tmp_path):
    producer = subprocess.Popen(
        [sys.executable, str(PROJECT / "manage.py"), "simulate_archive", str(tmp_path), *LIVE_STOPPED],
        env=manage_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a background job: SIGINT ignored on entry, as CI and `make test &` start it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    log = tmp_path / "runs" / "run_stopped" / "transitions.jsonl"
    try:
        # Waits for the first lines; the limit is against hanging, not a measure.
        deadline = time.monotonic() + 60
        while not (log.exists() and log.read_text().count("\n") >= 3) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.exists(), "the producer wrote nothing"
    finally:
        producer.send_signal(signal.SIGINT)
        try:
            out, err = producer.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            producer.kill()  # never left behind, whatever failed
            producer.communicate()
            raise
    assert producer.returncode == 0, err
    assert out.splitlines()[-1] == (
        "stopped: run run_stopped is left unfinished (no summary.json), as a crashed producer leaves it"
    )
    lines = lines_on_disk(tmp_path, "run_stopped")
    # The first instant, whole: run_start and the two root nodes' first attempts.
    assert [json.loads(line).get("node") for line in lines] == [None, "schema-init", "lint"]
    assert all(line.endswith("\n") for line in lines)
    assert not (tmp_path / "runs" / "run_stopped" / "summary.json").exists()


# ---------------------------------------------------------------- live, served


@pytest.mark.django_db(transaction=True)
def test_serve_shows_a_live_simulated_run_complete_over_ws_live(local_tenant, tmp_path):
    """A newcomer's view: `manage.py serve` follows its archive while `manage.py simulate_archive
    --live` writes a run into it; a /ws/live client sees every line and the run complete, its row
    equal to the summary the simulator wrote."""
    archive = tmp_path / "archive"
    env = manage_env(KAHN_ARCHIVE=str(archive))
    with scope_server(env, "--follow-interval", "0.1") as url:

        async def scenario():
            client = await LiveClient.open(url)
            await client.subscribe(run_id="run_newcomer", after_seq=-1)
            await client.subscribe(runs="*")
            producer = await asyncio.create_subprocess_exec(
                sys.executable,
                str(PROJECT / "manage.py"),
                "simulate_archive",  # PATH left out: KAHN_ARCHIVE, the archive serve follows
                "--live",
                "run_newcomer",
                "--interval",
                "0.05",
                "--flake",
                "0.4",
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
            )
            assert await producer.wait() == 0
            await client.until(lambda: any(row["status"] == "complete" for row in client.rows))
            lines = len(lines_on_disk(archive, "run_newcomer"))
            await client.until(lambda: len(client.seqs["run_newcomer"]) >= lines)
            await client.close()
            return client, lines

        client, lines = asyncio.run(scenario())
    assert client.seqs["run_newcomer"] == list(range(lines))
    assert [row["status"] for row in client.rows if row["run_id"] == "run_newcomer"][-1] == "complete"
    summary = summaries_on_disk(archive)["run_newcomer"]
    complete = next(row for row in client.rows if row["status"] == "complete")
    assert {name: complete[name] for name in summary} == summary
    assert summary["flake_retries"] > 0
    assert Run.objects.get(run_id="run_newcomer").complete
