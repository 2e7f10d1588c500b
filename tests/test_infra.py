"""The test infrastructure itself: object store and Celery worker are real and reachable."""

from __future__ import annotations

import uuid

import psutil  # type: ignore[import-untyped]
import pytest

from devstack.ensure_bucket import S3Settings
from syncserver import celery_app
from tests.conftest import CeleryWorker
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_object_store_returns_what_was_put(s3_server: S3Settings) -> None:
    client = s3_server.client()
    key = f"infra/{uuid.uuid4()}"

    client.put_object(Bucket=s3_server.bucket, Key=key, Body=b"field data")
    stored = client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()

    assert stored == b"field data"
    client.delete_object(Bucket=s3_server.bucket, Key=key)


def test_celery_worker_answers_ping(celery_worker: CeleryWorker) -> None:
    replies = celery_app.control.ping(destination=[celery_worker.hostname], timeout=2.0) or []

    assert [celery_worker.hostname] == [name for reply in replies for name in reply]


def test_killed_worker_takes_its_pool_along_and_restarts(celery_worker: CeleryWorker) -> None:
    before = psutil.Process(celery_worker.pid)
    pool = before.children()
    assert len(pool) == 2

    celery_worker.kill()

    wait_until(lambda: not any(map(_alive, pool)), timeout=5, message="pool outlived the kill")
    celery_worker.restart()
    assert celery_worker.pid != before.pid
    assert celery_app.control.ping(destination=[celery_worker.hostname], timeout=2.0)


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
