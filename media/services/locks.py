"""The per-upload lock that serialises the requests writing to one upload."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import DatabaseError, OperationalError, connection, transaction

from media.exceptions import Refusal, UploadError


def upload_lock_key(upload_id: uuid.UUID) -> int:
    return int.from_bytes(upload_id.bytes[:8], "big", signed=True)


@contextmanager
def upload_lock(upload_id: uuid.UUID, wait_seconds: float) -> Iterator[None]:
    """Hold the upload's lock: a session-level Postgres advisory lock on this thread's
    connection. Postgres frees it when the session ends, so a process that dies holding it
    (even by SIGKILL) leaves nothing locked; a live holder keeps it. Waits up to
    ``wait_seconds`` for a holder that is finishing, then answers 423."""
    key = upload_lock_key(upload_id)
    if not try_lock(upload_id):  # the usual case costs one round trip
        _wait_for_lock(key, wait_seconds)
    try:
        yield
    finally:
        unlock(key)


def _wait_for_lock(key: int, wait_seconds: float) -> None:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, true)",
                [f"{max(1, int(wait_seconds * 1000))}ms"],
            )
            cursor.execute("SELECT pg_advisory_lock(%s)", [key])
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == "55P03":  # lock_not_available
            raise UploadError(
                "upload_locked", "another request is writing to this upload; retry", Refusal.LOCKED
            ) from exc
        raise


def unlock(key: int) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
    except DatabaseError:
        # Ending the session is what releases a session lock we could not release by hand.
        connection.close()


def try_lock(upload_id: uuid.UUID) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [upload_lock_key(upload_id)])
        row = cursor.fetchone()
    return bool(row and row[0])
