"""The one write path: events appended to runs, run rows advanced by the reduction, in bulk.

The archive importer and the ingest API both open a `RunBatch` inside `tenant_atomic(tenant)`,
lock the runs they write, append events and flush once. On PostgreSQL the events stream into one
COPY while the caller is still parsing, so the server stores them on the other core; on SQLite they
go in one prepared executemany. Never one query per event. Each run's row is advanced from the
reduction state it carries, so appending N events costs O(N) whatever the run's length.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar, cast

import orjson
from django.db import connection, transaction
from django.db.models import Field, JSONField, Model
from django.utils import timezone
from psycopg.types.json import Jsonb

from kahn_site.rows import bound_cursor, columns
from runs import reduction
from runs.live import LIVE_EVENTS_PER_MESSAGE, live_publish_changes
from runs.models import Diagnostic, Event, Run, RunNode
from runs.reduction import Diagnostic as ReducedDiagnostic
from tenants.context import directly_in_request_transaction, tenant_atomic
from tenants.models import Tenant

T = TypeVar("T")

# Copied straight from the reduction's row (its timestamps are parsed first).
REDUCED_FIELDS = tuple(f for f in reduction.SUMMARY_FIELDS if f not in ("started", "ended"))
# Run fields the write path owns; written back at every flush.
ROW_FIELDS = (
    *reduction.SUMMARY_FIELDS,
    "complete",
    "last_event_at",
    "next_seq",
    "reduction_state",
    "errors",
    "warnings",
    "infos",
    "graph",
    "summary",
    "log_offset",
    "log_size_seen",
    "log_lines",
    "log_shrank",
    "updated_at",
)
# A run's graph and summary are written once: an UPDATE carries them only when they changed, as
# sending the run's DAG back with every batch cost the server more than the batch's own row did.
DOCUMENT_FIELDS = ("graph", "summary")
PROGRESS_FIELDS = tuple(f for f in ROW_FIELDS if f not in DOCUMENT_FIELDS)
EVENT_COLUMNS = ("run_id", "seq", "tenant_id", "ts", "kind", "node", "payload")
NODE_COLUMNS = ("run_id", "tenant_id", "node_id", "position", "state", "attempts")

_SEVERITY_FIELD = {"error": "errors", "warning": "warnings", "info": "infos"}


# Up to this many rows go in as one INSERT, with the rows as one JSON parameter: no temporary table
# (DDL), no COPY round trips, and under row-level security no second copy of the rows. Measured as
# the service role: 500 events in 2.9 ms against 4.3 ms through a temporary table, even at 1,000.
# Past it, rows stream into a COPY while Python prepares the next: an import's bulk, not a request's.
ROWS_IN_ONE_INSERT = 1000


class _RowSink:
    """Rows on their way into one table: on PostgreSQL, up to ROWS_IN_ONE_INSERT go in as one
    INSERT ... SELECT FROM jsonb_to_recordset(...), and more stream into a COPY, opened when they
    outgrow that; on SQLite they are gathered for one executemany.

    PostgreSQL refuses COPY FROM into a table under row-level security for a role its policies
    apply to ("use INSERT statements instead"). For such a role (the cloud service role, or an
    owner under FORCE) a COPY goes into a temporary table and moves with one INSERT ... SELECT,
    which the tenant policy checks, as the one-statement INSERT is checked; a role that bypasses
    row-level security copies directly.

    While a COPY is open the connection can run nothing else: `close()` before any other query.
    """

    def __init__(self, model: type[Model], columns: tuple[str, ...]) -> None:
        shape = _table_shape(model, columns, connection.vendor)
        self.db_table, self.table, self.names = shape.db_table, shape.table, shape.names
        self.record, self.json_columns = shape.record, shape.json_columns
        self.columns = columns
        self.width = len(columns)
        self.copying = connection.vendor == "postgresql"
        self.staging: str | None = None
        self._stack: ExitStack | None = None
        self._copy: Any = None
        self._rows: list[tuple[Any, ...]] = []

    @property
    def streaming(self) -> bool:
        return self._copy is not None

    def writer(self) -> Callable[[tuple[Any, ...]], None]:
        """The function that takes one row: bound once per run, called once per row."""
        if not self.copying:
            return self._rows.append
        if self._copy is not None:
            return self._copy.write_row
        return self._write

    def _write(self, row: tuple[Any, ...]) -> None:
        if self._copy is not None:
            self._copy.write_row(row)
            return
        self._rows.append(row)
        if len(self._rows) > ROWS_IN_ONE_INSERT:
            self._open_copy()
            for held in self._rows:
                self._write(held)
            self._rows = []

    def _open_copy(self) -> None:
        self._stack = ExitStack()
        cursor = self._stack.enter_context(connection.cursor())
        target = self.table
        if not _role_bypasses_rls():
            self.staging = connection.ops.quote_name(f"kahn_staging_{self.db_table}")
            cursor.execute(
                f"CREATE TEMPORARY TABLE {self.staging} ON COMMIT DROP AS "
                f"SELECT {self.names} FROM {self.table} WITH NO DATA"
            )
            target = self.staging
        self._copy = self._stack.enter_context(cursor.cursor.copy(f"COPY {target} ({self.names}) FROM STDIN"))

    def discard(self) -> None:
        """Ends a COPY in flight as failed, so the transaction can roll back."""
        if self._stack is not None:
            stack, self._stack, self._copy = self._stack, None, None
            stack.__exit__(RuntimeError, RuntimeError("batch discarded"), None)
        self.staging = None
        self._rows = []

    def close(self, writes: _Writes | None = None) -> None:
        """Writes what is held. Rows that go in as one INSERT join `writes`, when given, to travel
        with the flush's other writes (PostgreSQL only)."""
        if self._stack is not None:
            self._stack.close()
            self._stack = self._copy = None
            if self.staging is not None:
                with connection.cursor() as cursor:
                    cursor.execute(
                        f"INSERT INTO {self.table} ({self.names}) SELECT {self.names} FROM {self.staging}"
                    )
                    cursor.execute(f"DROP TABLE {self.staging}")
                self.staging = None
        if self._rows:
            rows, self._rows = self._rows, []
            if not self.copying:
                placeholders = ", ".join(["%s"] * self.width)
                with connection.cursor() as cursor:
                    cursor.executemany(
                        f"INSERT INTO {self.table} ({self.names}) VALUES ({placeholders})", rows
                    )
                return
            own = _Writes() if writes is None else writes
            own.add(*self._insert_in_one(rows))
            if writes is None:
                own.execute()

    def _insert_in_one(self, rows: list[tuple[Any, ...]]) -> tuple[str, list[Any]]:
        """The INSERT of `rows` as one statement and its parameters."""
        return (
            f"INSERT INTO {self.table} ({self.names}) SELECT {self.names} "
            f"FROM jsonb_to_recordset(%s::jsonb) AS r({self.record})",
            [self._as_json(rows)],
        )

    def _as_json(self, rows: list[tuple[Any, ...]]) -> str:
        """The rows as a JSON array of objects; a JSON column's text goes in as it is, unparsed."""
        columns, json_columns = self.columns, self.json_columns
        records = []
        for row in rows:
            record = dict(zip(columns, row, strict=True))
            for index in json_columns:
                value = row[index]
                if isinstance(value, str):
                    record[columns[index]] = orjson.Fragment(value)
                elif isinstance(value, Jsonb):
                    record[columns[index]] = value.obj
            records.append(record)
        return orjson.dumps(records).decode()


class _Writes:
    """The one-statement writes of a flush, sent to PostgreSQL as one statement: a producer's batch
    (its events, its run row, its changed nodes) costs one round trip instead of three.

    Each write is an INSERT or UPDATE bound on the server; all but the last travel as data-modifying
    WITH clauses of the last. They cannot see one another's rows, and need not: each writes rows no
    other reads or touches (the events, the run rows, the node rows).
    """

    def __init__(self) -> None:
        self._statements: list[str] = []
        self._params: list[Any] = []

    def add(self, sql: str, params: list[Any]) -> None:
        self._statements.append(sql)
        self._params.extend(params)

    def execute(self) -> None:
        if not self._statements:
            return
        *clauses, last = self._statements
        sql = last
        if clauses:
            sql = "WITH " + ", ".join(f"w{i} AS ({clause})" for i, clause in enumerate(clauses)) + " " + last
        with bound_cursor() as cursor:
            cursor.execute(sql, self._params)
        self._statements, self._params = [], []


@dataclass(frozen=True)
class _TableShape:
    db_table: str
    table: str
    names: str
    # On PostgreSQL: the record type rows are read back as, and which columns are JSON.
    record: str
    json_columns: tuple[int, ...]


@functools.cache
def _table_shape(model: type[Model], columns: tuple[str, ...], vendor: str) -> _TableShape:
    """A table's names and types for its sink, worked out once: a producer's request makes three
    sinks, and asking every field for its type each time cost more than the rows it writes."""
    quote = connection.ops.quote_name
    record = ""
    json_columns: tuple[int, ...] = ()
    if vendor == "postgresql":
        fields = {f.column: f for f in model._meta.concrete_fields}
        types = [fields[c].db_type(connection) for c in columns]
        record = ", ".join(f"{quote(c)} {t}" for c, t in zip(columns, types, strict=True))
        json_columns = tuple(i for i, t in enumerate(types) if t == "jsonb")
    return _TableShape(
        db_table=model._meta.db_table,
        table=quote(model._meta.db_table),
        names=", ".join(quote(c) for c in columns),
        record=record,
        json_columns=json_columns,
    )


class _EventSink(_RowSink):
    """Events on their way into runs_event. In one INSERT they travel as each run's payloads, one
    JSON array after its first seq, beside their UTC times: the server takes `kind` and `node`
    from the payload itself (what the row's columns are made of), and numbers the seqs. Half the
    server's work of a row per column (measured: 500 events in 2.4 to 3.3 ms against 5.5 to 6.2), about the
    cost of a COPY, and half the JSON for the client to write.
    """

    def __init__(self) -> None:
        super().__init__(Event, EVENT_COLUMNS)

    def _insert_in_one(self, rows: list[tuple[Any, ...]]) -> tuple[str, list[Any]]:
        # Consecutive seqs of one run form a group; the write path appends them in that order.
        groups: list[tuple[int, int, int, list[str], list[str]]] = []
        for run_pk, seq, tenant_id, ts, _kind, _node, payload in rows:
            last = groups[-1] if groups else None
            if last is not None and last[0] == run_pk and last[1] + len(last[3]) == seq:
                last[3].append(payload)
                last[4].append(ts)
            else:
                groups.append((run_pk, seq, tenant_id, [payload], [ts]))
        records = orjson.dumps(
            [
                {
                    "run_id": run_pk,
                    "first_seq": first_seq,
                    "tenant_id": tenant_id,
                    "events": orjson.Fragment("[" + ",".join(payloads) + "]"),
                    "ts": times,
                }
                for run_pk, first_seq, tenant_id, payloads, times in groups
            ]
        ).decode()
        # `ts` is the UTC instant the write path worked out (`reduction.ts_utc`), not the payload's
        # text: PostgreSQL refuses offsets past ±15:59 and rounds digits Python truncates.
        return (
            f"INSERT INTO {self.table} ({self.names}) "
            "SELECT g.run_id, g.first_seq + e.n - 1, g.tenant_id, e.t::timestamptz, "
            "e.p ->> 'event', e.p ->> 'node', e.p "
            "FROM jsonb_to_recordset(%s::jsonb) "
            "AS g(run_id bigint, first_seq bigint, tenant_id bigint, events jsonb, ts jsonb) "
            "CROSS JOIN LATERAL ROWS FROM (jsonb_array_elements(g.events), jsonb_array_elements_text(g.ts)) "
            "WITH ORDINALITY AS e(p, t, n)",
            [records],
        )


def _role_bypasses_rls() -> bool:
    """Whether this connection's role is exempt from row-level security (asked once per role)."""
    role = connection.settings_dict.get("USER")
    known = getattr(connection, "kahn_rls_exemption", None)
    if known is None or known[0] != role:
        with connection.cursor() as cursor:
            cursor.execute("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user")
            known = (role, bool(cursor.fetchone()[0]))
        connection.kahn_rls_exemption = known  # type: ignore[attr-defined]  # a memo on Django's wrapper
    return known[1]


@dataclass
class RunChange:
    """What one batch does to one run: new events, diagnostics, and the advanced reduction."""

    run: Run
    reduction: reduction.RunReduction
    sink: _RowSink
    created: bool
    appended: int = 0
    diagnostics: list[ReducedDiagnostic] = field(default_factory=list)
    nodes_changed: bool = False
    summary_set: bool = False
    # The graph or the summary was set by this batch (see DOCUMENT_FIELDS).
    documents_changed: bool = False
    # Set by a caller that changed its own bookkeeping on the run (such as the archive's offsets).
    progress_changed: bool = False
    # The JSON text of the appended events, for live subscribers; None once there are more than one
    # live message carries (they then read them from the database).
    live_payloads: list[str] | None = field(default_factory=list)

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

    def append(self, event: dict[str, Any], payload: str) -> int:
        """Adds a valid event (see `reduction.validate_event`); `payload` is its JSON text as stored,
        the event itself: on PostgreSQL the row's `ts`, `kind` and `node` are read back from it."""
        self.extend(((event, payload),))
        return self.reduction.next_seq - 1

    def extend(self, events: Iterable[tuple[dict[str, Any], str]]) -> None:
        """Adds valid events with their JSON text, in order. The import's inner loop: kept lean."""
        apply, diagnostics = self.reduction.apply, self.diagnostics
        write = self.sink.writer()
        run_pk, tenant_id = self.run.pk, self.run.tenant_id
        on_sqlite = not self.sink.copying
        adapt = connection.ops.adapt_datetimefield_value
        utc, utc_text = reduction.ts_utc, reduction.ts_utc_text
        # Kept by reference (the strings exist anyway); one append per event is all it costs.
        keep = (self.live_payloads if self.live_payloads is not None else []).append
        first = seq = self.reduction.next_seq
        for event, payload in events:
            found = apply(event)
            if found:
                diagnostics.extend(found)
            if self.run.graph is None and event["event"] == "run_start" and event.get("graph") is not None:
                self.run.graph = event["graph"]  # the reduction adopted it too
                self.nodes_changed = self.documents_changed = True
            # The UTC instant, never the producer's text (see _EventSink); SQLite stores what
            # Django's adapter writes.
            ts = adapt(utc(event["ts"])) if on_sqlite else utc_text(event["ts"])
            write((run_pk, seq, tenant_id, ts, event["event"], event.get("node"), payload))
            keep(payload)
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


class RunDeletedError(Exception):
    """A write to a run that retention has soft-deleted: nothing is appended to a deleted run.

    Appending would bring back a run its tenant's plan no longer keeps, half-visible; the run is
    restored (in the admin) first, or stays deleted. `retention` says when and why it was deleted.
    """

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} was deleted by retention")
        self.run_id = run_id


class RunBatch:
    """Changes to some runs of one tenant, written by one flush. Use through `run_batch_write`.

    Open (lock) every run first, then append: once events stream, the connection is busy.
    """

    def __init__(self, *, tenant: Tenant) -> None:
        self.tenant = tenant
        self.changes: dict[str, RunChange] = {}
        self.events = _EventSink()

    def open(self, run_ids: Iterable[str]) -> dict[str, RunChange]:
        """Locks the named runs so concurrent writers of one run queue; missing runs get an id now
        and their row at flush. Two writers that both find a run missing queue on a lock for its
        id until the first commits; the second then finds the first's run and locks it."""
        if self.events.streaming:
            raise RuntimeError("open every run before appending events")
        wanted = [run_id for run_id in dict.fromkeys(run_ids) if run_id not in self.changes]
        # Soft-deleted runs too: hidden, one would look missing, and a new row would break its
        # unique run id. A lock held by retention is waited for, then its deletion is seen here.
        # Several runs (an import): their creation locks first, then their rows, each in run id
        # order, so that no two writers of overlapping runs wait for each other in a cycle. One run
        # (a producer's request): its row, and its creation lock only if it is missing.
        several = len(wanted) > 1
        if several:
            _lock_run_creation(self.tenant, wanted)
        locked = {run.run_id: run for run in _runs_locked(self.tenant, wanted)}
        missing = [run_id for run_id in wanted if run_id not in locked]
        if missing and not several and _lock_run_creation(self.tenant, missing):
            locked.update((run.run_id, run) for run in _runs_locked(self.tenant, missing))
            missing = [run_id for run_id in wanted if run_id not in locked]
        for run in locked.values():
            if run.deleted_at is not None:
                raise RunDeletedError(run.run_id)
        for run_id, pk in zip(missing, _allocate_run_ids(len(missing)), strict=True):
            locked[run_id] = Run(pk=pk, tenant=self.tenant, run_id=run_id)
        for run_id in wanted:
            run = locked[run_id]
            self.changes[run_id] = RunChange(
                run=run,
                reduction=reduction.RunReduction(run_id, run.reduction_state),
                sink=self.events,
                created=run_id in missing,
            )
        return {run_id: self.changes[run_id] for run_id in wanted}

    def flush(self) -> list[RunChange]:
        """Writes every change; returns them, with each run row as now stored."""
        # The writes that are one statement each travel as one (`_Writes`): one round trip, and one
        # statement for PostgreSQL to run. Not psycopg's pipeline mode, which would keep them apart:
        # measured on these writes, waiting for a pipeline's results cost more CPU under load than
        # the round trips it saved. (A key's lookup does pipeline its two statements: they cannot
        # be one, see tenants.models.ApiKeyManager.pre_tenant_by_hash.)
        writes = _Writes()
        self.events.close(writes)
        changes = [c for c in self.changes.values() if c.touched]
        now = timezone.now()
        for change in changes:
            self._advance_row(change, now)
        self._insert_rows([c.run for c in changes if c.created], writes)
        updated = [c for c in changes if not c.created]
        self._update_rows([c.run for c in updated if c.documents_changed], ROW_FIELDS, writes)
        self._update_rows([c.run for c in updated if not c.documents_changed], PROGRESS_FIELDS, writes)
        self._write_nodes([c for c in changes if c.nodes_changed], writes)
        writes.execute()
        self._write_diagnostics(changes)
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

    def _insert_rows(self, runs: list[Run], writes: _Writes) -> None:
        columns = ("id", "tenant", "run_id", "created_at", *ROW_FIELDS)
        sink = _RowSink(Run, ("id", "tenant_id", *columns[2:]))
        write = sink.writer()
        for run in runs:
            write(_row_values(run, columns))
        sink.close(writes)

    def _update_rows(self, runs: list[Run], fields: tuple[str, ...], writes: _Writes) -> None:
        if not runs:
            return
        sql = _update_sql(fields)
        params = [(*_row_values(run, fields), run.pk) for run in runs]
        # On PostgreSQL, bound on the server (kahn_site.rows.bound_cursor): the JSON columns travel
        # as parameters instead of being quoted into the SQL text by Python, the statement is
        # prepared after a few uses, and psycopg pipelines executemany, so hundreds of runs cost
        # about one round trip.
        if len(params) == 1 and connection.vendor == "postgresql":
            writes.add(sql, list(params[0]))  # a producer's batch: with its other writes
            return
        with bound_cursor() as cursor:
            cursor.executemany(sql, params)

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

    def _write_nodes(self, changes: list[RunChange], writes: _Writes) -> None:
        # A batch moves few of a run's nodes: new nodes are inserted and changed ones updated, so a
        # producer's single event costs one node row, not a rewrite of the run's DAG.
        sink = _RowSink(RunNode, NODE_COLUMNS)
        write = sink.writer()
        changed: list[tuple[Any, ...]] = []
        for change in changes:
            stored = change.stored_nodes
            for position, (node, state, attempts) in enumerate(change.reduction.node_states()):
                before = stored.get(node)
                if before is None:
                    write((change.run.pk, self.tenant.pk, node, position, state, attempts))
                elif before != (position, state, attempts):
                    changed.append((position, state, attempts, change.run.pk, node, self.tenant.pk))
        sink.close(writes)
        if not changed:
            return
        table = connection.ops.quote_name(RunNode._meta.db_table)
        # One node row by its (run, node) unique index: a producer's event moves one node.
        by_row = (
            f"UPDATE {table} SET position = %s, state = %s, attempts = %s "
            "WHERE run_id = %s AND node_id = %s AND tenant_id = %s"
        )
        if connection.vendor != "postgresql":
            with connection.cursor() as cursor:
                cursor.executemany(by_row, changed)
        elif len(changed) == 1:
            writes.add(by_row, list(changed[0]))
        else:
            # Several nodes: one statement, the rows as one JSON parameter, so a batch that moves
            # every node of a run costs one plan and no client-side parsing of a placeholder a
            # value. The planner cannot see inside the JSON, so the runs are named apart, and one
            # run as one value: for an array, the plan PostgreSQL kept read every node row of the
            # tenant to join a handful (milliseconds per request).
            names = ("position", "state", "attempts", "run_id", "node_id")
            records = orjson.dumps([dict(zip(names, row[:5], strict=True)) for row in changed]).decode()
            run_pks = sorted({row[3] for row in changed})
            runs_named, run_param = ("= %s", run_pks[0]) if len(run_pks) == 1 else ("= ANY(%s)", run_pks)
            writes.add(
                f"UPDATE {table} AS n SET position = v.position, state = v.state, attempts = v.attempts "
                "FROM jsonb_to_recordset(%s::jsonb) "
                "AS v(position integer, state varchar, attempts integer, run_id bigint, node_id varchar) "
                f"WHERE n.run_id {runs_named} AND n.run_id = v.run_id AND n.node_id = v.node_id "
                "AND n.tenant_id = %s",
                [records, run_param, self.tenant.pk],
            )


def _row_values(run: Run, names: tuple[str, ...] = ROW_FIELDS) -> tuple[Any, ...]:
    """Run fields as database parameters. JSON is encoded by orjson, several times faster than the
    encoder Django would use; on PostgreSQL the other values go as they are (psycopg adapts numbers,
    text and aware datetimes itself), on SQLite each is prepared by its own field (SQLite stores
    times as Django's text, not the driver's). Every producer's request writes one run row."""
    values = []
    on_postgresql = connection.vendor == "postgresql"
    for attname, is_json, model_field in _row_fields(names, connection.vendor):
        value = getattr(run, attname)
        if is_json:
            values.append(None if value is None else _json_param(value, on_postgresql))
        elif model_field is None:
            values.append(value)
        else:
            values.append(model_field.get_db_prep_save(value, connection))
    return tuple(values)


@functools.cache
def _row_fields(names: tuple[str, ...], vendor: str) -> tuple[tuple[str, bool, Any], ...]:
    """For each name: its attribute, whether it is JSON, and the field to prepare it (None: as is)."""
    fields = [cast(Field, Run._meta.get_field(name)) for name in names]
    return tuple((f.attname, isinstance(f, JSONField), None if vendor == "postgresql" else f) for f in fields)


def _json_param(value: Any, on_postgresql: bool) -> Any:
    text = orjson.dumps(value).decode()
    return Jsonb(value, dumps=lambda _: text) if on_postgresql else text


@functools.cache
def _update_sql(fields: tuple[str, ...]) -> str:
    """The UPDATE of these run fields by id, written once (every producer's request runs one)."""
    quote = connection.ops.quote_name
    # Every name is a concrete field's, with a column (get_field may also answer a relation).
    assignments = ", ".join(
        f"{quote(cast(str, cast(Field, Run._meta.get_field(f)).column))} = %s" for f in fields
    )
    return f"UPDATE {Run._meta.db_table} SET {assignments} WHERE id = %s"


def _runs_locked(tenant: Tenant, run_ids: list[str]) -> list[Run]:
    """The tenant's runs of these ids, soft-deleted ones too, each row locked until commit.

    Every producer's request starts here, so it is one hand-written statement (`kahn_site.rows`),
    not a queryset compiled anew each time; the rows are locked in run id order, so two writers of
    overlapping runs queue instead of deadlocking.
    """
    if not run_ids:
        return []
    run = columns(Run, "r")
    if connection.vendor == "postgresql" and len(run_ids) == 1:
        # A producer's request: a plan PostgreSQL makes once and keeps (for an array it planned anew
        # each time, which cost more than the lookup).
        where, params, lock = "r.run_id = %s", [tenant.pk, run_ids[0]], " FOR UPDATE"
    elif connection.vendor == "postgresql":
        where, params, lock = "r.run_id = ANY(%s)", [tenant.pk, run_ids], " FOR UPDATE"
    else:  # one writer at a time: SQLite has no row locks to take
        where, params, lock = f"r.run_id IN ({', '.join(['%s'] * len(run_ids))})", [tenant.pk, *run_ids], ""
    with bound_cursor() as cursor:
        cursor.execute(
            f"SELECT {run.sql} FROM {Run._meta.db_table} r WHERE r.tenant_id = %s AND {where} "
            f"ORDER BY r.run_id{lock}",
            params,
        )
        return [run.instance(row) for row in cursor.fetchall()]


def _lock_run_creation(tenant: Tenant, run_ids: list[str]) -> bool:
    """Takes, until commit, a lock on creating each of these runs (PostgreSQL); whether it did.

    A transaction-level advisory lock per (tenant, run id), taken in run id order: a writer that
    would create a run waits here for any other writer about to create it, and reads after. SQLite
    has one writer at a time, so nobody else can be creating the run.
    """
    if connection.vendor != "postgresql":
        return False
    with bound_cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s || ':' || run_id, 0)) "
            "FROM unnest(%s::text[]) AS run_id ORDER BY run_id",
            [str(tenant.pk), sorted(run_ids)],
        )
    return True


def _allocate_run_ids(count: int) -> list[int]:
    """Primary keys for runs about to be inserted, so their events can be written before them."""
    if not count:
        return []
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
                [Run._meta.db_table, count],
            )
            return [pk for (pk,) in cursor.fetchall()]
        # SQLite has one writer at a time (transactions begin IMMEDIATE), so the next ids are free;
        # sqlite_sequence remembers ids of deleted rows too, which are never reused.
        cursor.execute(
            "SELECT MAX(n) FROM (SELECT MAX(id) AS n FROM runs_run UNION ALL "
            "SELECT seq FROM sqlite_sequence WHERE name = 'runs_run')"
        )
        (last,) = cursor.fetchone()
        start = (last or 0) + 1
        return list(range(start, start + count))


def _datetime(value: str | None) -> datetime | None:
    return reduction.parse_ts(value) if value is not None else None


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
        _lock_run_creation(tenant, [run_id])
        run = Run.objects.including_deleted().select_for_update().filter(run_id=run_id).first()
        failures = (run.import_failures if run is not None else 0) + 1
        retry_at = now + import_retry_delay(failures)
        if run is None:
            Run.objects.create(
                tenant=tenant, run_id=run_id, import_error=error, import_failures=1, import_retry_at=retry_at
            )
        else:
            run.import_error, run.import_failures, run.import_retry_at = error, failures, retry_at
            run.save(update_fields=["import_error", "import_failures", "import_retry_at"])
    return retry_at


def run_import_succeeded(*, tenant: Tenant, runs: list[Run]) -> None:
    """Clears the import error of runs whose import now goes through (in the batch that imports
    them, before its events stream: the connection is then busy)."""
    if runs:
        Run.objects.including_deleted().filter(tenant=tenant, pk__in=[run.pk for run in runs]).update(
            import_error="", import_failures=0, import_retry_at=None
        )
        for run in runs:
            run.import_error, run.import_failures, run.import_retry_at = "", 0, None


def run_batch_write(*, tenant: Tenant, write: Callable[[RunBatch], T]) -> tuple[T, list[RunChange]]:
    """Runs `write(batch)` in one transaction for `tenant`, then flushes the batch.

    Inside an enclosing transaction it is a savepoint, so a caller may catch an error and go on (the
    importer drops a run retention deleted and writes its chunk again); directly inside a request's
    own transaction it is not: the request is the unit of work, rolled back whole with an error
    answer, and a savepoint would cost a producer's every request two round trips.
    """
    with tenant_atomic(tenant, savepoint=not directly_in_request_transaction()):
        batch = RunBatch(tenant=tenant)
        try:
            result = write(batch)
        except BaseException:
            batch.events.discard()
            raise
        changes = batch.flush()
        # Live sockets learn of what is committed, never of what may still roll back: after the
        # outermost commit (a request's own transaction, in cloud mode), or not at all.
        transaction.on_commit(partial(live_publish_changes, changes), robust=True)
        return result, changes
