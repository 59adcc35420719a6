"""What readers see of a run: a row of history (`RunRow`), one run in full (`RunDetail`) and one
node of a run (`RunNodeDetail`).

Frozen values built by one selector each (`runs.selectors.run_rows`, `runs.selectors.run_detail`,
`runs.selectors.run_node_detail`) and shown by the read API, the pages and live messages alike, so a
status, a verdict or a count means the same wherever it appears. Model instances stay as the
database gave them.

The JSON the API and live sockets send is built here, without DRF: live messages leave from the
write path, which must not load the API's machinery. The API's serializers describe that JSON for
the schema, and `runs.api` refuses to start if their fields and `RUN_ROW_SHOWN` part ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from runs.reduction import Diagnostic
from runs.timeline import Attempt, EventRow, Timeline


def timestamp(value: datetime | None) -> str | None:
    """RFC 3339 UTC with milliseconds, as producers write them: `2026-11-20T10:00:00.000Z`."""
    if value is None:
        return None
    if value.tzinfo is not UTC:  # the databases give UTC already: most values skip the conversion
        value = value.astimezone(UTC)
    return value.isoformat(timespec="milliseconds")[:-6] + "Z"  # "+00:00" becomes "Z"


@dataclass(frozen=True, slots=True)
class RunRow:
    """One run of history: its row as the write path stored it, and its status at one moment.

    Every field named like a `Run` column is read from that column (`runs.selectors.RUN_ROW_COLUMNS`
    is derived from this class): a field added here is read, with nothing else to keep in step.
    Those come first, in one run, and the derived ones after: a page of rows is built positionally.
    """

    id: int
    run_id: str
    started: datetime | None
    ended: datetime | None
    duration_s: float | None
    outcome: str | None
    total_nodes: int
    done: int
    failed: int
    blocked: int
    total_attempts: int
    flake_retries: int
    exit_code: int | None
    failed_nodes: list[str]
    node_attempts: dict[str, int]
    complete: bool
    last_event_at: datetime | None
    created_at: datetime
    errors: int
    warnings: int
    infos: int
    # Derived, not stored: they depend on the clock.
    status: str
    # The `died_mid_attempt` diagnostics of an interrupted run; none for any other.
    open_attempts: tuple[Diagnostic, ...] = ()

    @property
    def diagnostic_counts(self) -> dict[str, int]:
        return {"error": self.errors, "warning": self.warnings, "info": self.infos + len(self.open_attempts)}

    @property
    def verdict(self) -> str | None:
        return verdict_word(self.status, self.outcome)

    @property
    def elapsed_s(self) -> float | None:
        """How long the run is known to have lasted: its duration once `run_end` came; before that
        (running, or interrupted), from its start to its last event, which it lasted at least."""
        if self.duration_s is not None:
            return self.duration_s
        if self.started is None or self.last_event_at is None:
            return None
        return max(0.0, (self.last_event_at - self.started).total_seconds())


def verdict_word(status: str, outcome: str | None) -> str | None:
    """What the pages show as one word: the outcome of a complete run, else its status."""
    key = outcome if status == "complete" else status
    return "flaky" if key == "clean_with_flake" else key


@dataclass(frozen=True, slots=True, kw_only=True)
class DiagnosticRow:
    """A diagnostic as readers see it: stored by the write path, or found at read time."""

    code: str
    severity: str
    seq: int | None
    line: int | None
    message: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeDetail:
    """A node of one run: its final state and attempt count (the reduction's), its dependencies
    (the graph's) and its attempts (the timeline's)."""

    id: str
    state: str
    attempt_count: int
    deps: list[str]
    attempts: tuple[Attempt, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunDetail(RunRow):
    """One run with everything its page and the API's detail show."""

    graph: dict[str, Any] | None
    next_seq: int
    import_error: str
    import_failures: int
    import_retry_at: datetime | None
    # In graph order, then order of first appearance.
    nodes: tuple[NodeDetail, ...]
    # Stored ones in the order they were found, then the time-dependent ones.
    diagnostics: tuple[DiagnosticRow, ...]
    # The fields where summary.json disagrees with the reduction, as the write path found them.
    summary_mismatch: dict[str, Any] | None
    # The log as the pictures and replay read it, and the story laid out from it.
    events: tuple[EventRow, ...]
    timeline: Timeline


def node_verdict(state: str, attempts: int) -> str:
    """A node's result in one run as one word: failed, flaked (done after retries), clean (done
    first time), or the state it stopped in (blocked, pending, running)."""
    if state == "done":
        return "flaked" if attempts > 1 else "clean"
    return state


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeNeighbour:
    """A dependency or dependent of a node in one run, with its final state there; `state` is None
    for a dependency the graph names but the run does not have."""

    id: str
    state: str | None
    attempt_count: int

    @property
    def verdict(self) -> str | None:
        return node_verdict(self.state, self.attempt_count) if self.state is not None else None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunNodeDetail:
    """One node in one run: its row in the run, its attempts, its neighbours in the graph, the
    events that name it and the diagnostics about it."""

    run: RunRow
    node: NodeDetail
    # The graph's fields of the node besides its id and deps (labels, kinds).
    extra: dict[str, Any]
    dependencies: tuple[NodeNeighbour, ...]
    dependents: tuple[NodeNeighbour, ...]
    # The first events that name it, in seq order, with their whole payloads; `event_count` in all.
    events: tuple[EventRow, ...]
    event_count: int
    # In seq order; stored ones, and the time-dependent ones of an interrupted run.
    diagnostics: tuple[DiagnosticRow, ...]

    @property
    def verdict(self) -> str:
        return node_verdict(self.node.state, self.node.attempt_count)


# What the API and live sockets show of a row, in this order (SPEC section 6).
RUN_ROW_SHOWN = (
    "run_id",
    "status",
    "outcome",
    "started",
    "ended",
    "duration_s",
    "total_nodes",
    "done",
    "failed",
    "blocked",
    "total_attempts",
    "flake_retries",
    "exit_code",
    "failed_nodes",
    "node_attempts",
    "diagnostic_counts",
    "last_event_at",
)
# And of one run, besides its row.
RUN_DETAIL_SHOWN = (*RUN_ROW_SHOWN, "graph", "nodes", "diagnostics")
_TIMES = ("started", "ended", "last_event_at")
_shown = attrgetter(*RUN_ROW_SHOWN)


def run_row_data(row: RunRow) -> dict[str, Any]:
    """A row as JSON-ready values: what the API lists and live sockets send."""
    data = dict(zip(RUN_ROW_SHOWN, _shown(row), strict=True))
    for name in _TIMES:
        data[name] = timestamp(data[name])
    return data


def attempt_data(attempt: Attempt) -> dict[str, Any]:
    return {
        "attempt": attempt.attempt,
        "start": timestamp(attempt.start),
        "end": timestamp(attempt.end),
        "duration_s": attempt.duration_s,
        "ok": attempt.ok,
        "exit_code": attempt.exit_code,
        "error": attempt.error,
        "start_seq": attempt.start_seq,
        "end_seq": attempt.end_seq,
    }


def run_detail_data(detail: RunDetail) -> dict[str, Any]:
    """One run as the API's detail shows it: its row, DAG, nodes with their attempts, diagnostics."""
    return {
        **run_row_data(detail),
        "graph": detail.graph,
        "nodes": [
            {
                "id": node.id,
                "state": node.state,
                "deps": node.deps,
                "attempts": [attempt_data(attempt) for attempt in node.attempts],
            }
            for node in detail.nodes
        ],
        "diagnostics": [
            {
                "code": d.code,
                "severity": d.severity,
                "seq": d.seq,
                "line": d.line,
                "message": d.message,
                "details": d.details,
            }
            for d in detail.diagnostics
        ],
    }


# ---------------------------------------------------------------- two runs side by side


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSide:
    """A node in one of two runs compared: its final state and attempts (the reduction's), and the
    time its attempts took (the timeline's)."""

    state: str
    attempts: int
    # The sum of its attempts' durations; None when it never ran or an attempt has not ended.
    duration_s: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeComparison:
    """One node of two runs: in both, only in b (added), or only in a (removed)."""

    id: str
    a: NodeSide | None
    b: NodeSide | None

    @property
    def change(self) -> str:
        """added, removed, changed (its state or attempts differ) or same. Durations alone never
        make a node differ: no two runs take the same time."""
        if self.a is None:
            return "added"
        if self.b is None:
            return "removed"
        if (self.a.state, self.a.attempts) != (self.b.state, self.b.attempts):
            return "changed"
        return "same"

    @property
    def differs(self) -> bool:
        return self.change != "same"

    @property
    def attempts_delta(self) -> int | None:
        return self.b.attempts - self.a.attempts if self.a and self.b else None

    @property
    def duration_delta(self) -> float | None:
        if self.a is None or self.b is None or self.a.duration_s is None or self.b.duration_s is None:
            return None
        return round(self.b.duration_s - self.a.duration_s, 3)


@dataclass(frozen=True, slots=True, kw_only=True)
class EventStep:
    """What one event did, as a comparison weighs it: its kind, its node, and the state, attempt
    and result it records. Never its time, duration, error text or run id, which differ between
    any two runs that did the same thing."""

    seq: int
    kind: str
    node: str | None
    source: str | None = None
    target: str | None = None
    attempt: int | None = None
    ok: bool | None = None
    exit_code: int | None = None

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.kind, self.node, self.source, self.target, self.attempt, self.ok, self.exit_code)

    @property
    def words(self) -> str:
        """The event in the run page's words, limited to what was compared."""
        if self.kind == "transition":
            what = f"{self.source} → {self.target} (attempt {self.attempt})"
        elif self.kind == "node_attempt":
            result = "" if self.ok is None else " ok" if self.ok else " failed"
            what = f"attempt {self.attempt}{result}"
        elif self.kind == "run_end":
            what = f"exit code {self.exit_code}"
        else:
            what = ""
        return " ".join(part for part in (self.kind, self.node or "", what) if part)


@dataclass(frozen=True, slots=True, kw_only=True)
class Divergence:
    """Where two runs first did something different: the earliest event at which one node's own
    story (the run's, for events that name no node) differs between the two logs. Each side's
    event there, with its own seq; None where that story had already ended in its log."""

    node: str | None
    # How many of that story's events the two logs share before it.
    shared: int
    a: EventStep | None
    b: EventStep | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunComparison:
    """Run b beside run a (`runs.selectors.run_comparison`): their rows, their nodes one by one,
    and where their logs first part ways."""

    a: RunRow
    b: RunRow
    # Nodes that differ first, then the same ones; each group in a's order, then b's additions.
    nodes: tuple[NodeComparison, ...]
    divergence: Divergence | None
    # The first seq at which the logs differ event by event, the order of parallel nodes' events
    # included; None when they agree all along.
    order_differs_at: int | None
    # Events in each log.
    events_a: int
    events_b: int

    @property
    def differing(self) -> int:
        return sum(1 for node in self.nodes if node.differs)

    @property
    def added(self) -> int:
        return sum(1 for node in self.nodes if node.a is None)

    @property
    def removed(self) -> int:
        return sum(1 for node in self.nodes if node.b is None)
