"""Thin tasks: take ids, call one service, safe to run twice. Services ring them by name
(``common.doorbell``), so nothing below imports this module."""

from __future__ import annotations

import uuid

from celery import shared_task
from django.db import OperationalError

from operations.services import (
    APPLY_TASK,
    DRAIN_TASK,
    device_apply_pending,
    history_compact,
    ops_apply_drain,
    ops_sweep,
)


@shared_task(
    name=APPLY_TASK,
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=30,
    max_retries=5,
)
def apply_device_ops_task(device_id: str) -> int:
    # A device another round holds is left to it: never wait for a lost host's session.
    return device_apply_pending(uuid.UUID(device_id), wait=False)


@shared_task(
    name=DRAIN_TASK,
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=30,
    max_retries=5,
)
def apply_pending_ops_task() -> int:
    return ops_apply_drain()


@shared_task(acks_late=True)
def sweep_pending_ops_task() -> int:
    return len(ops_sweep())


@shared_task(acks_late=True)
def compact_history_task() -> int:
    return history_compact()
