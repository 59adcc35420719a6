"""Reads: every query the read API and the pages make, scoped by the tenant they are given.

Each selector takes the tenant as a keyword argument and filters by it first, so a caller cannot
read another tenant's rows by passing the wrong run id. Status is derived, never stored: a run
without `run_end` turns from running to interrupted by the clock alone, so it is computed here, in
SQL for filtering and in Python for rows already loaded (`Run.status_at`), from one cutoff.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from itertools import zip_longest
from operator import attrgetter
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Count, Exists, F, FloatField, OuterRef, Q, QuerySet, Sum, TextField
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone

from runs.models import Diagnostic, Event, Run, RunNode, run_status
from runs.read_model import (
    DiagnosticRow,
    Divergence,
    EventStep,
    NodeComparison,
    NodeDetail,
    NodeNeighbour,
    NodeSide,
    RunComparison,
    RunDetail,
    RunNodeDetail,
    RunRow,
    node_verdict,
    verdict_word,
)
from runs.reduction import AttemptFacts, RunReduction, run_id_valid
from runs.timeline import EventRow, NodeTimeline, build_timeline
from tenants.models import Tenant

# SPEC section 2. A run id that cannot exist is not looked up: PostgreSQL refuses NUL characters.

STATUSES = ("complete", "running", "interrupted")
OUTCOMES = ("clean", "clean_with_flake", "failed")

# What a history row reads: the columns `RunRow` names, never the reduction's working state or the
# producer's files, which are many times larger.
_RUN_COLUMNS = frozenset(f.name for f in Run._meta.concrete_fields)
ROW_FIELDS = tuple(f.name for f in fields(RunRow))
RUN_ROW_COLUMNS = tuple(name for name in ROW_FIELDS if name in _RUN_COLUMNS)
if ROW_FIELDS[: len(RUN_ROW_COLUMNS)] != RUN_ROW_COLUMNS:
    raise ImproperlyConfigured("RunRow's fields read from Run columns must come first, before derived ones")
# What a run's detail reads: the columns `RunDetail` names, and the reduction's state, which it asks
# for the nodes' final states and the open attempts.
RUN_DETAIL_COLUMNS = (
    *RUN_ROW_COLUMNS,
    *(f.name for f in fields(RunDetail) if f.name in _RUN_COLUMNS and f.name not in RUN_ROW_COLUMNS),
    "reduction_state",
)


@dataclass(frozen=True, slots=True)
class RunFilters:
    status: str | None = None
    outcome: str | None = None
    q: str | None = None
    started_after: datetime | None = None
    started_before: datetime | None = None
    node: str | None = None
    failed_node: str | None = None


@dataclass(frozen=True, slots=True)
class RunPosition:
    """Where a page of history starts or ends: newest first is `started` descending, then `id`."""

    started: datetime | None
    id: int


def stale_cutoff(now: datetime) -> datetime:
    return now - timedelta(seconds=settings.KAHN_STALE_AFTER)


def status_is(status: str, now: datetime) -> Q:
    """`Run.status_at` as a filter: a run without `run_end` is interrupted once its last event is stale."""
    if status == "complete":
        return Q(complete=True)
    cutoff = stale_cutoff(now)
    if status == "interrupted":
        return Q(complete=False) & (
            Q(last_event_at__lt=cutoff) | Q(last_event_at=None, created_at__lt=cutoff)
        )
    return Q(complete=False) & (Q(last_event_at__gte=cutoff) | Q(last_event_at=None, created_at__gte=cutoff))


def run_list(*, tenant: Tenant, filters: RunFilters, now: datetime | None = None) -> QuerySet[Run]:
    """The tenant's runs matching `filters`, with the columns a history row shows; not yet ordered."""
    now = now or timezone.now()
    runs = Run.objects.filter(tenant=tenant).only(*RUN_ROW_COLUMNS)
    if filters.status:
        runs = runs.filter(status_is(filters.status, now))
    if filters.outcome:
        runs = runs.filter(outcome=filters.outcome)
    if filters.q:
        runs = runs.filter(run_id__icontains=filters.q)
    if filters.started_after:
        runs = runs.filter(started__gte=filters.started_after)
    if filters.started_before:
        runs = runs.filter(started__lt=filters.started_before)
    if filters.node:
        runs = runs.filter(_has_node(tenant, filters.node))
    if filters.failed_node:
        runs = runs.filter(_has_node(tenant, filters.failed_node, state="failed"))
    return runs


def _has_node(tenant: Tenant, node_id: str, **extra: Any) -> Exists:
    return Exists(RunNode.objects.filter(tenant=tenant, run=OuterRef("pk"), node_id=node_id, **extra))


def run_list_page(
    runs: QuerySet[Run], *, position: RunPosition | None, backwards: bool, limit: int
) -> list[Run]:
    """Up to `limit` runs after `position` newest first (or before it, oldest first, `backwards`).

    A keyset on (`started`, `id`), not an offset: a page costs the same at the end of a long history,
    and runs arriving meanwhile do not shift it. A run with no `started` (no `run_start` yet) sorts as
    the newest, which is where the database's index on `started DESC` already puts it. Each bound on
    `started` is also stated as a plain range, so the index starts the scan at the position instead
    of filtering its way there.
    """
    if not backwards:
        newest_first = runs.order_by(F("started").desc(nulls_first=True), F("id").desc())
        return list(newest_first.filter(_older_than(position))[:limit] if position else newest_first[:limit])
    oldest_first = runs.order_by(F("started").asc(nulls_last=True), F("id").asc())
    if position is None:
        return list(oldest_first[:limit])
    started, pk = position.started, position.id
    if started is None:
        return list(oldest_first.filter(started=None, id__gt=pk)[:limit])
    newer = list(oldest_first.filter(Q(started__gte=started), Q(started__gt=started) | Q(id__gt=pk))[:limit])
    if len(newer) < limit:
        # Past the newest run that started come those that have not: they are newer still.
        newer += oldest_first.filter(started=None)[: limit - len(newer)]
    return newer


def _older_than(position: RunPosition) -> Q:
    started, pk = position.started, position.id
    if started is None:
        return Q(started=None, id__lt=pk) | Q(started__isnull=False)
    return Q(started__lte=started) & (Q(started__lt=started) | Q(id__lt=pk))


def _reduction(run_id: str, state: dict[str, Any]) -> RunReduction:
    """The reducer's own reading of the state it stored: the one way readers see into it."""
    return RunReduction(run_id, state)


_row_values = attrgetter(*RUN_ROW_COLUMNS)


def run_rows(runs: Sequence[Run], *, tenant: Tenant | None, now: datetime) -> list[RunRow]:
    """The history rows of runs read by `run_list` (or as the write path holds them): each with its
    status at `now`, and the `died_mid_attempt` diagnostics of an interrupted run.

    Those depend on the clock, so they are not stored; an interrupted run's reduction state, if not
    read with it, takes one query for the whole page, none when the page holds no interrupted run.
    Runs that carry their state (the write path's) need no query and no `tenant`.
    """
    if not runs:
        return []
    # Runs of one read: they all carry the state, or none does.
    carried = "reduction_state" not in runs[0].get_deferred_fields()
    statuses = [run.status_at(now) for run in runs]
    states: dict[int, dict[str, Any]] = {}
    if carried:
        states = {
            run.pk: run.reduction_state for run, s in zip(runs, statuses, strict=True) if s == "interrupted"
        }
    elif "interrupted" in statuses:
        if tenant is None:
            raise ValueError("reading interrupted runs' reduction state needs their tenant")
        missing = [run.pk for run, s in zip(runs, statuses, strict=True) if s == "interrupted"]
        states = dict(Run.objects.filter(tenant=tenant, pk__in=missing).values_list("pk", "reduction_state"))
    rows = []
    for run, status in zip(runs, statuses, strict=True):
        state = states.get(run.pk) if status == "interrupted" else None
        open_attempts = tuple(_reduction(run.run_id, state).died_mid_attempt()) if state is not None else ()
        # The stored columns in RunRow's order (checked at import), then what the moment adds.
        rows.append(RunRow(*_row_values(run), status, open_attempts))  # type: ignore[call-arg]
    return rows


def run_get(*, tenant: Tenant, run_id: str) -> Run:
    """One run, as stored, for the API's endpoints that answer from its columns (graph, summary,
    events); raises `Run.DoesNotExist`."""
    if not run_id_valid(run_id):
        raise Run.DoesNotExist(run_id)
    return Run.objects.get(tenant=tenant, run_id=run_id)


def run_detail(*, tenant: Tenant, run_id: str, now: datetime | None = None) -> RunDetail:
    """One run with everything its page and the API show: its row, graph, nodes (state, deps and
    attempts, in graph order), diagnostics, and its log's story; raises `Run.DoesNotExist`."""
    if not run_id_valid(run_id):
        raise Run.DoesNotExist(run_id)
    run = Run.objects.only(*RUN_DETAIL_COLUMNS).get(tenant=tenant, run_id=run_id)
    reduction = _reduction(run.run_id, run.reduction_state)
    (row,) = run_rows([run], tenant=tenant, now=now or timezone.now())
    events = run_event_facts(tenant=tenant, run=run.pk)
    timeline = build_timeline(run.graph, events)
    nodes = []
    for node_id, state, attempt_count in reduction.node_states():
        # A node the reduction knows from a graph the timeline does not have: no history.
        node = timeline.nodes.setdefault(node_id, NodeTimeline(node_id, [], {}))
        nodes.append(
            NodeDetail(
                id=node_id,
                state=state,
                attempt_count=attempt_count,
                deps=node.deps,
                attempts=tuple(node.attempts),
            )
        )
    stored = [
        DiagnosticRow(code=code, severity=severity, seq=seq, line=line, message=message, details=details)
        for code, severity, seq, line, message, details in Diagnostic.objects.filter(tenant=tenant, run=run)
        .order_by("id")
        .values_list("code", "severity", "seq", "line", "message", "details")
    ]
    computed = [
        DiagnosticRow(
            code=d.code, severity=d.severity, seq=d.seq, line=d.line, message=d.message, details=d.details
        )
        for d in row.open_attempts
    ]
    mismatch = next((d.details.get("fields") for d in reversed(stored) if d.code == "summary_mismatch"), None)
    return RunDetail(
        **{name: getattr(row, name) for name in ROW_FIELDS},
        **{
            name: getattr(run, name)
            for name in RUN_DETAIL_COLUMNS
            if name not in ROW_FIELDS and name != "reduction_state"
        },
        nodes=tuple(nodes),
        diagnostics=tuple(diagnostics_in_log_order([*stored, *computed])),
        summary_mismatch=mismatch,
        events=tuple(events),
        timeline=timeline,
    )


def diagnostics_in_log_order(diagnostics: Iterable[DiagnosticRow]) -> list[DiagnosticRow]:
    """Diagnostics where they stand in the log: by `seq`; one with only a line number (a malformed
    line of an archive, which is no event) before the event that followed that line; those with no
    place (summary.json's, a late graph's) last. Ties keep the order they were found in.

    An archive's lines are its events and its malformed lines, in order, so the events before line
    L are the L - 1 lines before it less the malformed ones among them.
    """
    diagnostics = list(diagnostics)
    malformed = sorted(d.line for d in diagnostics if d.code == "malformed_line" and d.line is not None)

    def place(d: DiagnosticRow) -> tuple[int, int, int]:
        if d.seq is not None:
            return (0, d.seq, 1)
        if d.line is None:
            return (1, 0, 0)
        if d.code == "malformed_line":
            return (0, d.line - 1 - bisect_left(malformed, d.line), 0)
        # Found after reading lines 1 to `line` (a log that shrank): after their events.
        return (0, d.line - bisect_right(malformed, d.line), 0)

    return sorted(diagnostics, key=place)


class NodeNotInRun(LookupError):
    """The run exists, and has no node of that name."""


# The events a node's page lists; the run's log, filtered by the node, pages through the rest.
NODE_EVENTS_SHOWN = 200


def run_node_detail(
    *, tenant: Tenant, run_id: str, node_id: str, now: datetime | None = None
) -> RunNodeDetail:
    """One node in one run: its state and attempts (by the reduction's rules, as the run's page
    draws them), its dependencies' and dependents' states, the events that name it and the
    diagnostics about it. Raises `Run.DoesNotExist`, or `NodeNotInRun`.

    Only the node's own events are replayed, with the run's start and end: a node's attempts
    depend on nothing else, so a node of a 2,000-node run costs its own events, not the run's.
    """
    if not run_id_valid(run_id):
        raise Run.DoesNotExist(run_id)
    run = Run.objects.only(*RUN_ROW_COLUMNS, "graph", "reduction_state").get(tenant=tenant, run_id=run_id)
    (row,) = run_rows([run], tenant=tenant, now=now or timezone.now())
    states = {
        node: (state, attempts)
        for node, state, attempts in _reduction(run_id, run.reduction_state).node_states()
    }
    if node_id not in states:
        raise NodeNotInRun(node_id)
    facts = _event_facts(
        Event.objects.filter(tenant=tenant, run=run).filter(
            Q(node=node_id) | Q(kind__in=("run_start", "run_end"))
        )
    )
    story = build_timeline(None, facts).nodes.get(node_id)
    declared = {node["id"]: node for node in (run.graph or {}).get("nodes", [])}
    graph_node = declared.get(node_id, {})
    deps = list(graph_node.get("deps", []))
    state, attempt_count = states[node_id]

    def neighbour(other: str) -> NodeNeighbour:
        other_state, other_attempts = states.get(other, (None, 0))
        return NodeNeighbour(id=other, state=other_state, attempt_count=other_attempts)

    events = run_events(tenant=tenant, run=run, node=node_id, limit=NODE_EVENTS_SHOWN)
    stored = [
        DiagnosticRow(code=code, severity=severity, seq=seq, line=line, message=message, details=details)
        for code, severity, seq, line, message, details in Diagnostic.objects.filter(
            tenant=tenant, run=run, details__node=node_id
        )
        .order_by("id")
        .values_list("code", "severity", "seq", "line", "message", "details")
    ]
    computed = [
        DiagnosticRow(
            code=d.code, severity=d.severity, seq=d.seq, line=d.line, message=d.message, details=d.details
        )
        for d in row.open_attempts
        if d.details.get("node") == node_id
    ]
    return RunNodeDetail(
        run=row,
        node=NodeDetail(
            id=node_id,
            state=state,
            attempt_count=attempt_count,
            deps=deps,
            attempts=tuple(story.attempts) if story else (),
        ),
        extra={k: v for k, v in graph_node.items() if k not in ("id", "deps")},
        dependencies=tuple(neighbour(dep) for dep in deps),
        dependents=tuple(
            neighbour(other) for other, node in declared.items() if node_id in node.get("deps", ())
        ),
        events=tuple(events.values_list("seq", "ts", "kind", "node", "payload")),
        event_count=sum(1 for _seq, _ts, _kind, node, _facts in facts if node == node_id),
        diagnostics=tuple(diagnostics_in_log_order([*stored, *computed])),
    )


def run_events(
    *,
    tenant: Tenant,
    run: Run | int,
    after_seq: int = -1,
    limit: int | None = None,
    node: str | None = None,
    kind: str | None = None,
) -> QuerySet[Event]:
    """A run's events in `seq` (append) order, those naming `node` or of `kind` when given; `ts`
    never orders anything."""
    events = Event.objects.filter(tenant=tenant, run=run, seq__gt=after_seq).order_by("seq")
    if node is not None:
        events = events.filter(node=node)
    if kind is not None:
        events = events.filter(kind=kind)
    return events[:limit] if limit is not None else events


def run_event_kinds(*, tenant: Tenant, run: Run | int) -> list[str]:
    """The kinds of event a run's log holds, sorted: what its log can be filtered by."""
    kinds = Event.objects.filter(tenant=tenant, run=run).order_by().values_list("kind", flat=True)
    return sorted(set(kinds.distinct()))


def run_event_names_node(*, tenant: Tenant, run: Run | int, node: str) -> bool:
    """Whether an event of the run names `node` (of any kind: an unknown kind may name one too)."""
    return "\x00" not in node and Event.objects.filter(tenant=tenant, run=run, node=node).exists()


def run_stored_next_seq(*, tenant: Tenant, run_id: str) -> int:
    """The seq the run's next event will have: 0 for a run not stored (yet)."""
    next_seq = Run.objects.filter(tenant=tenant, run_id=run_id).values_list("next_seq", flat=True).first()
    return next_seq or 0


def run_events_after(*, tenant: Tenant, run_id: str, after_seq: int, limit: int) -> list[tuple[int, Any]]:
    """Up to `limit` events of a run (by its id) after `after_seq`, as (seq, payload), in seq order;
    none for a run not stored (yet)."""
    return list(
        Event.objects.filter(tenant=tenant, run__tenant=tenant, run__run_id=run_id, seq__gt=after_seq)
        .order_by("seq")
        .values_list("seq", "payload")[:limit]
    )


# What the timeline and the replay read of each event; the rest of a payload stays in the database.
EVENT_FACTS = ("from", "to", "attempt", "ok", "duration_s", "exit_code", "error", "producer")
_NUMBERS = {"attempt": int, "exit_code": int, "duration_s": float}


def run_event_facts(*, tenant: Tenant, run: Run | int) -> list[EventRow]:
    """The whole log as (seq, ts, kind, node, facts), with only `EVENT_FACTS` taken from each payload.

    The database extracts those few keys, so a long run's payloads are neither shipped nor parsed
    whole: on a 2,000-event run that is most of the page's time.
    """
    return _event_facts(Event.objects.filter(tenant=tenant, run=run))


def _event_facts(events: QuerySet[Event]) -> list[EventRow]:
    names = {f"fact_{i}": name for i, name in enumerate(EVENT_FACTS)}
    rows = (
        events.order_by("seq")
        # The time as text, parsed by Python's own ISO parser: Django's reader for PostgreSQL's
        # timestamps is pure Python, and on a long log it took more time than the query.
        .annotate(ts_text=Cast("ts", TextField()))
        .annotate(**{alias: KT(f"payload__{name}") for alias, name in names.items()})
        .values_list("seq", "ts_text", "kind", "node", *names)
    )
    return [(seq, _instant(ts), kind, node, _facts(values)) for seq, ts, kind, node, *values in rows]


def _instant(text: str) -> datetime:
    """A stored time read as text: PostgreSQL writes its offset, SQLite stores UTC without one."""
    instant = datetime.fromisoformat(text)
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=UTC)


def _facts(values: list[Any]) -> dict[str, Any]:
    # Most facts are absent from most events: those present first, then the few that need a type.
    facts = {name: value for name, value in zip(EVENT_FACTS, values, strict=True) if value is not None}
    if "ok" in facts:
        # PostgreSQL's ->> gives JSON's text ('true'), SQLite's the value (1).
        facts["ok"] = facts["ok"] in ("true", 1, True)
    for name, kind in _NUMBERS.items():
        if name in facts:
            try:
                facts[name] = kind(facts[name])
            except ValueError:
                del facts[name]  # an unknown event kind may use these names for anything
    return facts


@dataclass(frozen=True, slots=True)
class NodeRun:
    """One run of a node, for the node-across-runs page."""

    run_id: str
    started: datetime | None
    run_outcome: str | None
    run_complete: bool
    state: str
    attempts: int
    # complete, running or interrupted (`Run.status_at`) when read.
    run_status: str = "complete"

    @property
    def run_verdict(self) -> str | None:
        """The run's result in the history's words: clean, flaky, failed, running, interrupted."""
        return verdict_word(self.run_status, self.run_outcome)

    @property
    def verdict(self) -> str:
        """failed, flaked (done after retries), clean (done first time), or the state it stopped in."""
        return node_verdict(self.state, self.attempts)


def node_runs(*, tenant: Tenant, node_id: str, limit: int, now: datetime | None = None) -> list[NodeRun]:
    """The node's last `limit` runs, newest first.

    Walked from the runs' newest-first index, each run checked for the node, so a node present in
    most runs costs `limit` lookups rather than a sort of every run it ever had.
    """
    if "\x00" in node_id:
        return []  # no node has one: producers' events cannot carry NUL (reduction.validate_event)
    runs = list(
        Run.objects.filter(tenant=tenant)
        .filter(_has_node(tenant, node_id))
        .order_by(F("started").desc(nulls_first=True), F("id").desc())
        .values_list("pk", "run_id", "started", "outcome", "complete", "last_event_at", "created_at")[:limit]
    )
    now = now or timezone.now()
    this_node = {
        run_pk: (state, attempts)
        for run_pk, state, attempts in RunNode.objects.filter(
            tenant=tenant, node_id=node_id, run_id__in=[run[0] for run in runs]
        ).values_list("run_id", "state", "attempts")
    }
    return [
        NodeRun(
            run_id, started, outcome, complete, *this_node[pk], run_status(complete, last or created, now)
        )
        for pk, run_id, started, outcome, complete, last, created in runs
    ]


@dataclass(frozen=True, slots=True)
class NodeStats:
    node_id: str
    runs: int
    ran: int
    failed: int
    flaked: int
    blocked: int
    attempts: int

    @property
    def flake_rate(self) -> float:
        return self.flaked / self.ran if self.ran else 0.0

    @property
    def failure_rate(self) -> float:
        return self.failed / self.ran if self.ran else 0.0


def node_stats(*, tenant: Tenant, last_runs: int) -> list[NodeStats]:
    """Every node of the tenant's last `last_runs` runs, the flakiest and most failing first."""
    recent = (
        Run.objects.filter(tenant=tenant)
        .order_by(F("started").desc(nulls_first=True), F("id").desc())
        .values("id")[:last_runs]
    )
    rows = (
        RunNode.objects.filter(tenant=tenant, run_id__in=recent)
        .values("node_id")
        .annotate(
            runs=Count("id"),
            ran=Count("id", filter=Q(attempts__gt=0)),
            failed=Count("id", filter=Q(state="failed")),
            flaked=Count("id", filter=Q(state="done", attempts__gt=1)),
            blocked=Count("id", filter=Q(state="blocked")),
            # Summed as a float, which cannot overflow: attempts are at most 2**31 - 1 (SPEC
            # section 2), so the sum of a thousand runs is exact, but SQLite's integer SUM fails
            # outright on rows an earlier version stored unbounded.
            total_attempts=Coalesce(Sum(Cast("attempts", FloatField())), 0.0),
        )
    )
    stats = [
        NodeStats(
            node_id=row["node_id"],
            runs=row["runs"],
            ran=row["ran"],
            failed=row["failed"],
            flaked=row["flaked"],
            blocked=row["blocked"],
            attempts=int(row["total_attempts"]),
        )
        for row in rows
    ]
    stats.sort(key=lambda s: (-(s.flaked + s.failed) / max(s.ran, 1), -s.failed, s.node_id))
    return stats


# ---------------------------------------------------------------- two runs side by side

# What a comparison reads of each run: its row, its graph (for the replay) and the reduction's
# state (each node's final state and attempts).
_COMPARED_COLUMNS = (*RUN_ROW_COLUMNS, "graph", "reduction_state")


def run_comparison(*, tenant: Tenant, run_a: str, run_b: str, now: datetime | None = None) -> RunComparison:
    """Run `run_b` beside run `run_a`: both rows, every node of either with its state, attempts and
    time in each, and the first event at which their logs differ; raises `Run.DoesNotExist` with
    the first of the two ids that names no run of the tenant."""
    wanted = [run_id for run_id in (run_a, run_b) if run_id_valid(run_id)]
    found = {
        run.run_id: run
        for run in Run.objects.only(*_COMPARED_COLUMNS).filter(tenant=tenant, run_id__in=wanted)
    }
    for run_id in (run_a, run_b):
        if run_id not in found:
            raise Run.DoesNotExist(run_id)
    a, b = found[run_a], found[run_b]
    row_a, row_b = run_rows([a, b], tenant=tenant, now=now or timezone.now())
    events_a = run_event_facts(tenant=tenant, run=a.pk)
    events_b = run_event_facts(tenant=tenant, run=b.pk)
    sides_a, sides_b = _node_sides(a, events_a), _node_sides(b, events_b)
    order = [*sides_a, *(node_id for node_id in sides_b if node_id not in sides_a)]
    nodes = [NodeComparison(id=node_id, a=sides_a.get(node_id), b=sides_b.get(node_id)) for node_id in order]
    nodes.sort(key=lambda node: not node.differs)  # stable: each group keeps the graph's order
    steps_a = [_event_step(row) for row in events_a]
    steps_b = [_event_step(row) for row in events_b]
    return RunComparison(
        a=row_a,
        b=row_b,
        nodes=tuple(nodes),
        divergence=_first_divergence(steps_a, steps_b),
        order_differs_at=_order_differs_at(steps_a, steps_b),
        events_a=len(events_a),
        events_b=len(events_b),
    )


def _node_sides(run: Run, events: list[EventRow]) -> dict[str, NodeSide]:
    """Each node of a run, in graph order then first appearance: its state and attempts from the
    stored reduction (as `run_detail` reads them), and the time its attempts took from a replay of
    its log (`RunReduction.replay`, whose attempts the timeline lays out)."""
    replayed = RunReduction(run.run_id, history=True)
    if run.graph is not None:
        replayed.set_graph(run.graph)
    for seq, ts, kind, node, facts in events:
        replayed.replay(seq, ts, kind, node, facts)
    history = replayed.history
    assert history is not None
    times = {seq: ts for seq, ts, _kind, _node, _facts in events}
    sides = {}
    for node_id, state, attempt_count in _reduction(run.run_id, run.reduction_state).node_states():
        told = history.nodes.get(node_id)
        durations = [_attempt_seconds(facts, times) for facts in told.attempts] if told else []
        known = [seconds for seconds in durations if seconds is not None]
        # Not run, or an attempt still open: how long it took is not known yet.
        took = round(sum(known), 3) if known and len(known) == len(durations) else None
        sides[node_id] = NodeSide(state=state, attempts=attempt_count, duration_s=took)
    return sides


def _attempt_seconds(facts: AttemptFacts, times: dict[int, datetime]) -> float | None:
    """How long an attempt took: its record's duration, or from its start to the event that ended
    it when it had none (as the timeline draws it); None while it is open."""
    if facts.recorded:
        return facts.duration_s
    if facts.end_seq is None:
        return None
    return (times[facts.end_seq] - times[facts.start_seq]).total_seconds()


def _first_divergence(steps_a: list[EventStep], steps_b: list[EventStep]) -> Divergence | None:
    """The earliest event at which a node's own story differs between two logs (`Divergence`), or
    None when every node, and the run itself, did the same things in the same order.

    Each story is its events in seq order, compared step by step by what they did
    (`EventStep.key`). Parallel nodes interleave differently from run to run, so the logs are not
    compared position by position here: that order is `_order_differs_at`'s to report.
    """
    stories_a, stories_b = _stories(steps_a), _stories(steps_b)
    found: tuple[tuple[float, float, str], Divergence] | None = None
    for node in stories_a.keys() | stories_b.keys():
        story = zip_longest(stories_a.get(node, ()), stories_b.get(node, ()))
        for shared, (step_a, step_b) in enumerate(story):
            if step_a is not None and step_b is not None and step_a.key == step_b.key:
                continue
            seqs = sorted(step.seq for step in (step_a, step_b) if step is not None)
            # The earlier side first; ties broken by the other side, then the node's id.
            place = (seqs[0], seqs[-1] if len(seqs) == 2 else float("inf"), node or "")
            if found is None or place < found[0]:
                found = (place, Divergence(node=node, shared=shared, a=step_a, b=step_b))
            break
    return found[1] if found is not None else None


def _stories(steps: list[EventStep]) -> dict[str | None, list[EventStep]]:
    """A log's events by the node they name (None: the run's own), each list in seq order."""
    stories: dict[str | None, list[EventStep]] = {}
    for step in steps:
        stories.setdefault(step.node, []).append(step)
    return stories


def _order_differs_at(steps_a: list[EventStep], steps_b: list[EventStep]) -> int | None:
    """The first seq at which the logs differ event by event, or where the shorter one ends."""
    for step_a, step_b in zip_longest(steps_a, steps_b):
        if step_a is None or step_b is None or step_a.key != step_b.key:
            return step_a.seq if step_a is not None else step_b.seq
    return None


def _event_step(row: EventRow) -> EventStep:
    seq, _ts, kind, node, facts = row
    if kind == "transition":
        return EventStep(
            seq=seq,
            kind=kind,
            node=node,
            source=facts.get("from"),
            target=facts.get("to"),
            attempt=facts.get("attempt"),
        )
    if kind == "node_attempt":
        return EventStep(seq=seq, kind=kind, node=node, attempt=facts.get("attempt"), ok=facts.get("ok"))
    if kind == "run_end":
        return EventStep(seq=seq, kind=kind, node=node, exit_code=facts.get("exit_code"))
    return EventStep(seq=seq, kind=kind, node=node)


def run_previous_of_graph(*, tenant: Tenant, run: RunRow) -> str | None:
    """The id of the latest run before `run` in history order (by `started`, then id) that has the
    same graph, or None.

    The same graph is the same set of node ids, as the node rows store them (graph.json's and any an
    event named): no digest of a graph is stored, and a run whose producer sent no graph.json still
    has its nodes. With as many nodes, the same set is one where none of the other run's nodes is
    missing from this one's; the walk goes newest first and stops at the first such run.
    """
    if run.total_nodes == 0:
        return None
    ours = RunNode.objects.filter(tenant=tenant, run=run.id).values("node_id")
    not_ours = RunNode.objects.filter(tenant=tenant, run=OuterRef("pk")).exclude(node_id__in=ours)
    return (
        Run.objects.filter(tenant=tenant, total_nodes=run.total_nodes)
        .filter(_older_than(RunPosition(run.started, run.id)))
        .filter(~Exists(not_ours))
        .order_by(F("started").desc(nulls_first=True), F("id").desc())
        .values_list("run_id", flat=True)
        .first()
    )
