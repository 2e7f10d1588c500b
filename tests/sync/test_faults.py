"""Faults: a worker SIGKILLed mid-apply and Redis flushed with ops pending. Postgres holds
every accepted op; the sweep rings the worker again and nothing is applied twice."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any
from unittest import mock

import kombu.exceptions
import pytest
import redis
from django.conf import settings
from django.db.models import Count
from django.test import override_settings

from operations.models import Event, Operation, OpStatus
from operations.projection import projection_check
from operations.services import ops_sweep, ring_device
from syncserver import celery_app
from tests.fixtures import Phone, apply_now, settled
from tests.helpers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def _work_orders(dispatcher: Phone, n: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    dispatcher.push(*(dispatcher.op("work_order", wo, "create", 0, title="Job") for wo in ids))
    apply_now()
    return ids


def _note_ops(phone: Phone, work_orders: list[str], count: int) -> list[dict[str, Any]]:
    return [
        phone.op("work_order", work_orders[i % len(work_orders)], "update", 1,
                 technician_notes=f"note {i}")
        for i in range(count)
    ]  # fmt: skip


def _assert_applied_exactly_once(ops: list[dict[str, Any]]) -> None:
    ids = [o["op_id"] for o in ops]
    assert not Operation.objects.filter(pk__in=ids).exclude(status=OpStatus.APPLIED).exists()
    per_op = Counter(Event.objects.filter(op_id__in=ids).values_list("op_id", flat=True))
    assert set(per_op.values()) == {1}
    assert len(per_op) == len(ids)
    assert projection_check() == []


def test_worker_killed_mid_apply_and_the_sweep_finishes(dispatcher: Phone, worker: Any) -> None:
    work_orders = _work_orders(dispatcher, 10)
    ops = _note_ops(dispatcher, work_orders, 5000)
    worker.kill()
    for start in range(0, len(ops), 500):
        dispatcher.push(*ops[start : start + 500])
    redis.Redis.from_url(settings.REDIS_URL).flushdb()  # so only our own ring starts it
    worker.restart()
    ring_device(uuid.UUID(dispatcher.device_id))
    wait_until(
        lambda: Operation.objects.filter(
            status=OpStatus.APPLIED, entity="work_order", seq__gt=10
        ).exists(),
        timeout=30,
        interval=0.01,
        message="the worker never started applying",
    )
    worker.kill()  # SIGKILL while it is applying: its open transaction is rolled back
    pending = Operation.objects.filter(status=OpStatus.PENDING).count()
    assert 0 < pending < len(ops), "the kill should land mid-apply"
    worker.restart()
    with override_settings(SYNC_STALE_PENDING_SECONDS=0):
        assert ops_sweep() == [uuid.UUID(dispatcher.device_id)]
    settled(timeout=60)
    _assert_applied_exactly_once(ops)


def test_redis_flushed_with_ops_pending_loses_nothing(dispatcher: Phone, worker: Any) -> None:
    work_orders = _work_orders(dispatcher, 3)
    ops = _note_ops(dispatcher, work_orders, 50)
    worker.kill()
    dispatcher.push(*ops)
    redis.Redis.from_url(settings.REDIS_URL).flushdb()  # the doorbell rings are gone
    worker.restart()
    assert Operation.objects.filter(status=OpStatus.PENDING).count() == 50
    with override_settings(SYNC_STALE_PENDING_SECONDS=0):
        ops_sweep()
    settled()
    _assert_applied_exactly_once(ops)


def test_a_push_while_redis_is_unreachable_is_still_accepted(dispatcher: Phone) -> None:
    """The op is committed before the worker is rung; a dead broker only delays it.

    The broker failure is simulated (the publish raises as kombu does when Redis refuses
    connections) because stopping the shared Redis would take the test worker down too."""
    wo = _work_orders(dispatcher, 1)[0]
    op = dispatcher.op("work_order", wo, "update", 1, title="offline broker")
    refused = kombu.exceptions.OperationalError("Error 111 connecting to redis: refused")
    with mock.patch.object(celery_app, "send_task", side_effect=refused):
        [result] = dispatcher.push(op)
    assert result["status"] == "accepted"
    assert Operation.objects.get(pk=op["op_id"]).status == OpStatus.PENDING
    apply_now()
    assert dispatcher.outcome(op["op_id"])["status"] == "applied"


def test_events_are_unique_per_record_version() -> None:
    duplicated = (
        Event.objects.filter(bumped=True)
        .values("entity_id", "version")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    assert not duplicated.exists()
