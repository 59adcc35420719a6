"""A run's story, node by node: the attempts (for the Gantt chart and the API) and the state changes
(for replay), laid out in time from its events in `seq` order.

Pure Python, no database: the run page, the read API and the tests feed it the same rows. What
happened is the reduction's to say (`RunReduction.replay` keeps its history of a log): when an
attempt begins and ends, which record belongs to it, and that nothing after `run_end` changes the
picture. Here it is only placed on the time axis.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from runs.reduction import AttemptFacts, RunReduction

# (seq, ts, kind, node, payload): one stored event.
EventRow = tuple[int, datetime, str, "str | None", dict[str, Any]]


@dataclass(slots=True)
class Attempt:
    node: str
    attempt: int
    start_seq: int
    start: datetime
    # Set when the attempt is over: by its `node_attempt` record, or by the node moving on without one.
    end_seq: int | None = None
    end: datetime | None = None
    duration_s: float | None = None
    ok: bool | None = None
    exit_code: int | None = None
    error: str | None = None
    recorded: bool = False

    @property
    def open(self) -> bool:
        return self.end_seq is None


@dataclass(slots=True)
class NodeTimeline:
    node_id: str
    deps: list[str]
    extra: dict[str, Any]
    # (seq, state) each time a transition set the node's state, in seq order.
    changes: list[tuple[int, str]] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)

    def state_at(self, seq: int) -> str:
        state = "pending"
        for changed_at, new_state in self.changes:
            if changed_at > seq:
                break
            state = new_state
        return state

    def attempts_at(self, seq: int) -> int:
        """The highest attempt begun by event `seq`, as `node_attempts` counts them."""
        return max((a.attempt for a in self.attempts if a.start_seq <= seq), default=0)

    @property
    def state(self) -> str:
        return self.changes[-1][1] if self.changes else "pending"


@dataclass(slots=True)
class Timeline:
    nodes: dict[str, NodeTimeline]
    started: datetime | None
    # The last moment the picture covers: run_end, or the last event of a run still open.
    finished: datetime | None
    last_seq: int
    # Event seq -> ts, for placing a replay position on the time axis.
    event_times: list[tuple[int, datetime]]

    def depth(self) -> dict[str, int]:
        """Each node's layer: 0 for nodes with no dependencies, else one more than its deepest dep.

        Walked with a stack, not recursion: a chain as long as a graph may be (10,000 nodes) is
        deeper than Python's recursion limit. A cycle (a malformed graph) or an unknown dep ends
        the walk along that path.
        """
        depth: dict[str, int] = {}
        for root in self.nodes:
            if root in depth:
                continue
            on_path = {root}
            stack = [(root, iter(self._deps_of(root)))]
            while stack:
                node_id, deps = stack[-1]
                dep = next(deps, None)
                if dep is None:
                    stack.pop()
                    on_path.discard(node_id)
                    depth[node_id] = 1 + max(
                        (depth[d] for d in self._deps_of(node_id) if d in depth and d not in on_path),
                        default=-1,
                    )
                elif dep not in depth and dep not in on_path:
                    on_path.add(dep)
                    stack.append((dep, iter(self._deps_of(dep))))
        return depth

    def _deps_of(self, node_id: str) -> list[str]:
        node = self.nodes.get(node_id)
        return [d for d in node.deps if d in self.nodes] if node else []

    def blocking_edges(self, states: dict[str, str]) -> set[tuple[str, str]]:
        """Edges (dep, node) a blocked node waited on, traced back to the failed nodes behind it."""
        return {
            (dep, node.node_id)
            for node in self.nodes.values()
            if states.get(node.node_id) == "blocked"
            for dep in node.deps
            if states.get(dep) in ("failed", "blocked")
        }


def build_timeline(graph: dict[str, Any] | None, events: Iterable[EventRow]) -> Timeline:
    reduction = RunReduction("", history=True)
    if graph is not None:
        reduction.set_graph(graph)
    replay = reduction.replay
    event_times = []
    for seq, ts, kind, node, facts in events:
        event_times.append((seq, ts))
        replay(seq, ts, kind, node, facts)
    history = reduction.history
    assert history is not None
    times = dict(event_times)

    declared = {node["id"]: node for node in (graph or {}).get("nodes", [])}
    nodes: dict[str, NodeTimeline] = {}
    for node_id, _state, _attempts in reduction.node_states():
        node = declared.get(node_id, {})
        extra = {k: v for k, v in node.items() if k not in ("id", "deps")}
        told = history.nodes.get(node_id)
        nodes[node_id] = NodeTimeline(
            node_id,
            list(node.get("deps", [])),
            extra,
            changes=told.changes if told else [],
            attempts=[_attempt(facts, times) for facts in told.attempts] if told else [],
        )

    started = finished = None
    if event_times:
        started = times[history.run_start_seq] if history.run_start_seq is not None else event_times[0][1]
        finished = times[history.run_end_seq] if history.run_end_seq is not None else event_times[-1][1]
    last_seq = event_times[-1][0] if event_times else -1
    return Timeline(nodes, started, finished, last_seq, event_times)


def _attempt(facts: AttemptFacts, times: dict[int, datetime]) -> Attempt:
    end = times[facts.end_seq] if facts.end_seq is not None else None
    if facts.unannounced:
        # Begun by its record: its start is known only from its duration.
        start = _before(times[facts.start_seq], facts.duration_s or 0)
    else:
        start = times[facts.start_seq]
    duration_s = facts.duration_s
    if not facts.recorded and end is not None:
        duration_s = round((end - start).total_seconds(), 3)
    return Attempt(
        node=facts.node,
        attempt=facts.attempt,
        start_seq=facts.start_seq,
        start=start,
        end_seq=facts.end_seq,
        end=end,
        duration_s=duration_s,
        ok=facts.ok,
        exit_code=facts.exit_code,
        error=facts.error,
        recorded=facts.recorded,
    )


def _before(ts: datetime, seconds: float) -> datetime:
    """`seconds` before `ts`, or the first representable instant: a long attempt recorded early in
    year 1 began before any time Python holds."""
    try:
        return ts - timedelta(seconds=seconds)
    except OverflowError:
        return datetime.min.replace(tzinfo=ts.tzinfo)
