"""Platform surface: health, readiness, metrics, schema, auth and the management commands."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections
from django.db.backends.postgresql.base import DatabaseWrapper as PostgresDatabaseWrapper
from rest_framework.test import APIClient

from accounts.models import Organization, User
from tests.fixtures import Phone, apply_now
from workorders.models import WorkOrder

pytestmark = pytest.mark.django_db(transaction=True)


def test_healthz_answers_while_the_process_lives() -> None:
    assert APIClient().get("/healthz").status_code == 200


def test_readyz_is_200_with_every_dependency_up(worker: Any, s3_server: Any) -> None:
    response = APIClient().get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json()["checks"] == {
        "postgres": "ok", "redis": "ok", "object_store": "ok", "celery_worker": "ok",
    }  # fmt: skip


def test_readyz_is_503_and_names_what_is_down(settings: Any, worker: Any, s3_server: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    settings.S3_BUCKET = "no-such-bucket-here"
    response = APIClient().get("/readyz")
    assert response.status_code == 503
    assert set(response.json()["down"]) >= {"redis", "object_store"}


def test_metrics_is_prometheus_text(dispatcher: Phone) -> None:
    dispatcher.push(dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="A"))
    body = APIClient().get("/metrics").content.decode()
    assert "fieldsync_ops{" in body
    assert "fieldsync_open_conflicts" in body


def test_schema_documents_every_endpoint() -> None:
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    paths = set(response.json()["paths"])
    assert {
        "/api/v1/auth/token", "/api/v1/sync/push", "/api/v1/sync/pull",
        "/api/v1/sync/ops/{op_id}", "/api/v1/conflicts", "/api/v1/conflicts/{conflict_id}/resolve",
    } <= paths  # fmt: skip
    assert APIClient().get("/api/docs/").status_code == 200


def test_token_endpoint(make_user: Any) -> None:
    user = make_user("technician")
    client = APIClient()
    ok = client.post(
        "/api/v1/auth/token", {"username": user.username, "password": "pw-12345678"}, format="json"
    )
    assert ok.status_code == 200 and len(ok.json()["token"]) == 40
    wrong = client.post(
        "/api/v1/auth/token", {"username": user.username, "password": "nope"}, format="json"
    )
    assert (wrong.status_code, wrong.json()["code"]) == (401, "invalid_credentials")
    missing = client.post("/api/v1/auth/token", {}, format="json")
    assert missing.status_code == 400 and set(missing.json()) == {"code", "detail"}


def test_create_field_user_is_idempotent() -> None:
    args = [
        "--org",
        "north",
        "--role",
        "technician",
        "--username",
        "nina",
        "--password",
        "pw-123456",
    ]
    call_command("create_field_user", *args)
    call_command("create_field_user", *args)
    assert User.objects.filter(username="nina").count() == 1
    assert Organization.objects.filter(name="north").count() == 1
    with pytest.raises(CommandError):
        call_command("create_field_user", "--org", "south", "--role", "technician",
                     "--username", "nina", "--password", "x")  # fmt: skip


def test_seed_demo_runs_once_and_the_projection_rebuilds_cleanly() -> None:
    call_command("seed_demo")
    call_command("seed_demo")
    assert WorkOrder.objects.count() == 12
    call_command("rebuild_projection")


def test_rebuild_projection_reports_a_tampered_record(dispatcher: Phone) -> None:
    wo = str(uuid.uuid4())
    dispatcher.push(dispatcher.op("work_order", wo, "create", 0, title="True title"))
    apply_now()
    WorkOrder.objects.filter(pk=wo).update(title="tampered")
    with pytest.raises(CommandError, match="1 difference"):
        call_command("rebuild_projection")
    call_command("rebuild_projection", "--fix")
    assert WorkOrder.objects.get(pk=wo).title == "True title"
    call_command("rebuild_projection")


def test_unknown_api_path_is_json_404(dispatcher: Phone) -> None:
    response = dispatcher.client.get("/api/v1/nothing-here")
    assert response.status_code == 404


def test_a_database_outage_answers_503_with_retry_after(tech: Phone) -> None:
    # Given the database stops answering (a real refused connection: the settings point at a
    # port where nothing listens, as while Postgres restarts)
    tech.pull()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = str(probe.getsockname()[1])
    saved = dict(connection.settings_dict)
    options = saved["OPTIONS"]
    # The process's pool connects with the settings it was made with: a new one, which gives
    # up on the dead server after a second.
    _new_pool(
        HOST="127.0.0.1",
        PORT=closed_port,
        OPTIONS={**options, "pool": {**options["pool"], "timeout": 1}},
    )
    try:
        # When the phone pulls
        response = tech.client.get("/api/v1/sync/pull", {"device_id": tech.device_id})
    finally:
        _new_pool(**saved)
    # Then it is told to retry, not shown a server error
    assert response.status_code == 503
    assert response.json()["code"] == "service_unavailable"
    assert response["Retry-After"]


def _new_pool(**database: Any) -> None:
    postgres = connections["default"]
    assert isinstance(postgres, PostgresDatabaseWrapper)
    postgres.close()
    postgres.close_pool()
    postgres.settings_dict.update(database)
