"""Thin tasks: take ids, call one service, safe to run twice."""

from __future__ import annotations

import uuid

from botocore.exceptions import BotoCoreError, ClientError
from celery import shared_task
from django.db import OperationalError

from media.services import (
    FINISH_UPLOAD_TASK,
    SWEEP_UPLOADS_TASK,
    THUMBNAIL_TASK,
    thumbnail_create,
    upload_finish,
    uploads_sweep,
)

_TRANSIENT = (OperationalError, BotoCoreError, ClientError)


@shared_task(
    name=FINISH_UPLOAD_TASK,
    acks_late=True,
    autoretry_for=_TRANSIENT,
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=8,
)
def finish_upload_task(upload_id: str) -> str:
    return upload_finish(uuid.UUID(upload_id))


@shared_task(
    name=THUMBNAIL_TASK,
    acks_late=True,
    autoretry_for=_TRANSIENT,
    retry_backoff=True,
    max_retries=3,
)
def make_thumbnail_task(upload_id: str) -> str:
    return thumbnail_create(uuid.UUID(upload_id))


@shared_task(name=SWEEP_UPLOADS_TASK, acks_late=True)
def sweep_uploads_task() -> dict[str, int]:
    return vars(uploads_sweep())
