"""Domain fixtures: organisations, people, devices and a small API client for the contract."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.core.management.base import CommandError
from django.db import connection
from django.test import TransactionTestCase
from rest_framework.test import APIClient

from accounts.models import User
from accounts.services import field_user_create, token_issue
from operations.models import Operation, OpStatus
from operations.services import device_apply_pending
from tests.helpers import wait_until

_names = itertools.count(1)


@dataclass
class Phone:
    """A client install as the contract sees it: a token, a device id and a seq counter."""

    user: User
    client: APIClient
    device_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    seq: int = 0
    cursor: str | None = None

    def op(
        self,
        entity: str,
        entity_id: str,
        action: str = "update",
        base_version: int = 0,
        **fields: Any,
    ) -> dict[str, Any]:
        self.seq += 1
        return {
            "op_id": str(uuid.uuid4()),
            "seq": self.seq,
            "entity": entity,
            "entity_id": entity_id,
            "action": action,
            "base_version": base_version,
            "fields": fields,
            "client_time": "2026-11-23T08:00:00Z",
        }

    def push(self, *ops: dict[str, Any], expect: int = 200) -> list[dict[str, Any]]:
        response = self.client.post(
            "/api/v1/sync/push", {"device_id": self.device_id, "ops": list(ops)}, format="json"
        )
        assert response.status_code == expect, response.content
        return response.json().get("results", []) if expect == 200 else [response.json()]

    def pull(self, limit: int | None = None, follow: bool = True) -> dict[str, Any]:
        """Pull from the saved cursor; with ``follow`` until has_more is false (merged)."""
        merged: dict[str, Any] = {"changes": [], "outcomes": []}
        while True:
            params: dict[str, Any] = {"device_id": self.device_id}
            if self.cursor:
                params["cursor"] = self.cursor
            if limit:
                params["limit"] = limit
            response = self.client.get("/api/v1/sync/pull", params)
            assert response.status_code == 200, response.content
            page = response.json()
            merged["changes"] += page["changes"]
            merged["outcomes"] += page["outcomes"]
            merged["last_done_seq"] = page["last_done_seq"]
            self.cursor = page["cursor"]
            if not (follow and page["has_more"]):
                return merged

    def outcome(self, op_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/sync/ops/{op_id}")
        assert response.status_code == 200, response.content
        return dict(response.json())


def client_for(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_issue(user)}")
    return client


@pytest.fixture
def make_user() -> Callable[..., User]:
    def make(role: str = "technician", org: str = "acme", username: str | None = None) -> User:
        name = username or f"{role}{next(_names)}"
        return field_user_create(org, role, name, "pw-12345678")

    return make


@pytest.fixture
def make_phone(make_user: Callable[..., User]) -> Callable[..., Phone]:
    def make(role: str = "technician", org: str = "acme", user: User | None = None) -> Phone:
        owner = user or make_user(role, org)
        return Phone(owner, client_for(owner))

    return make


@pytest.fixture
def dispatcher(make_phone: Callable[..., Phone]) -> Phone:
    return make_phone("dispatcher")


@pytest.fixture
def tech(make_phone: Callable[..., Phone]) -> Phone:
    return make_phone("technician")


def apply_now() -> None:
    """Apply every pending op in this process, exactly as a worker would (for tests that
    need determinism; the worker may be applying the same ops at the same time, which is
    safe by design)."""
    for device_id in set(
        Operation.objects.filter(status=OpStatus.PENDING).values_list("device_id", flat=True)
    ):
        device_apply_pending(device_id)


def settled(timeout: float = 20.0) -> None:
    """Wait until the real Celery worker has finished every pending op."""
    wait_until(
        lambda: not Operation.objects.filter(status=OpStatus.PENDING).exists(),
        timeout=timeout,
        message="ops still pending: the worker did not apply them",
    )


@pytest.fixture
def worker(celery_worker: Any) -> Iterator[Any]:
    yield celery_worker


def _other_sessions_busy() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state <> 'idle'"
        )
        row = cursor.fetchone()
    return bool(row and row[0])


@pytest.fixture(autouse=True)
def _worker_idle_before_flush(request: pytest.FixtureRequest) -> Iterator[None]:
    """Between tests the database is truncated; the real worker may still be finishing an
    apply rung by the test. Wait (bounded) until no other session is busy, so TRUNCATE and
    the worker's row locks don't deadlock."""
    yield
    uses_db = request.node.get_closest_marker("django_db") is not None
    if uses_db or {"db", "transactional_db"} & set(request.fixturenames):
        wait_until(lambda: not _other_sessions_busy(), timeout=30, message="db never went idle")


_flush = TransactionTestCase._fixture_teardown  # type: ignore[attr-defined]


def _flush_with_retry(self: TransactionTestCase) -> None:
    """A ring that reaches the worker during the flush can still deadlock with it: Postgres
    aborts one side; when it is the flush, run it again."""
    for attempt in range(3):
        try:
            _flush(self)
            return
        except CommandError:
            if attempt == 2:
                raise
            wait_until(lambda: not _other_sessions_busy(), timeout=30)


TransactionTestCase._fixture_teardown = _flush_with_retry  # type: ignore[attr-defined]
