"""A KAHN producer, simulated: writes runs in the archive format of SPEC section 2.

The project's own source of test data, for the suite, the benchmarks and `manage.py simulate_archive`.
Standard library only and no Django import, so anything can write an archive with it.

A simulated orchestrator walks a DAG with a few workers: an attempt begins with a transition to
`running` (attempt n), ends with a `node_attempt` record and a transition to `done` or `failed`; a
failed attempt with retries left goes `failed → running` with attempt n+1 at the same instant; a node
that exhausts its attempts is `failed` and every node downstream goes `pending → blocked` (attempt 0).
Many events share a `ts` by design, as they do in real logs.

Each run's summary (the fields of summary.json, SPEC section 4) is kept by the orchestrator as it goes,
not computed from the log afterwards: it is an independent account that the reduction must match.
"""

from __future__ import annotations

import heapq
import json
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

# The sample archive's DAG (ingest/demo_archive): a small web application's build.
WEB_APP: dict[str, list[str]] = {
    "schema-init": [],
    "auth-table": ["schema-init"],
    "users-table": ["schema-init"],
    "api-routes": ["auth-table", "users-table"],
    "lint": [],
    "integration-tests": ["api-routes", "lint"],
    "deploy-preview": ["integration-tests"],
}
# Synthetic runs start at this instant plus a fixed step per run, whatever the seed: runs of two seeds
# with the same index start at the same instant.
EPOCH = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
RUN_STEP = timedelta(minutes=7)
PRODUCER = "kahn-scope simulator"
# A node that fails exhausts this many attempts; a flaky one fails 1 or 2 of them, then succeeds.
ATTEMPTS_OF_A_FAILURE = 3
RUN_ID_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_-]{0,63}")
RUN_ID_RULE = "1 to 64 letters, digits, '_' or '-', starting with a letter or digit"

# One attempt's result: whether it succeeds, and optionally how many seconds it takes.
Result = bool | tuple[bool, float]
Edges = Mapping[str, Sequence[str]]


class SimulationError(ValueError):
    """What the simulator was asked cannot be written (the message says what and why)."""


@dataclass
class SimulatedRun:
    run_id: str
    graph: dict[str, Any]
    events: list[dict[str, Any]]
    # The fields of summary.json; None for a run that did not end (a crash, an interrupted producer).
    summary: dict[str, Any] | None


@dataclass
class Synthesis:
    """What `archive_synthesize` wrote: one summary per run, in the order written."""

    summaries: list[dict[str, Any]] = field(default_factory=list)
    events: int = 0


def ts_format(instant: datetime) -> str:
    """RFC 3339 UTC with milliseconds, as producers write it."""
    return instant.strftime("%Y-%m-%dT%H:%M:%S.") + f"{instant.microsecond // 1000:03d}Z"


def event_line(event: Mapping[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n"


def graph_of(edges: Edges) -> dict[str, Any]:
    return {"version": 1, "nodes": [{"id": node, "deps": list(deps)} for node, deps in edges.items()]}


def synthetic_edges(nodes: int, rng: random.Random) -> dict[str, list[str]]:
    """A layered DAG of `nodes` nodes, `n000` … : each depends on up to two of the six before it."""
    edges: dict[str, list[str]] = {}
    for index in range(nodes):
        window = range(max(0, index - 6), index)
        picked = sorted(rng.sample(window, k=min(len(window), rng.choice((0, 1, 1, 2)))))
        edges[f"n{index:03d}"] = [f"n{j:03d}" for j in picked]
    return edges


def plan_draw(edges: Edges, rng: random.Random, *, flake: float, fail: float) -> dict[str, list[bool]]:
    """Per node, the results of its attempts: with probability `fail` it fails every attempt, with
    probability `flake` it fails once or twice and then succeeds; otherwise (absent) it succeeds."""
    plan: dict[str, list[bool]] = {}
    for node in edges:
        draw = rng.random()
        if draw < fail:
            plan[node] = [False] * ATTEMPTS_OF_A_FAILURE
        elif draw < fail + flake:
            plan[node] = [False] * rng.randint(1, 2) + [True]
    return plan


# ---------------------------------------------------------------- the orchestrator


def run_simulate(
    run_id: str,
    edges: Edges,
    plan: Mapping[str, Sequence[Result]] | None = None,
    *,
    start: datetime = EPOCH,
    workers: int = 2,
    complete: bool = True,
) -> SimulatedRun:
    """One run of `edges` (node → its dependencies, in declaration order).

    `plan[node]` lists its attempts' results (a node absent from it succeeds at once); a result may
    carry its duration in seconds, otherwise one is drawn from the run id. With `complete=False` the
    producer stops before `run_end`, as if it died: no summary.
    """
    if workers < 1:
        raise SimulationError(f"a run needs at least one worker (got {workers})")
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise SimulationError(f"run id {run_id!r} is not valid: {RUN_ID_RULE}")
    plan = plan or {}
    unknown = sorted(set(plan) - set(edges))
    if unknown:
        raise SimulationError(f"the plan names nodes the graph lacks: {', '.join(unknown)}")
    empty = sorted(node for node, results in plan.items() if not results)
    if empty:
        raise SimulationError(f"the plan gives no attempt to: {', '.join(empty)}")
    dangling = sorted({dep for deps in edges.values() for dep in deps} - set(edges))
    if dangling:
        raise SimulationError(f"the graph names dependencies that are not nodes: {', '.join(dangling)}")
    durations = random.Random(run_id)
    clock = 0  # milliseconds since `start`: integer, so same-instant events share their `ts` exactly
    events: list[dict[str, Any]] = []

    def emit(event: dict[str, Any]) -> None:
        events.append({"ts": ts_format(start + timedelta(milliseconds=clock)), **event})

    state = dict.fromkeys(edges, "pending")
    attempts = dict.fromkeys(edges, 0)
    ready = [node for node, deps in edges.items() if not deps]
    names = list(edges)
    position = {node: index for index, node in enumerate(names)}
    dependents: dict[str, set[str]] = {node: set() for node in edges}
    for waiting, deps in edges.items():
        for dep in deps:
            dependents[dep].add(waiting)
    running: list[tuple[int, int, str, bool, int]] = []  # (ends at, order, node, ok, ms): a heap
    order = 0

    def attempt_begin(node: str) -> None:
        nonlocal order
        attempts[node] += 1
        results = plan.get(node, (True,))
        result = results[min(attempts[node], len(results)) - 1]
        ok, seconds = result if isinstance(result, tuple) else (result, durations.uniform(2.0, 45.0))
        emit(
            {
                "event": "transition",
                "node": node,
                "from": state[node],
                "to": "running",
                "attempt": attempts[node],
            }
        )
        state[node] = "running"
        order += 1
        took = round(seconds * 1000)
        heapq.heappush(running, (clock + took, order, node, ok, took))

    emit({"event": "run_start", "run_id": run_id, "producer": PRODUCER})
    while ready or running:
        while ready and len(running) < workers:
            attempt_begin(ready.pop(0))
        clock, _, node, ok, took = heapq.heappop(running)
        record = {
            "event": "node_attempt",
            "node": node,
            "attempt": attempts[node],
            "ok": ok,
            "duration_s": took / 1000,
            "exit_code": 0 if ok else 1,
        }
        if not ok:
            record["error"] = f"{node} exited with status 1"
        emit(record)
        outcome = "done" if ok else "failed"
        emit(
            {"event": "transition", "node": node, "from": "running", "to": outcome, "attempt": attempts[node]}
        )
        state[node] = outcome
        if not ok and attempts[node] < len(plan.get(node, ())):
            attempt_begin(node)  # the worker retries at once: the same instant as the failure
            continue
        # Blocking spreads down the DAG whatever the declaration order. Only the dependents of a node
        # that just settled can move; they are looked at in declaration order, sweep after sweep,
        # and one blocked in a sweep moves the dependents declared after it in that same sweep.
        sweep = sorted(position[waiting] for waiting in dependents[node])
        while sweep:
            later: set[int] = set()
            heapq.heapify(sweep)
            seen = set(sweep)
            while sweep:
                here = heapq.heappop(sweep)
                waiting = names[here]
                if state[waiting] != "pending" or waiting in ready:
                    continue
                if any(state[dep] in ("failed", "blocked") for dep in edges[waiting]):
                    emit(
                        {
                            "event": "transition",
                            "node": waiting,
                            "from": "pending",
                            "to": "blocked",
                            "attempt": 0,
                        }
                    )
                    state[waiting] = "blocked"
                    for after in dependents[waiting]:
                        if position[after] > here and position[after] not in seen:
                            seen.add(position[after])
                            heapq.heappush(sweep, position[after])
                        elif position[after] < here:
                            later.add(position[after])
                elif all(state[dep] == "done" for dep in edges[waiting]):
                    ready.append(waiting)
            sweep = sorted(later)

    stuck = [node for node in edges if state[node] == "pending"]
    if stuck:
        raise SimulationError(f"the graph is not a DAG: a cycle holds back {', '.join(stuck)}")
    if not complete:
        return SimulatedRun(run_id, graph_of(edges), events, None)
    clock += 400  # the producer's own wrap-up
    failed_nodes = sorted(node for node, s in state.items() if s == "failed")
    exit_code = 1 if failed_nodes else 0
    emit({"event": "run_end", "exit_code": exit_code})
    ran = {node: count for node, count in attempts.items() if count}
    flake_retries = sum(count - 1 for node, count in ran.items() if state[node] == "done")
    finals = list(state.values())
    summary = {
        "run_id": run_id,
        "started": events[0]["ts"],
        "ended": events[-1]["ts"],
        "duration_s": round(clock / 1000, 3),
        "outcome": "failed" if failed_nodes else "clean_with_flake" if flake_retries else "clean",
        "total_nodes": len(edges),
        "done": finals.count("done"),
        "failed": finals.count("failed"),
        "blocked": finals.count("blocked"),
        "total_attempts": sum(ran.values()),
        "flake_retries": flake_retries,
        "exit_code": exit_code,
        "failed_nodes": failed_nodes,
        "node_attempts": ran,
    }
    return SimulatedRun(run_id, graph_of(edges), events, summary)


# ---------------------------------------------------------------- writing archives


def run_folder(root: Path | str, run_id: str) -> Path:
    return Path(root) / "runs" / run_id


def _refuse_existing(root: Path, run_ids: Sequence[str]) -> None:
    """The log only grows: the simulator never writes over a run that is already in the archive."""
    if root.exists() and not root.is_dir():
        raise SimulationError(f"{root} is not a folder: give an archive root (a folder holding runs/)")
    taken = [run_id for run_id in run_ids if run_folder(root, run_id).exists()]
    if taken:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise SimulationError(
            f"{run_folder(root, taken[0])} already exists{more}: the simulator never writes over a run; "
            "choose another archive, run id or --seed"
        )


def run_write(root: Path | str, run: SimulatedRun) -> None:
    """Writes a whole run at once: graph.json, its log, and summary.json if the run ended."""
    folder = run_folder(root, run.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "graph.json").write_text(json.dumps(run.graph, indent=1))
    with open(folder / "transitions.jsonl", "w", encoding="utf-8", newline="") as log:
        log.writelines(map(event_line, run.events))
    if run.summary is not None:
        (folder / "summary.json").write_text(json.dumps(run.summary, indent=1))


def synthetic_run_id(seed: int, index: int) -> str:
    return f"run_{seed}_{index:06d}"


def archive_synthesize(
    root: Path | str,
    *,
    runs: int,
    nodes: int,
    seed: int = 1,
    flake: float = 0.1,
    fail: float = 0.005,
    workers: int = 3,
) -> Synthesis:
    """Writes `runs` complete runs of one synthetic DAG of `nodes` nodes, deterministic per `seed`.

    Run i is `run_<seed>_<i:06d>` and starts at EPOCH + i x RUN_STEP. Refuses, before writing anything,
    a run that is already in the archive.
    """
    synthesis_check(runs=runs, nodes=nodes, seed=seed, flake=flake, fail=fail)
    root = Path(root)
    _refuse_existing(root, [synthetic_run_id(seed, i) for i in range(runs)])
    rng = random.Random(seed)
    edges = synthetic_edges(nodes, rng)
    synthesis = Synthesis()
    for index in range(runs):
        plan = plan_draw(edges, rng, flake=flake, fail=fail)
        run = run_simulate(
            synthetic_run_id(seed, index), edges, plan, start=EPOCH + index * RUN_STEP, workers=workers
        )
        run_write(root, run)
        synthesis.summaries.append(cast(dict[str, Any], run.summary))  # a complete run has one
        synthesis.events += len(run.events)
    return synthesis


def synthesis_check(*, runs: int, nodes: int, seed: int, flake: float, fail: float) -> None:
    """Refuses parameters that cannot make an archive, naming the one that is wrong."""
    if runs < 1:
        raise SimulationError(f"--runs must be at least 1 (got {runs})")
    if nodes < 1:
        raise SimulationError(f"--nodes must be at least 1 (got {nodes})")
    if seed < 0:
        raise SimulationError(f"--seed must be 0 or more (got {seed}): it is part of the run ids")
    for name, value in (("--flake", flake), ("--fail", fail)):
        if not 0.0 <= value <= 1.0:
            raise SimulationError(f"{name} is a probability between 0 and 1 (got {value})")
    if flake + fail > 1.0:
        raise SimulationError(f"--flake plus --fail is at most 1 (got {flake} + {fail})")


# ---------------------------------------------------------------- a live producer


def _instants(events: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """The events grouped by the instant they happened at, in append order."""
    group: list[dict[str, Any]] = []
    for event in events:
        if group and event["ts"] != group[0]["ts"]:
            yield group
            group = []
        group.append(event)
    if group:
        yield group


def run_live(
    root: Path | str,
    run_id: str,
    *,
    interval: float = 1.0,
    edges: Edges | None = None,
    plan: Mapping[str, Sequence[Result]] | None = None,
    seed: int = 1,
    flake: float = 0.1,
    fail: float = 0.005,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], None] = time.sleep,
    on_line: Callable[[dict[str, Any]], None] | None = None,
) -> SimulatedRun:
    """Appends one run to the archive as a producer does while it runs.

    graph.json first; then the log, one `write` per line (appends of up to PIPE_BUF bytes are atomic),
    the events of one instant together and `interval` seconds between instants; summary.json last,
    once the run has ended. Each event is stamped with the clock as it is written, so the run's
    durations are the ones a reader sees. `edges` defaults to the sample's DAG, `plan` to one drawn
    from `seed` as `archive_synthesize` does. Interrupted (Ctrl-C), the run is left as a crashed
    producer leaves it: no `run_end`, no summary.json.
    """
    if interval < 0:
        raise SimulationError(f"--interval must be 0 or more seconds (got {interval})")
    synthesis_check(runs=1, nodes=1, seed=seed, flake=flake, fail=fail)
    edges = WEB_APP if edges is None else edges
    if plan is None:
        plan = plan_draw(edges, random.Random(seed), flake=flake, fail=fail)
    simulated = run_simulate(run_id, edges, plan)  # validates the run id and the plan
    root = Path(root)
    _refuse_existing(root, [run_id])
    folder = run_folder(root, run_id)
    folder.mkdir(parents=True)
    (folder / "graph.json").write_text(json.dumps(simulated.graph, indent=1))

    written: list[dict[str, Any]] = []
    began: dict[str, datetime] = {}  # node → when its open attempt began, in written time
    log = os.open(folder / "transitions.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for index, group in enumerate(_instants(simulated.events)):
            if index:
                sleep(interval)
            clock = now()
            instant = clock.replace(microsecond=clock.microsecond // 1000 * 1000)
            stamp = ts_format(instant)
            for event in group:
                event = {**event, "ts": stamp}
                if event.get("to") == "running":
                    began[event["node"]] = instant
                elif event["event"] == "node_attempt":
                    event["duration_s"] = round((instant - began[event["node"]]).total_seconds(), 3)
                os.write(log, event_line(event).encode())
                written.append(event)
                if on_line is not None:
                    on_line(event)
    finally:
        os.close(log)

    summary = dict(simulated.summary or {})
    summary.update(started=written[0]["ts"], ended=written[-1]["ts"])
    duration = datetime.fromisoformat(written[-1]["ts"]) - datetime.fromisoformat(written[0]["ts"])
    summary["duration_s"] = round(duration.total_seconds(), 3)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    return SimulatedRun(run_id, simulated.graph, written, summary)
