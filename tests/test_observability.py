"""Observability: request ids in answers and log lines (web and worker), and /metrics."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from tests.fixtures import Phone, apply_now, settled
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def log_lines() -> Iterator[list[dict[str, Any]]]:
    """The JSON lines the configured console handler writes meanwhile (LOGGING's filter and
    formatter included), parsed once the block ends."""
    handler = logging.getLogger("fieldsync").handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    lines: list[dict[str, Any]] = []
    try:
        yield lines
    finally:
        handler.setStream(previous)
        lines += [json.loads(line) for line in buffer.getvalue().splitlines()]


def scrape() -> str:
    response = APIClient().get("/metrics")  # the test client calls from 127.0.0.1: an operator
    assert response.status_code == 200, response.content
    return bytes(response.content).decode()


def sample(body: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def test_the_request_id_sent_comes_back_and_is_on_the_push_log_line(dispatcher: Phone) -> None:
    # Given a phone that names its request
    request_id = f"support-{uuid.uuid4().hex[:12]}"
    op = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="A")
    # When it pushes
    with log_lines() as lines:
        response = dispatcher.client.post(
            "/api/v1/sync/push",
            {"device_id": dispatcher.device_id, "ops": [op]},
            format="json",
            HTTP_X_REQUEST_ID=request_id,
        )
    # Then the answer and the push's log line carry its id, and the line names the device
    assert response.status_code == 200, response.content
    assert response["X-Request-ID"] == request_id
    pushed = [line for line in lines if line.get("event") == "ops.pushed"]
    assert len(pushed) == 1
    assert pushed[0]["request_id"] == request_id
    assert pushed[0]["device_id"] == dispatcher.device_id


def test_a_malformed_request_id_is_replaced_by_a_new_one() -> None:
    for bad in ["has spaces", "x" * 65, "semi;colon", "new\nline"]:
        response = APIClient().get("/healthz", HTTP_X_REQUEST_ID=bad)
        assert re.fullmatch(r"[0-9a-f]{32}", response["X-Request-ID"]), bad


def test_every_request_gets_an_id_of_its_own() -> None:
    first = APIClient().get("/healthz")["X-Request-ID"]
    second = APIClient().get("/healthz")["X-Request-ID"]
    assert first != second


def test_metrics_count_requests_per_view_not_per_path() -> None:
    # Given the count of /healthz answers so far
    name, view = "fieldsync_http_requests_total", "syncserver.health.healthz"
    before = sample(scrape(), name, view=view, method="GET", status="200") or 0.0
    # When /healthz answers once more
    APIClient().get("/healthz")
    # Then the view's series counts it, and the database time is measured per view too
    body = scrape()
    assert sample(body, name, view=view, method="GET", status="200") == before + 1
    assert sample(body, "fieldsync_http_db_duration_seconds_count", view=view) is not None
    assert "/healthz" not in {
        s.labels.get("view") for f in text_string_to_metric_families(body) for s in f.samples
    }


def test_an_applied_op_shows_in_the_ops_applied_last_minute(dispatcher: Phone) -> None:
    # Given an op pushed and applied
    [result] = dispatcher.push(
        dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="A")
    )
    assert result["status"] == "accepted"
    apply_now()
    # Then the scrape counts it as applied in the last minute, and nothing waits
    body = scrape()
    finished = "fieldsync_ops_finished_last_minute"
    assert sample(body, finished, status="applied") == 1
    assert sample(body, finished, status="rejected") == 0
    assert sample(body, "fieldsync_apply_lag_seconds") == 0


def test_a_redis_outage_leaves_out_the_queue_depth_but_not_the_scrape(settings: Any) -> None:
    assert sample(scrape(), "fieldsync_queue_depth", queue="fieldsync") is not None
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    body = scrape()
    assert sample(body, "fieldsync_queue_depth", queue="fieldsync") is None
    assert sample(body, "fieldsync_apply_lag_seconds") is not None


def test_the_worker_logs_the_apply_under_the_pushing_requests_id(
    dispatcher: Phone, worker: Any
) -> None:
    # Given a push that names its request
    request_id = f"support-{uuid.uuid4().hex[:12]}"
    op = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="A")
    response = dispatcher.client.post(
        "/api/v1/sync/push",
        {"device_id": dispatcher.device_id, "ops": [op]},
        format="json",
        HTTP_X_REQUEST_ID=request_id,
    )
    assert response.status_code == 200, response.content
    # When the worker applies it
    settled()

    # Then the worker's line for the op carries the request's id
    def finished_line() -> dict[str, Any] | None:
        for line in worker.logs().splitlines():
            if line.startswith("{") and request_id in line:
                entry: dict[str, Any] = json.loads(line)
                if entry.get("event") == "ops.finished":
                    return entry
        return None

    entry = wait_until(finished_line, timeout=10, message="no ops.finished line with the id")
    assert entry is not None
    assert entry["request_id"] == request_id
    assert entry["device_id"] == dispatcher.device_id
    assert op["op_id"] in json.dumps(entry["ops"])
