"""The doorbell: ask a Celery worker to run a task, now or once the transaction commits.

Redis is a doorbell, never the only copy of work. Every task rung here finds what to do in
Postgres, and a periodic sweep rings again for whatever a lost message, a flushed Redis or a
dead worker left behind. So a ring is best effort: a broker failure is logged and never
reaches the request that rang.

Tasks are rung by name, so a service never imports the task module that calls it back (the
task modules import their services; nothing imports the other way).
"""

from __future__ import annotations

from celery import current_app
from django.db import transaction

from common.logging import current_request_id, log_warning


def ring(task: str, *args: str) -> None:
    """Publish ``task(*args)`` without retrying; a failure is logged, never raised. The
    current request id goes along, so the task's log lines carry it too."""
    try:
        headers = {"request_id": current_request_id()}
        current_app.send_task(task, args=args, retry=False, headers=headers)
    except Exception as exc:  # noqa: BLE001 - any broker failure is survivable here
        log_warning("worker.ring_failed", task=task, task_args=list(args), error=repr(exc))


def ring_after_commit(task: str, *args: str) -> None:
    """Ring once the current transaction commits (at once outside a transaction), so the
    worker never looks for rows it cannot see yet."""
    transaction.on_commit(lambda: ring(task, *args))
