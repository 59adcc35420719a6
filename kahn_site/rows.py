"""Model instances from hand-written SELECTs, converted exactly as the ORM converts them.

For the two reads every producer's request makes (its API key, its run's locked row): building the
same queryset again for each request cost more CPU than the request's writes. Here a model's columns
are listed once per process, its SQL is written once by its caller, and each row becomes an
instance through the same database converters (JSON text, SQLite times) and `Model.from_db`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar, cast

import psycopg
from django.db import connection, connections
from django.db.models import Model

M = TypeVar("M", bound=Model)

Converter = Callable[[Any, Any, Any], Any]


class Columns(Generic[M]):
    """A model's concrete columns under a table alias: `sql` to select them, `instance` to read them."""

    def __init__(self, model: type[M], alias: str) -> None:
        self.model = model
        fields = model._meta.concrete_fields
        quote = connection.ops.quote_name
        # Concrete fields: each has its column.
        self.sql = ", ".join(f"{alias}.{quote(cast(str, f.column))}" for f in fields)
        self.width = len(fields)
        self.converters: list[tuple[int, Any, list[Converter]]] = []
        for index, model_field in enumerate(fields):
            column = model_field.get_col(alias)
            found = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
            if found:
                self.converters.append((index, column, found))

    def instance(self, row: Sequence[Any], start: int = 0) -> M:
        """The instance whose columns begin at `row[start]`, as `QuerySet` would have made it."""
        values = list(row[start : start + self.width])
        for index, column, converters in self.converters:
            value = values[index]
            for convert in converters:
                value = convert(value, column, connection)
            values[index] = value
        # Every column, so Django reads no field names (its stubs ask for them all the same).
        return self.model.from_db(connection.alias, None, values)  # type: ignore[arg-type]


@functools.cache
def columns_of(model: type[M], alias: str, vendor: str) -> Columns[M]:
    """Cached per database vendor: the converters differ between SQLite and PostgreSQL."""
    return Columns(model, alias)


def columns(model: type[M], alias: str) -> Columns[M]:
    return columns_of(model, alias, connection.vendor)


@contextmanager
def bound_cursor(using: str = "default") -> Iterator[Any]:
    """A cursor for a statement a request runs every time: on PostgreSQL psycopg's own, which binds
    parameters on the server, so after a few uses the statement is prepared and not planned again,
    and a large JSON parameter is sent as it is instead of quoted into the SQL text; elsewhere
    Django's (SQLite's driver does not take `%s` placeholders)."""
    database = connections[using]
    if database.vendor != "postgresql":
        with database.cursor() as cursor:
            yield cursor
        return
    database.ensure_connection()
    # As Django's cursors do: nothing runs in a transaction an error has broken.
    database.validate_no_broken_transaction()
    # Not `connection.connection.cursor()`: Django makes its connections' cursors bind on the client.
    # Its errors are raised as Django's (IntegrityError, DatabaseError), as from any other cursor.
    with database.wrap_database_errors, psycopg.Cursor(database.connection) as cursor:
        yield cursor
