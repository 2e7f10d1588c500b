"""Database connections of a request thread, as the per-process pool hands them out."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from django.conf import settings
from django.db import connection
from django.db.models import Model

ModelT = TypeVar("ModelT", bound=Model)


def release_connection() -> None:
    """Give this thread's connection back to the pool before waiting on something slow (a
    phone sending a body, another request's upload lease); the next query takes one again.

    A connection kept over such a wait is one the API lacks: a process has only
    DB_POOL_MAX_SIZE of them however many threads it runs. Inside a transaction the
    connection carries the transaction and stays.
    """
    if connection.in_atomic_block or not connection.settings_dict["OPTIONS"].get("pool"):
        return
    connection.close()


# --- Prepared statements for the hot paths ---------------------------------------------------


def fetch_prepared(
    sql: str, params: Sequence[Any] | Mapping[str, Any]
) -> tuple[list[tuple[Any, ...]], list[str], int]:
    """Run one of the hot paths' fixed statements as a prepared statement on this thread's
    connection: its rows, its column names and its row count.

    Django binds parameters on the client, so Postgres plans every statement it is sent
    afresh, and a statement over the history tables (partitioned by month, one partition per
    month kept) costs more to plan than to run. Bound on the server and prepared, it is
    planned once per connection (and, after a few runs, with a generic plan Postgres keeps).
    With DB_PREPARED_STATEMENTS off (behind PgBouncer in transaction mode before 1.21, which
    cannot carry a prepared statement from one transaction to the next) it is run as any
    other query.

    Django's error translation, broken-transaction check and query log (which tests and
    benchmarks count) apply as for its own cursors.
    """
    if not settings.DB_PREPARED_STATEMENTS:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall() if cursor.description else []
            names = [c.name for c in cursor.description or ()]
            return rows, names, cursor.rowcount
    connection.validate_no_broken_transaction()
    connection.ensure_connection()
    started = time.monotonic()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql.encode(), params, prepare=True)
        rows = cursor.fetchall() if cursor.description else []
        names = [c.name for c in cursor.description or ()]
        count = cursor.rowcount
    if connection.queries_logged:
        connection.queries_log.append(
            {"sql": f"[prepared] {sql}", "time": f"{time.monotonic() - started:.3f}"}
        )
    return rows, names, count


def models_prepared(
    model: type[ModelT], sql: str, params: Sequence[Any] | Mapping[str, Any]
) -> list[ModelT]:
    """``model.objects.raw(sql, params)`` as a prepared statement (``fetch_prepared``): the
    model's columns become its fields, any other column an attribute of that name."""
    rows, names, _ = fetch_prepared(sql, params)
    index = {name: i for i, name in enumerate(names)}
    # from_db takes the fields read in the model's order (the others are deferred), and
    # their values as each field's converters leave them (a JSONField's text parsed).
    table = model._meta.db_table
    read = [f for f in model._meta.concrete_fields if f.column in index]
    fields = [f.attname for f in read]
    picks = [
        (index[str(f.column)], [(c, f.get_col(table)) for c in f.get_db_converters(connection)])
        for f in read
    ]
    columns = {f.column for f in read}
    extras = [(i, n) for i, n in enumerate(names) if n not in columns]
    found = []
    for row in rows:
        values = []
        for i, converters in picks:
            value = row[i]
            for convert, column in converters:
                value = convert(value, column, connection)
            values.append(value)
        obj = model.from_db(connection.alias, fields, values)
        for i, name in extras:
            setattr(obj, name, row[i])
        found.append(obj)
    return found
