"""The doorbell: ask a Celery worker to run a task, now or once the transaction commits.

Redis is a doorbell, never the only copy of work. Every task rung here finds what to do in
Postgres, and a periodic sweep rings again for whatever a lost message, a flushed Redis or a
dead worker left behind. So a ring is best effort: a broker failure is logged and never
reaches the request that rang.

Tasks are rung by name, so a service never imports the task module that calls it back (the
task modules import their services; nothing imports the other way).
"""

from __future__ import annotations

import redis
from celery import current_app
from django.db import transaction

from common.logging import current_request_id, log_warning
from common.shared_redis import shared_redis

# How long a coalescing flag may outlive a ring whose message was lost: after this, the
# next ring sends again (the sweep covers the rest).
FLAG_SECONDS = 5


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


def ring_coalesced(task: str, flag: str) -> None:
    """Ring ``task`` (no arguments) unless a ring of it is already waiting for a worker.

    ``flag`` is set when a ring is sent and cleared by the task as it starts (``answered``),
    before it looks for work: whatever commits after that rings again, whatever committed
    before it is found. So a thousand pushes a second send a handful of messages, not a
    thousand. When Redis cannot say, ring anyway."""
    try:
        if not shared_redis().set(flag, "1", nx=True, ex=FLAG_SECONDS):
            return
    except redis.RedisError as exc:
        log_warning("worker.flag_unavailable", task=task, error=repr(exc))
    ring(task)


def answered(flag: str) -> None:
    """The task rung under ``flag`` has started: the next ring must send again."""
    try:
        shared_redis().delete(flag)
    except redis.RedisError as exc:
        log_warning("worker.flag_unavailable", flag=flag, error=repr(exc))
