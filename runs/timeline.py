"""A run's story, node by node: the attempts (for the Gantt chart and the API) and the state changes
(for replay), read from its events in `seq` order.

Pure Python, no database: the run page, the read API and the tests feed it the same rows. It follows
the reduction's rules: a node's state is the `to` of its last transition, an attempt begins with a
transition `to: "running"`, and nothing after `run_end` changes the picture.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

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
    nodes: dict[str, NodeTimeline] = {}
    for declared in (graph or {}).get("nodes", []):
        extra = {k: v for k, v in declared.items() if k not in ("id", "deps")}
        nodes[declared["id"]] = NodeTimeline(declared["id"], list(declared.get("deps", [])), extra)

    def node_of(node_id: str) -> NodeTimeline:
        if node_id not in nodes:
            nodes[node_id] = NodeTimeline(node_id, [], {})
        return nodes[node_id]

    open_attempts: dict[str, Attempt] = {}
    started = finished = None
    last_seq = -1
    event_times = []
    ended = False
    for seq, ts, kind, node_id, payload in events:
        event_times.append((seq, ts))
        last_seq = seq
        if ended:
            continue
        finished = ts
        if kind == "run_start" and started is None:
            started = ts
        elif kind == "transition" and node_id:
            node = node_of(node_id)
            target, attempt = payload.get("to"), payload.get("attempt")
            current = open_attempts.get(node_id)
            if current is not None and (target != "running" or attempt != current.attempt):
                _close(current, seq, ts, ok=_ok_from_state(target))
                del open_attempts[node_id]
            if target == "running" and node_id not in open_attempts:
                begun = Attempt(node_id, attempt, seq, ts)
                node.attempts.append(begun)
                open_attempts[node_id] = begun
            node.changes.append((seq, target))
        elif kind == "node_attempt" and node_id:
            _record(node_of(node_id), open_attempts, seq, ts, payload)
        elif kind == "run_end":
            ended = True
            for current in open_attempts.values():
                _close(current, seq, ts, ok=None)
            open_attempts.clear()
    if started is None and event_times:
        started = event_times[0][1]
    return Timeline(nodes, started, finished, last_seq, event_times)


def _ok_from_state(state: str | None) -> bool | None:
    return {"done": True, "failed": False}.get(state or "")


def _close(attempt: Attempt, seq: int, ts: datetime, *, ok: bool | None) -> None:
    """Ends an attempt that had no `node_attempt` record when its node moved on."""
    if attempt.recorded:
        return
    attempt.end_seq, attempt.end = seq, ts
    attempt.duration_s = round((ts - attempt.start).total_seconds(), 3)
    attempt.ok = ok


def _record(
    node: NodeTimeline, open_attempts: dict[str, Attempt], seq: int, ts: datetime, payload: dict[str, Any]
) -> None:
    number = payload.get("attempt")
    attempt = next((a for a in reversed(node.attempts) if a.attempt == number and not a.recorded), None)
    if attempt is None:
        # A record with no `to: running` before it: its start is known only from its duration.
        duration = payload.get("duration_s") or 0
        attempt = Attempt(node.node_id, number, seq, _before(ts, duration))
        node.attempts.append(attempt)
    attempt.recorded = True
    attempt.end_seq, attempt.end = seq, ts
    attempt.duration_s = payload.get("duration_s")
    attempt.ok = payload.get("ok")
    attempt.exit_code = payload.get("exit_code")
    attempt.error = payload.get("error")


def _before(ts: datetime, seconds: float) -> datetime:
    """`seconds` before `ts`, or the first representable instant: a long attempt recorded early in
    year 1 began before any time Python holds."""
    try:
        return ts - timedelta(seconds=seconds)
    except OverflowError:
        return datetime.min.replace(tzinfo=ts.tzinfo)
