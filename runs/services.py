"""The one write path: events appended to runs, run rows advanced by the reduction, in bulk.

Three services take data and own their transaction: `run_append_events` (a producer's batch),
`run_document_set` (its graph or summary) and `runs_import` (what an archive holds beyond what was
imported). Each locks its runs (creating missing rows first, so events always have their run),
applies the reduction, refuses what the run's state forbids (`runs.errors`), writes once, and after
commit tells live sockets. On PostgreSQL an import's events stream into one COPY while the caller's
lines are still being parsed; a request's rows go in one statement. Never one query per event.
Each run's row is advanced from the reduction state it carries, so appending N events costs O(N)
whatever the run's length. The SQL itself is in `runs.sql`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from runs import reduction, sql
from runs.alerts.services import RunNews, alerts_record
from runs.errors import AlreadyWritten, RunDeletedError, RunEnded, RunNotStarted, SeqConflict, SeqGap
from runs.live import LIVE_EVENTS_PER_MESSAGE, live_publish_changes
from runs.models import Diagnostic, Event, Run
from runs.reduction import Diagnostic as ReducedDiagnostic
from tenants.context import directly_in_request_transaction, tenant_atomic
from tenants.models import Tenant

__all__ = [
    "Receipt",
    "RunBatch",
    "RunChange",
    "RunDeletedError",
    "RunLog",
    "RunsImported",
    "run_append_events",
    "run_document_set",
    "run_import_failed",
    "runs_import",
]

# Copied straight from the reduction's row (its timestamps are parsed first).
REDUCED_FIELDS = tuple(f for f in reduction.SUMMARY_FIELDS if f not in ("started", "ended"))

_SEVERITY_FIELD = {"error": "errors", "warning": "warnings", "info": "infos"}

# What a log reading yields: a valid event with its JSON text, or a diagnostic about a line, in order.
LogItem = tuple[dict[str, Any], str] | reduction.Diagnostic


@dataclass
class RunChange:
    """What one batch does to one run: new events, diagnostics, and the advanced reduction."""

    run: Run
    reduction: reduction.RunReduction
    sink: sql.RowSink
    created: bool
    appended: int = 0
    diagnostics: list[ReducedDiagnostic] = field(default_factory=list)
    nodes_changed: bool = False
    summary_set: bool = False
    # The graph or the summary was set by this batch (see DOCUMENT_FIELDS).
    documents_changed: bool = False
    # The archive's bookkeeping on the run (its log's offsets) changed.
    progress_changed: bool = False
    # The JSON text of the appended events, for live subscribers; None once there are more than one
    # live message carries (they then read them from the database).
    live_payloads: list[str] | None = field(default_factory=list)
    # The appended `node_attempt` events, for node alert rules: when this batch writes the run's
    # whole log, they spare reading the run's attempts back from the database (runs.alerts).
    attempt_records: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The run's node rows as stored before this batch: the flush writes only what it changes.
        self.stored_nodes: dict[str, tuple[int, str, int]] = (
            {
                node: (position, state, attempts)
                for position, (node, state, attempts) in enumerate(self.reduction.node_states())
            }
            if self.run.total_nodes > 0
            else {}
        )
        # summary.json and run_end arrive in either order: they are compared once, when both are in.
        self.summary_compared = self.run.complete and self.run.summary is not None
        # Alerts: a run that had ended before this batch does not end again (runs.alerts).
        self.was_complete = self.run.complete
        # Whether this batch writes the run's log from its first event: `attempt_records` then holds
        # every attempt record the run has.
        self.whole_log = self.reduction.next_seq == 0

    def append(self, event: dict[str, Any], payload: str) -> int:
        """Adds a valid event (see `reduction.validate_event`); `payload` is its JSON text as stored,
        the event itself: on PostgreSQL the row's `ts`, `kind` and `node` are read back from it."""
        self.extend(((event, payload),))
        return self.reduction.next_seq - 1

    def extend(self, events: Iterable[LogItem]) -> None:
        """Adds valid events with their JSON text, in order, and diagnostics found among them where
        they stand (a log reading's malformed lines). The import's inner loop: kept lean."""
        apply, diagnostics = self.reduction.apply, self.diagnostics
        write = self.sink.writer()
        run_pk, tenant_id = self.run.pk, self.run.tenant_id
        on_sqlite = not self.sink.copying
        adapt = connection.ops.adapt_datetimefield_value
        utc, utc_text = reduction.ts_utc, reduction.ts_utc_text
        # Kept by reference (the strings exist anyway); one append per event is all it costs.
        keep = (self.live_payloads if self.live_payloads is not None else []).append
        keep_attempt = self.attempt_records.append
        first = seq = self.reduction.next_seq
        for item in events:
            if isinstance(item, ReducedDiagnostic):
                diagnostics.append(item)
                continue
            event, payload = item
            kind = event["event"]
            found = apply(event)
            if found:
                diagnostics.extend(found)
            if self.run.graph is None and kind == "run_start" and event.get("graph") is not None:
                self.run.graph = event["graph"]  # the reduction adopted it too
                self.nodes_changed = self.documents_changed = True
            # The UTC instant, never the producer's text (see runs.sql.EventSink); SQLite stores what
            # Django's adapter writes.
            ts = adapt(utc(event["ts"])) if on_sqlite else utc_text(event["ts"])
            write((run_pk, seq, tenant_id, ts, kind, event.get("node"), payload))
            keep(payload)
            if kind == "node_attempt":
                keep_attempt(event)
            seq += 1
        self.appended += seq - first
        if self.live_payloads is not None and len(self.live_payloads) > LIVE_EVENTS_PER_MESSAGE:
            self.live_payloads = None
        self.nodes_changed = True

    def set_graph(self, graph: dict[str, Any]) -> None:
        """The DAG is written once: a second, different graph is the caller's error to report."""
        if self.run.graph is None:
            self.run.graph = graph
            self.diagnostics.extend(self.reduction.set_graph(graph))
            self.nodes_changed = self.documents_changed = True

    def set_summary(self, summary: dict[str, Any]) -> None:
        if self.run.summary is None:
            self.run.summary = summary
            self.summary_set = self.documents_changed = True

    def diagnose(self, diagnostic: ReducedDiagnostic) -> None:
        self.diagnostics.append(diagnostic)

    @property
    def news(self) -> bool:
        """Whether this batch gives the run anything a reader would see."""
        return self.created or bool(
            self.appended or self.diagnostics or self.nodes_changed or self.summary_set
        )

    @property
    def touched(self) -> bool:
        return self.news or self.progress_changed


class RunBatch:
    """Changes to some runs of one tenant, written by one flush, inside the caller's transaction.
    The services below use it; tests use it to store runs as an earlier version would have.

    Open (lock) every run first, then append: once events stream, the connection is busy.
    """

    def __init__(self, *, tenant: Tenant) -> None:
        self.tenant = tenant
        self.changes: dict[str, RunChange] = {}
        self.deleted: list[str] = []
        self.events = sql.EventSink()

    def open(
        self, run_ids: Iterable[str], *, create: Collection[str] | None = None, skip_deleted: bool = False
    ) -> dict[str, RunChange]:
        """Locks the named runs until commit, so concurrent writers of one run queue, creating the
        rows of missing ones first (those in `create`, when given): events are only ever written to
        a run whose row exists. Returns the runs opened; a run neither found nor created is not.

        Soft-deleted runs are locked too (hidden, one would look missing, and a new row would break
        its unique run id): `RunDeletedError` names the first, unless `skip_deleted` (then they are
        listed in `deleted`). A lock held by retention is waited for, then its deletion is seen
        here. Lock order: several runs (an import) are created, then locked, each step in run id
        order, so no two writers of overlapping runs wait for each other in a cycle; one run (a
        producer's request) is locked, and created only if missing (its first batch), which holds
        no other lock while it waits.
        """
        if self.events.streaming:
            raise RuntimeError("open every run before appending events")
        wanted = [run_id for run_id in dict.fromkeys(run_ids) if run_id not in self.changes]
        if not wanted:
            return {}
        creatable = wanted if create is None else [run_id for run_id in wanted if run_id in create]
        created: set[str] = set()
        if len(wanted) == 1:
            locked = sql.run_rows_locked(self.tenant, wanted)
            if not locked and creatable:
                created = sql.run_rows_create(self.tenant, creatable)
                locked = sql.run_rows_locked(self.tenant, wanted)
        else:
            created = sql.run_rows_create(self.tenant, creatable)
            locked = sql.run_rows_locked(self.tenant, wanted)
        opened = {}
        for run in locked:
            if run.deleted_at is not None:
                if not skip_deleted:
                    raise RunDeletedError(run.run_id)
                self.deleted.append(run.run_id)
                continue
            opened[run.run_id] = self.changes[run.run_id] = RunChange(
                run=run,
                reduction=reduction.RunReduction(run.run_id, run.reduction_state),
                sink=self.events,
                created=run.run_id in created,
            )
        return opened

    def discard(self) -> None:
        """Ends a COPY in flight as failed, so the transaction can roll back."""
        self.events.discard()

    def flush(self) -> list[RunChange]:
        """Writes every change; returns them, with each run row as now stored."""
        # The writes that are one statement each travel as one (`runs.sql.Writes`): one round
        # trip, and one statement for PostgreSQL to run. Not psycopg's pipeline mode, which would
        # keep them apart: measured on these writes, waiting for a pipeline's results cost more CPU
        # under load than the round trips it saved. (A key's lookup does pipeline its two
        # statements: they cannot be one, see tenants.models.ApiKeyManager.pre_tenant_by_hash.)
        writes = sql.Writes()
        self.events.close(writes)
        changes = [c for c in self.changes.values() if c.touched]
        now = timezone.now()
        for change in changes:
            self._advance_row(change, now)
        sql.run_rows_update([c.run for c in changes if c.documents_changed], sql.ROW_FIELDS, writes)
        sql.run_rows_update([c.run for c in changes if not c.documents_changed], sql.PROGRESS_FIELDS, writes)
        self._write_nodes([c for c in changes if c.nodes_changed], writes)
        writes.execute()
        self._write_diagnostics(changes)
        self._record_alerts(changes)
        self.changes.clear()
        return changes

    def _advance_row(self, change: RunChange, now: datetime) -> None:
        run, state = change.run, change.reduction
        row = state.row()
        if run.summary is not None and state.complete and not change.summary_compared:
            change.summary_compared = True
            mismatch = reduction.summary_mismatch(run.summary, row)
            if mismatch is not None:
                change.diagnostics.append(mismatch)
        run.started = _datetime(row["started"])
        run.ended = _datetime(row["ended"])
        for name in REDUCED_FIELDS:
            setattr(run, name, row[name])
        run.complete = state.complete
        run.last_event_at = _datetime(state.last_event_ts)
        run.next_seq = state.next_seq
        run.reduction_state = state.to_state()
        for diagnostic in change.diagnostics:
            name = _SEVERITY_FIELD[diagnostic.severity]
            setattr(run, name, getattr(run, name) + 1)
        run.updated_at = now

    def _write_diagnostics(self, changes: list[RunChange]) -> None:
        rows = [
            Diagnostic(
                run_id=change.run.pk,
                tenant_id=self.tenant.pk,
                code=d.code,
                severity=d.severity,
                seq=d.seq,
                line=d.line,
                message=d.message,
                details=d.details,
            )
            for change in changes
            for d in change.diagnostics
        ]
        if rows:
            Diagnostic.objects.bulk_create(rows)

    def _record_alerts(self, changes: list[RunChange]) -> None:
        """The alerts these changes give, in this transaction (a transactional outbox)."""
        alerts_record(
            tenant=self.tenant,
            news=(
                RunNews(
                    run=c.run,
                    was_complete=c.was_complete,
                    diagnostics=c.diagnostics,
                    node_states=c.reduction.node_states,
                    attempt_records=c.attempt_records if c.whole_log else None,
                )
                for c in changes
                if c.news
            ),
        )

    def _write_nodes(self, changes: list[RunChange], writes: sql.Writes) -> None:
        new: list[tuple[int, str, int, str, int]] = []
        changed: list[tuple[int, str, int, str, int]] = []
        for change in changes:
            stored, run_pk = change.stored_nodes, change.run.pk
            for position, (node, state, attempts) in enumerate(change.reduction.node_states()):
                before = stored.get(node)
                if before is None:
                    new.append((run_pk, node, position, state, attempts))
                elif before != (position, state, attempts):
                    changed.append((run_pk, node, position, state, attempts))
        sql.run_nodes_write(self.tenant, new, changed, writes)


def _datetime(value: str | None) -> datetime | None:
    return reduction.parse_ts(value) if value is not None else None


@contextmanager
def _batch_written(tenant: Tenant) -> Iterator[RunBatch]:
    """One transaction for `tenant` around a batch: flushed at the end, and live sockets told of
    what it changed after the outermost commit, never of what may still roll back.

    Inside an enclosing transaction it is a savepoint, so a caller may catch an error and go on;
    directly inside a request's own transaction it is not: the request is the unit of work, rolled
    back whole with an error answer, and a savepoint would cost a producer's every request two
    round trips.
    """
    with tenant_atomic(tenant, savepoint=not directly_in_request_transaction()):
        batch = RunBatch(tenant=tenant)
        try:
            yield batch
        except BaseException:
            batch.discard()
            raise
        changes = batch.flush()
        transaction.on_commit(partial(live_publish_changes, changes), robust=True)


def _run_opened(batch: RunBatch, run_id: str) -> RunChange | None:
    """The run, locked (created if missing); None if retention soft-deleted it. The caller then
    leaves its transaction, which wrote nothing, without an error, and raises RunDeletedError
    after it: a request's transaction is then still usable to read retention's record of when
    and why, for the answer."""
    return batch.open([run_id], skip_deleted=True).get(run_id)


# ---------------------------------------------------------------- a producer's batch


@dataclass(frozen=True)
class Receipt:
    """What is stored after a batch: the producer's next batch starts at `next_seq`."""

    run_id: str
    accepted: int
    duplicates: int
    next_seq: int
    # Whether this batch created the run (its first): the caller may refuse a run id retention
    # removed for good, in the same transaction.
    created: bool = field(default=False, compare=False)


def run_append_events(
    *,
    tenant: Tenant,
    run_id: str,
    events: Sequence[dict[str, Any]],
    payloads: Sequence[str],
    first_seq: int | None = None,
) -> Receipt:
    """Appends valid events (`reduction.validate_event`, without their `seq`) to a run, created by
    its first batch, all of them or none. `payloads` are their JSON texts as stored; `first_seq`,
    when the producer numbered the batch, is the seq of its first event: a retry of stored events
    is counted as duplicates, and a gap or a different event at a stored seq is refused.

    Refusals (`runs.errors`): RunDeletedError, SeqGap, SeqConflict, RunNotStarted, RunEnded.
    """
    duplicates = 0
    with _batch_written(tenant) as batch:
        change = _run_opened(batch, run_id)
        if change is not None:
            duplicates = _appended(change, events, payloads, first_seq)
    if change is None:
        raise RunDeletedError(run_id)
    return Receipt(
        run_id=run_id,
        accepted=len(events) - duplicates,
        duplicates=duplicates,
        next_seq=change.reduction.next_seq,
        created=change.created,
    )


def _appended(
    change: RunChange, events: Sequence[dict[str, Any]], payloads: Sequence[str], first_seq: int | None
) -> int:
    """Appends the events a run does not have yet; returns how many it had (a producer's retry)."""
    next_seq = change.reduction.next_seq
    duplicates = _already_stored(change, events, first_seq, next_seq) if first_seq is not None else 0
    new_events = events[duplicates:]
    if new_events:
        if next_seq == 0 and new_events[0]["event"] != "run_start":
            raise RunNotStarted(
                f"the first event of a run must be run_start, not {new_events[0]['event']!r}",
                details={"index": duplicates},
            )
        ended = change.reduction.complete
        for index, event in enumerate(new_events, start=duplicates):
            if ended:
                raise RunEnded(
                    "the run has ended: nothing is accepted after run_end",
                    details={"index": index, "next_seq": next_seq},
                )
            ended = event["event"] == "run_end"
        change.extend(zip(new_events, payloads[duplicates:], strict=True))
    return duplicates


def _already_stored(change: RunChange, events: Sequence[dict[str, Any]], first: int, next_seq: int) -> int:
    """How many leading events of a batch are retries of stored ones; a different one is a conflict."""
    if first > next_seq:
        raise SeqGap(
            f"the batch starts at seq {first} but the run's next seq is {next_seq}",
            details={"next_seq": next_seq, "first_seq": first},
        )
    overlap = min(next_seq - first, len(events))
    if overlap <= 0:
        return 0
    stored = dict(
        Event.objects.filter(run_id=change.run.pk, seq__gte=first, seq__lt=first + overlap).values_list(
            "seq", "payload"
        )
    )
    for offset in range(overlap):
        seq = first + offset
        if stored.get(seq) != events[offset]:
            raise SeqConflict(
                f"seq {seq} is already stored with other content",
                details={"seq": seq, "index": offset, "next_seq": next_seq},
            )
    return overlap


@dataclass(frozen=True)
class DocumentWritten:
    """Whether a graph or summary was newly stored, and whether this write created the run."""

    written: bool
    created: bool


DOCUMENT_KINDS = ("graph", "summary")


def run_document_set(*, tenant: Tenant, run_id: str, kind: str, document: dict[str, Any]) -> DocumentWritten:
    """Writes a run's graph or its summary (`kind`), once: the same document again is fine, a
    different one is refused (AlreadyWritten). A graph is valid (`reduction.validate_graph`)."""
    if kind not in DOCUMENT_KINDS:
        raise ValueError(f"a run's documents are {DOCUMENT_KINDS}, not {kind!r}")
    written = False
    with _batch_written(tenant) as batch:
        change = _run_opened(batch, run_id)
        if change is not None:
            written = _document_written(change, kind, document)
    if change is None:
        raise RunDeletedError(run_id)
    return DocumentWritten(written=written, created=change.created)


def _document_written(change: RunChange, kind: str, document: dict[str, Any]) -> bool:
    stored = getattr(change.run, kind)
    if stored is not None:
        if stored != document:
            raise AlreadyWritten(
                f"the run's {kind} is written once, and differs from this one", details={"kind": kind}
            )
        return False
    if kind == "graph":
        change.set_graph(document)
    else:
        change.set_summary(document)
    return True


# ---------------------------------------------------------------- an archive's runs


@dataclass
class RunLog:
    """What one run's folder holds beyond what was imported, as its reader found it.

    `log_offset` is where the reading began: the run's stored offset when it was read. A run whose
    stored offset has moved since (another import got there first) is left alone and named in
    `RunsImported.stale`, to be read again.
    """

    run_id: str
    # Whether the run had no row when it was read: only then is its row created.
    new: bool = True
    log_offset: int = 0
    # The log's size as read, or None when the log was not read (none yet, or it shrank before).
    log_size: int | None = None
    # The offset after the last complete line read, and how many complete lines that was.
    log_end: int = 0
    lines: int = 0
    # Those lines' valid events with their JSON text, and diagnostics about the others, in order.
    # Consumed once, after every run of the import is locked: it may be a generator parsing them.
    items: Iterable[LogItem] = ()
    graph: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None


@dataclass
class RunsImported:
    changes: list[RunChange] = field(default_factory=list)
    # Runs soft-deleted by retention: never written (SPEC section 9).
    deleted: list[str] = field(default_factory=list)
    # Runs another import advanced since they were read: left alone, to be read again.
    stale: list[str] = field(default_factory=list)


def runs_import(*, tenant: Tenant, runs: Sequence[RunLog]) -> RunsImported:
    """Adds to each run what its folder holds beyond what was imported, in one transaction, and
    clears the import error of a run this import now stores. Runs soft-deleted by retention and
    runs read at a stale offset are left out (see `RunsImported`)."""
    imported = RunsImported()
    with _batch_written(tenant) as batch:
        # Only a run read as new is created: one read at an offset had a row, and if that row is
        # gone (retention removed it meanwhile) the run is not brought back.
        changes = batch.open(
            [log.run_id for log in runs],
            create={log.run_id for log in runs if log.new},
            skip_deleted=True,
        )
        imported.deleted = batch.deleted
        for log in runs:
            change = changes.get(log.run_id)
            if log.run_id in imported.deleted:
                continue
            if change is None or change.run.log_offset != log.log_offset:
                imported.stale.append(log.run_id)
                batch.changes.pop(log.run_id, None)
        _import_errors_cleared(tenant, [c.run for c in batch.changes.values() if c.run.import_error])
        for log in runs:
            change = batch.changes.get(log.run_id)
            if change is not None:
                _import_log(change, log)
        # The block's end flushes the batch; these are the changes it writes.
        opened = list(batch.changes.values())
    imported.changes = [c for c in opened if c.touched]
    return imported


def _import_log(change: RunChange, log: RunLog) -> None:
    run = change.run
    if log.graph is not None:
        change.set_graph(log.graph)
    if log.log_size is not None and not run.log_shrank:
        run.log_size_seen = log.log_size
        change.progress_changed = True
        if log.log_size < run.log_offset:
            run.log_shrank = True
            change.diagnose(
                reduction.Diagnostic(
                    "log_shrank",
                    f"the log is {log.log_size} bytes, shorter than the {run.log_offset} bytes already "
                    "imported; nothing stored was removed and the log is no longer read",
                    line=run.log_lines,
                    details={"size": log.log_size, "imported_bytes": run.log_offset},
                )
            )
        else:
            change.extend(log.items)
            run.log_offset = log.log_end
            run.log_lines += log.lines
    if log.summary is not None:
        change.set_summary(log.summary)


def _import_errors_cleared(tenant: Tenant, runs: list[Run]) -> None:
    """Clears the import error of runs whose import now goes through (before events stream: the
    connection is then busy)."""
    if runs:
        Run.objects.including_deleted().filter(tenant=tenant, pk__in=[run.pk for run in runs]).update(
            import_error="", import_failures=0, import_retry_at=None
        )
        for run in runs:
            run.import_error, run.import_failures, run.import_retry_at = "", 0, None


# A run the archive import could not store is tried again after this delay, doubled with each
# failure in a row up to the longest: a follower polls every second, and a run the database refuses
# once is refused again until someone changes the database or the run.
IMPORT_RETRY_FIRST = timedelta(seconds=10)
IMPORT_RETRY_LONGEST = timedelta(hours=1)


def import_retry_delay(failures: int) -> timedelta:
    """How long to wait before trying again a run whose import failed `failures` times in a row."""
    return min(IMPORT_RETRY_FIRST * 2 ** min(max(failures - 1, 0), 16), IMPORT_RETRY_LONGEST)


def run_import_failed(*, tenant: Tenant, run_id: str, error: str, now: datetime) -> datetime:
    """Records on the run that importing it failed with `error` (nothing of that attempt was
    stored), creating its row if it has none yet, so that its page says why it is not there; returns
    when it is tried again. Its own transaction: the one that failed was rolled back."""
    with tenant_atomic(tenant):
        sql.run_rows_create(tenant, [run_id])
        (run,) = sql.run_rows_locked(tenant, [run_id])
        run.import_failures += 1
        retry_at = now + import_retry_delay(run.import_failures)
        run.import_error, run.import_retry_at = error, retry_at
        Run.objects.including_deleted().filter(pk=run.pk).update(
            import_error=error, import_failures=run.import_failures, import_retry_at=retry_at
        )
    return retry_at
