"""The whole stack comes up, and after each fault it inflicts the system recovers: requests
are answered again, /readyz is 200, and an op pushed afterwards is applied."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.field.stack import Stack
from tests.helpers import wait_until

# Bounds for recovery: beat sweeps every 2 s and re-rings ops pending for 2 s.
RECOVERY = 20.0
APPLIED = 30.0


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix="fieldsync-stack-"))
    try:
        with Stack(workdir) as running:
            yield running
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def healthy(stack: Stack) -> Stack:
    """The stack with everything running, whatever an earlier test left broken."""
    stack.heal()
    wait_until(stack.ready, timeout=RECOVERY, interval=0.2, message="stack is not ready")
    return stack


@dataclass
class Dispatcher:
    """A dispatcher's phone talking plain HTTP to the stack."""

    base_url: str
    token: str
    device_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    seq: int = 0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}

    def push_work_order(self) -> str:
        """Push the create of a new work order; its op id, once accepted."""
        self.seq += 1
        op: dict[str, Any] = {
            "op_id": str(uuid.uuid4()),
            "seq": self.seq,
            "entity": "work_order",
            "entity_id": str(uuid.uuid4()),
            "action": "create",
            "base_version": 0,
            "fields": {"title": f"Field day job {self.seq}"},
            "client_time": "2026-11-23T08:00:00Z",
        }
        response = requests.post(
            f"{self.base_url}/api/v1/sync/push",
            json={"device_id": self.device_id, "ops": [op]},
            headers=self.headers,
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["status"] == "accepted", response.text
        return str(op["op_id"])

    def op_status(self, op_id: str) -> str | None:
        try:
            response = requests.get(
                f"{self.base_url}/api/v1/sync/ops/{op_id}", headers=self.headers, timeout=5
            )
        except requests.RequestException:
            return None
        return str(response.json()["status"]) if response.status_code == 200 else None

    def assert_applied(self, op_id: str) -> None:
        wait_until(
            lambda: self.op_status(op_id) == "applied",
            timeout=APPLIED,
            interval=0.2,
            message=f"op {op_id} was not applied; last status {self.op_status(op_id)}",
        )


def token(stack: Stack, username: str, password: str) -> requests.Response:
    return requests.post(
        f"{stack.base_url}/api/v1/auth/token",
        json={"username": username, "password": password},
        timeout=5,
    )


@pytest.fixture(scope="module")
def dispatcher(stack: Stack) -> Dispatcher:
    stack.create_user("field-day", "dispatcher", "dispatch-1", "pw-field-day-1")
    response = token(stack, "dispatch-1", "pw-field-day-1")
    assert response.status_code == 200, response.text
    return Dispatcher(stack.base_url, response.json()["token"])


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_the_stack_comes_up_ready_with_its_own_services(healthy: Stack) -> None:
    stack = healthy

    assert stack.sql("SELECT current_database()") == [("fieldsync",)]
    # Its own Postgres, on a port no outgoing connection can take while it restarts.
    assert (urlsplit(stack.database_url).port or 0) < 32768
    assert "PROMETHEUS_MULTIPROC_DIR" not in stack.env
    assert stack.sql("SELECT count(*) FROM django_migrations")[0][0] > 0
    assert stack.s3_client().head_bucket(Bucket=stack.s3.bucket)
    assert len(stack.web_worker_pids()) == 2
    assert "Booting worker" in stack.logs("web")
    assert "ready" in stack.logs("worker")


def test_a_pushed_op_is_applied(healthy: Stack, dispatcher: Dispatcher) -> None:
    dispatcher.assert_applied(dispatcher.push_work_order())


def test_a_killed_web_worker_is_replaced_and_requests_keep_being_answered(
    healthy: Stack,
) -> None:
    stack = healthy
    victim = stack.kill_web_worker()

    wait_until(
        lambda: answers(f"{stack.base_url}/healthz"), timeout=RECOVERY, message="web is gone"
    )
    wait_until(
        lambda: victim not in stack.web_worker_pids() and len(stack.web_worker_pids()) == 2,
        timeout=RECOVERY,
        message="gunicorn did not replace its killed worker",
    )
    assert all(answers(f"{stack.base_url}/healthz") for _ in range(10))
    assert stack.faults[-1][1] == f"SIGKILLed web worker {victim}"


def test_web_killed_and_started_again_answers_on_the_same_port(healthy: Stack) -> None:
    stack = healthy
    port = stack.web_port

    stack.kill_web()

    with pytest.raises(requests.ConnectionError):
        requests.get(f"{stack.base_url}/healthz", timeout=2)
    stack.start_web()

    assert answers(f"http://127.0.0.1:{port}/healthz")
    wait_until(stack.ready, timeout=RECOVERY, interval=0.2, message="not ready after restart")


def test_worker_killed_and_started_again_applies_ops(
    healthy: Stack, dispatcher: Dispatcher
) -> None:
    stack = healthy

    stack.kill_worker()
    pushed_while_dead = dispatcher.push_work_order()
    stack.start_worker()

    wait_until(stack.ready, timeout=RECOVERY, interval=0.2, message="not ready after restart")
    dispatcher.assert_applied(pushed_while_dead)
    dispatcher.assert_applied(dispatcher.push_work_order())


def test_redis_flushed_loses_nothing_and_tasks_still_run(
    healthy: Stack, dispatcher: Dispatcher
) -> None:
    stack = healthy
    stack.kill_worker()
    rung_then_flushed = dispatcher.push_work_order()

    stack.flush_redis()
    stack.start_worker()

    wait_until(stack.ready, timeout=RECOVERY, interval=0.2, message="not ready after flush")
    dispatcher.assert_applied(rung_then_flushed)  # only beat's sweep can ring for it now
    stack.flush_redis()  # with everything running: the bindings vanish under the processes
    dispatcher.assert_applied(dispatcher.push_work_order())


def test_postgres_restarted_and_the_api_answers_again(
    healthy: Stack, dispatcher: Dispatcher
) -> None:
    stack = healthy
    database_url = stack.database_url

    stack.restart_postgres()

    wait_until(
        lambda: token(stack, "dispatch-1", "pw-field-day-1").status_code == 200,
        timeout=RECOVERY,
        interval=0.2,
        message="the API did not recover from the Postgres restart",
    )
    assert stack.database_url == database_url
    wait_until(stack.ready, timeout=RECOVERY, interval=0.2, message="not ready after restart")
    dispatcher.assert_applied(dispatcher.push_work_order())


def test_every_fault_is_recorded_with_its_time(healthy: Stack) -> None:
    stack = healthy
    earlier = len(stack.faults)
    started = time.monotonic()

    stack.flush_redis()
    victim = stack.kill_web_worker()

    recorded = stack.faults[earlier:]
    assert [description for _, description in recorded] == [
        "flushed Redis (FLUSHALL)",
        f"SIGKILLed web worker {victim}",
    ]
    assert started <= recorded[0][0] <= recorded[1][0] <= time.monotonic()
