"""A web process's Postgres connections are its pool's, whatever its threads do: a real
gunicorn (gunicorn.conf.py) with a pool far smaller than its threads, slow phones uploading
through it, and a request that finds every connection busy."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from django.conf import settings
from django.db import connection

from accounts.services import token_issue
from devstack.ensure_bucket import S3Settings
from media.models import Upload
from tests.conftest import _database_url
from tests.fixtures import Phone
from tests.helpers import wait_until
from tests.media.conftest import TEST_PART_SIZE, TUS, WebServer, encode_metadata

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("s3_server")]

# Every connection the server opens says so, and only those are counted.
APPLICATION_NAME = "fieldsync-pool-test"
POOL_SIZE = 2
SLOW_PHONES = 3 * POOL_SIZE
TRICKLE_RATE = 64 * 1024  # bytes per second per phone
TRICKLE_BYTES = 192 * 1024  # three seconds' worth each


def _server(extra_env: dict[str, str]) -> Iterator[WebServer]:
    log_fd, log_name = tempfile.mkstemp(prefix="fieldsync-pool-web-", suffix=".log")
    os.close(log_fd)
    env = {
        **os.environ,
        "DATABASE_URL": f"{_database_url(connection.settings_dict)}"
        f"?application_name={APPLICATION_NAME}",
        "REDIS_URL": settings.REDIS_URL,
        "UPLOADS_PART_SIZE": str(TEST_PART_SIZE),
        "PYTHONUNBUFFERED": "1",
        # One process of gunicorn.conf.py's 64 threads.
        "WEB_CONCURRENCY": "1",
        **extra_env,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server = WebServer(env, Path(log_name))
    try:
        server.start()
        yield server
    finally:
        server.kill()
        Path(log_name).unlink(missing_ok=True)


@pytest.fixture
def small_pool_web(django_db_setup: None, s3_server: S3Settings) -> Iterator[WebServer]:
    yield from _server({"DB_POOL_MAX_SIZE": str(POOL_SIZE), "DB_POOL_TIMEOUT": "3"})


@pytest.fixture
def one_connection_web(django_db_setup: None, s3_server: S3Settings) -> Iterator[WebServer]:
    yield from _server({"DB_POOL_MAX_SIZE": "1", "DB_POOL_TIMEOUT": "0.5"})


def _server_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            [APPLICATION_NAME],
        )
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def _create(web: WebServer, authorization: str, work_order: str) -> str:
    attachment_id = str(uuid.uuid4())
    meta = {
        "attachment_id": attachment_id,
        "work_order_id": work_order,
        "filename": "roof.mp4",
        "content_type": "video/mp4",
        "kind": "video",
    }
    response = requests.post(
        f"{web.url}/api/v1/uploads/",
        headers={
            **TUS,
            "Authorization": authorization,
            "Upload-Length": str(TRICKLE_BYTES),
            "Upload-Metadata": encode_metadata(meta),
        },
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return attachment_id


def _trickle(port: int, attachment_id: str, authorization: str, answers: list[int]) -> None:
    """Send a PATCH body at TRICKLE_RATE, as a phone on a weak signal does."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(
            (
                f"PATCH /api/v1/uploads/{attachment_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: {authorization}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                f"Content-Type: application/offset+octet-stream\r\n"
                f"Content-Length: {TRICKLE_BYTES}\r\n\r\n"
            ).encode()
        )
        piece = TRICKLE_RATE // 8
        for _ in range(TRICKLE_BYTES // piece):
            sock.sendall(b"t" * piece)
            # The pacing is the load being simulated, not a wait for a condition.
            time.sleep(1 / 8)
        answer = sock.recv(4096)
    answers.append(int(answer.split(b" ", 2)[1]))


def _timed(call: Callable[[], requests.Response]) -> tuple[int, float]:
    started = time.perf_counter()
    response = call()
    return response.status_code, time.perf_counter() - started


def test_slow_uploads_leave_the_api_its_connections(
    small_pool_web: WebServer, tech: Phone, work_order: str
) -> None:
    # Given a web process with a pool of 2 connections, and three times as many phones each
    # sending a PATCH body at 64 KiB/s
    web = small_pool_web
    authorization = f"Token {token_issue(tech.user)}"
    ids = [_create(web, authorization, work_order) for _ in range(SLOW_PHONES)]
    answers: list[int] = []
    phones = [
        threading.Thread(target=_trickle, args=(web.port, i, authorization, answers)) for i in ids
    ]
    for phone in phones:
        phone.start()
    # (every one of them holds its upload's lease: all are being written at once)
    wait_until(
        lambda: Upload.objects.filter(pk__in=ids, lease_token__isnull=False).count() == SLOW_PHONES,
        timeout=10,
        message="the slow uploads never were all under way",
    )

    # When the API is called while they stream
    status = f"{web.url}/api/v1/attachments/{ids[0]}"
    auth = {"Authorization": authorization}
    calls: list[tuple[int, float]] = []
    peak = 0
    while any(phone.is_alive() for phone in phones) and len(calls) < 100:
        calls.append(_timed(lambda: requests.get(status, headers=auth, timeout=10)))
        peak = max(peak, _server_connections())
    for phone in phones:
        phone.join(60)

    # Then it answers at once, every upload is stored, and the process never held more
    # connections than its pool
    assert len(calls) >= 10
    assert {code for code, _ in calls} == {200}
    assert max(seconds for _, seconds in calls) < 1.0, calls
    assert answers == [204] * SLOW_PHONES
    assert set(Upload.objects.filter(pk__in=ids).values_list("offset", flat=True)) == {
        TRICKLE_BYTES
    }
    assert 1 <= peak <= POOL_SIZE


def test_a_request_that_finds_every_connection_busy_answers_503_with_retry_after(
    one_connection_web: WebServer, tech: Phone
) -> None:
    # Given a web process whose one pooled connection is busy: its request waits on a table
    # lock (any token lookup waits while we hold this one)
    web = one_connection_web
    headers = {"Authorization": f"Token {token_issue(tech.user)}"}
    url = f"{web.url}/api/v1/attachments/{uuid.uuid4()}"
    conninfo = _database_url(connection.settings_dict)
    first: list[Any] = []
    with psycopg.connect(conninfo) as locker:
        locker.execute("LOCK TABLE accounts_apitoken IN ACCESS EXCLUSIVE MODE")
        busy = threading.Thread(
            target=lambda: first.append(requests.get(url, headers=headers, timeout=30))
        )
        busy.start()
        wait_until(_waits_for_token_table, timeout=10, message="the first request never waited")

        # When another request comes
        started = time.perf_counter()
        second = requests.get(url, headers=headers, timeout=10)
        waited = time.perf_counter() - started
        locker.rollback()
    busy.join(30)

    # Then it waits a bounded time (DB_POOL_TIMEOUT) and is told to come back, not shown
    # a server error
    assert second.status_code == 503
    assert second.json()["code"] == "service_unavailable"
    assert int(second.headers["Retry-After"]) > 0
    assert 0.5 <= waited < 5
    # And the request that held the connection finishes normally once the lock goes
    assert len(first) == 1 and first[0].status_code == 404


def _waits_for_token_table() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " WHERE c.relname = 'accounts_apitoken' AND NOT l.granted"
        )
        row = cursor.fetchone()
    return bool(row and row[0])
