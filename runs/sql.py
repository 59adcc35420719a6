"""The write path's hand-written SQL, and only it: the bulk loader (COPY, one-statement INSERTs)
and the few statements a producer's request makes (lock its run, create it, update its row and
nodes). Column lists come from the models' `_meta`: a Run field the reduction fills is written
without naming it here.

Everything else reads and writes through the ORM; `runs.services` decides what to write, here is
only how.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, cast

import orjson
from django.db import connection
from django.db.models import NOT_PROVIDED, Field, JSONField, Model
from django.utils import timezone
from psycopg.types.json import Jsonb

from kahn_site.rows import bound_cursor, columns
from runs.models import Event, Run, RunNode
from tenants.models import Tenant

# A run's identity, written once when its row is created.
RUN_IDENTITY = ("id", "tenant", "run_id", "created_at")
# Run fields other code owns: retention's deletion marks, and the archive import's failure record.
RUN_FIELDS_OWNED_ELSEWHERE = (
    "deleted_at",
    "restored_at",
    "import_error",
    "import_failures",
    "import_retry_at",
)
# Run fields the write path owns, written back at every flush: every other field of the model.
ROW_FIELDS = tuple(
    f.name for f in Run._meta.concrete_fields if f.name not in RUN_IDENTITY + RUN_FIELDS_OWNED_ELSEWHERE
)
# A run's graph and summary are written once: an UPDATE carries them only when they changed, as
# sending the run's DAG back with every batch cost the server more than the batch's own row did.
DOCUMENT_FIELDS = ("graph", "summary")
PROGRESS_FIELDS = tuple(f for f in ROW_FIELDS if f not in DOCUMENT_FIELDS)


def column(field: Field[Any, Any]) -> str:
    # A concrete field always has its column.
    return cast(str, field.column)


def _columns(model: type[Model], *, primary_key: bool = True) -> tuple[str, ...]:
    return tuple(column(f) for f in model._meta.concrete_fields if primary_key or not f.primary_key)


def run_field(name: str) -> Field[Any, Any]:
    # A Run field by name; the write path names no reverse relation.
    return cast("Field[Any, Any]", Run._meta.get_field(name))


# In model order; the write path builds each row in this order (`runs.services.RunChange.extend`).
EVENT_COLUMNS = _columns(Event)
NODE_COLUMNS = _columns(RunNode, primary_key=False)


# Up to this many rows go in as one INSERT, with the rows as one JSON parameter: no temporary table
# (DDL), no COPY round trips, and under row-level security no second copy of the rows; measured as
# the service role, it beats a temporary table up to this size (README, Benchmarks).
# Past it, rows stream into a COPY while Python prepares the next: an import's bulk, not a request's.
ROWS_IN_ONE_INSERT = 1000


class RowSink:
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
            held, self._rows = self._rows, []
            self._open_copy()
            for row_held in held:
                self._write(row_held)

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

    def close(self, writes: Writes | None = None) -> None:
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
            own = Writes() if writes is None else writes
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


class Writes:
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
    record, json_columns = "", tuple[int, ...]()
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


class EventSink(RowSink):
    """Events on their way into runs_event. In one INSERT they travel as each run's payloads, one
    JSON array after its first seq, beside their UTC times: the server takes `kind` and `node`
    from the payload itself (what the row's columns are made of), and numbers the seqs: about half
    the server's work of a row per column, near the cost of a COPY, and half the JSON for the client
    to write.
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
    known: tuple[Any, bool] | None = getattr(connection, "kahn_rls_exemption", None)
    if known is None or known[0] != role:
        with connection.cursor() as cursor:
            cursor.execute("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user")
            known = (role, bool(cursor.fetchone()[0]))
        setattr(connection, "kahn_rls_exemption", known)  # noqa: B010 (not an attribute Django declares)
    return known[1]


def run_values(run: Run, names: tuple[str, ...] = ROW_FIELDS) -> tuple[Any, ...]:
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
    fields = [run_field(name) for name in names]
    return tuple((f.attname, isinstance(f, JSONField), None if vendor == "postgresql" else f) for f in fields)


def _json_param(value: Any, on_postgresql: bool) -> Any:
    text = orjson.dumps(value).decode()
    return Jsonb(value, dumps=lambda _: text) if on_postgresql else text


@functools.cache
def _update_sql(fields: tuple[str, ...]) -> str:
    """The UPDATE of these run fields by id, written once (every producer's request runs one)."""
    quote = connection.ops.quote_name
    assignments = ", ".join(f"{quote(column(run_field(f)))} = %s" for f in fields)
    return f"UPDATE {Run._meta.db_table} SET {assignments} WHERE id = %s"


def run_rows_locked(tenant: Tenant, run_ids: list[str]) -> list[Run]:
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


def run_rows_create(tenant: Tenant, run_ids: list[str]) -> set[str]:
    """Creates the rows of those of these runs the tenant does not have yet, each with the model's
    defaults, in run id order; returns the run ids it created. The rows are this transaction's until
    commit: a writer creating the same run waits for it on the unique index, then finds it.

    Only missing runs are inserted (on PostgreSQL, as of this statement, runs other writers have
    not committed yet count as missing, and their insert is waited for), so no id is drawn for a run
    that exists, and runs are created in the same order as they are locked (`run_rows_locked`).
    """
    if not run_ids:
        return set()
    now = timezone.now()
    names, values = _new_run_columns(now)
    quote = connection.ops.quote_name
    table = quote(Run._meta.db_table)
    column_sql = ", ".join(quote(name) for name in ("tenant_id", "run_id", *names))
    conflict = f"ON CONFLICT ({quote('tenant_id')}, {quote('run_id')}) DO NOTHING"
    if connection.vendor == "postgresql":
        constants = ", ".join(["%s"] * len(values))
        with bound_cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} ({column_sql}) SELECT %s, w.run_id, {constants} "
                "FROM unnest(%s::text[]) AS w(run_id) "
                f"WHERE NOT EXISTS (SELECT 1 FROM {table} e WHERE e.tenant_id = %s AND e.run_id = w.run_id) "
                f"ORDER BY w.run_id {conflict} RETURNING run_id",
                [tenant.pk, *values, sorted(run_ids), tenant.pk],
            )
            return {run_id for (run_id,) in cursor.fetchall()}
    # SQLite has one writer at a time: the runs missing now are the ones it creates.
    with connection.cursor() as cursor:
        placeholders = ", ".join(["%s"] * len(run_ids))
        cursor.execute(
            f"SELECT run_id FROM {table} WHERE tenant_id = %s AND run_id IN ({placeholders})",
            [tenant.pk, *run_ids],
        )
        missing = sorted(set(run_ids) - {run_id for (run_id,) in cursor.fetchall()})
        row = ", ".join(["%s"] * (len(values) + 2))
        cursor.executemany(
            f"INSERT INTO {table} ({column_sql}) VALUES ({row}) {conflict}",
            [(tenant.pk, run_id, *values) for run_id in missing],
        )
    return set(missing)


def _new_run_columns(now: Any) -> tuple[tuple[str, ...], list[Any]]:
    """The columns of a new run's row besides its tenant and id, and their values: each field's
    default, prepared for the database; fields with a database default are left to it."""
    names: list[str] = []
    values: list[Any] = []
    on_postgresql = connection.vendor == "postgresql"
    for model_field in Run._meta.concrete_fields:
        if model_field.primary_key or model_field.name in ("tenant", "run_id"):
            continue
        if model_field.db_default is not NOT_PROVIDED:
            continue
        value = now if model_field.name in ("created_at", "updated_at") else model_field.get_default()
        if isinstance(model_field, JSONField):
            value = None if value is None else _json_param(value, on_postgresql)
        else:
            value = model_field.get_db_prep_save(value, connection)
        names.append(column(model_field))
        values.append(value)
    return tuple(names), values


def run_rows_update(runs: list[Run], fields: tuple[str, ...], writes: Writes) -> None:
    """Writes these fields of these runs back to their rows, by id."""
    if not runs:
        return
    on_postgresql = connection.vendor == "postgresql"
    if on_postgresql and len(runs) > 1:
        # An import's runs: one statement, the rows as one JSON parameter, rather than a
        # statement a run (the policy checks and the executor's start, once per run otherwise).
        # The runs are named apart, so the planner reads them by their primary key.
        names = [attname for attname, _, _ in _row_fields(fields, connection.vendor)]
        records = orjson.dumps(
            [{"id": run.pk, **{name: getattr(run, name) for name in names}} for run in runs]
        ).decode()
        writes.add(_update_many_sql(fields), [records, [run.pk for run in runs]])
        return
    sql = _update_sql(fields)
    params = [(*run_values(run, fields), run.pk) for run in runs]
    if on_postgresql:
        # A producer's batch: bound on the server (kahn_site.rows.bound_cursor), the JSON columns
        # as parameters, with the batch's other writes.
        writes.add(sql, list(params[0]))
        return
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


@functools.cache
def _update_many_sql(fields: tuple[str, ...]) -> str:
    """The UPDATE of these fields of several runs, from a JSON array of their rows (PostgreSQL)."""
    quote = connection.ops.quote_name
    model_fields = [run_field(f) for f in fields]
    record = ", ".join(f"{quote(f.attname)} {f.db_type(connection)}" for f in model_fields)
    assignments = ", ".join(f"{quote(column(f))} = v.{quote(f.attname)}" for f in model_fields)
    return (
        f"UPDATE {quote(Run._meta.db_table)} AS r SET {assignments} "
        f"FROM jsonb_to_recordset(%s::jsonb) AS v(id bigint, {record}) "
        "WHERE r.id = ANY(%s) AND r.id = v.id"
    )


def run_nodes_write(
    tenant: Tenant,
    new: Iterable[tuple[int, str, int, str, int]],
    changed: list[tuple[int, str, int, str, int]],
    writes: Writes,
) -> None:
    """Inserts `new` node rows and updates `changed` ones, each (run pk, node id, position, state,
    attempts). A batch moves few of a run's nodes: a producer's single event costs one node row,
    not a rewrite of the run's DAG."""
    sink = RowSink(RunNode, NODE_COLUMNS)
    write = sink.writer()
    for run_pk, node, position, state, attempts in new:
        write((run_pk, tenant.pk, node, position, state, attempts))
    sink.close(writes)
    if not changed:
        return
    table = connection.ops.quote_name(RunNode._meta.db_table)
    # One node row by its (run, node) unique index: a producer's event moves one node.
    by_row = (
        f"UPDATE {table} SET position = %s, state = %s, attempts = %s "
        "WHERE run_id = %s AND node_id = %s AND tenant_id = %s"
    )
    rows = [(position, state, attempts, run_pk, node) for run_pk, node, position, state, attempts in changed]
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.executemany(by_row, [(*row, tenant.pk) for row in rows])
    elif len(rows) == 1:
        writes.add(by_row, [*rows[0], tenant.pk])
    else:
        # Several nodes: one statement, the rows as one JSON parameter, so a batch that moves
        # every node of a run costs one plan and no client-side parsing of a placeholder a
        # value. The planner cannot see inside the JSON, so the runs are named apart, and one
        # run as one value: for an array, the plan PostgreSQL kept read every node row of the
        # tenant to join a handful (milliseconds per request).
        names = ("position", "state", "attempts", "run_id", "node_id")
        records = orjson.dumps([dict(zip(names, row, strict=True)) for row in rows]).decode()
        run_pks = sorted({row[3] for row in rows})
        runs_named, run_param = ("= %s", run_pks[0]) if len(run_pks) == 1 else ("= ANY(%s)", run_pks)
        writes.add(
            f"UPDATE {table} AS n SET position = v.position, state = v.state, attempts = v.attempts "
            "FROM jsonb_to_recordset(%s::jsonb) "
            "AS v(position integer, state varchar, attempts integer, run_id bigint, node_id varchar) "
            f"WHERE n.run_id {runs_named} AND n.run_id = v.run_id AND n.node_id = v.node_id "
            "AND n.tenant_id = %s",
            [records, run_param, tenant.pk],
        )
