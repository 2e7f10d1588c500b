"""Database connections of a request thread, as the per-process pool hands them out."""

from __future__ import annotations

from django.db import connection


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
