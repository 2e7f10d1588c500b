"""Several devices on the same records at once, with real threads and the real worker."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from operations.models import Event, Operation, OpStatus
from operations.projection import projection_check
from tests.fixtures import Phone, apply_now, settled
from workorders.models import WorkOrder

pytestmark = pytest.mark.django_db(transaction=True)


def test_devices_pushing_on_the_same_records_concurrently(
    make_phone: Callable[..., Phone], worker: Any
) -> None:
    office = make_phone("dispatcher")
    techs = [make_phone() for _ in range(3)]
    shared = str(uuid.uuid4())
    office.push(
        office.op(
            "work_order", shared, "create", 0, title="Shared", assigned_to=techs[0].user.username
        )
    )
    apply_now()
    phones = [office, make_phone("dispatcher"), *techs]
    errors: list[BaseException] = []

    def field_day(phone: Phone, index: int) -> None:
        try:
            for round_ in range(10):
                ops = []
                for k in range(5):
                    if phone.user.is_dispatcher:
                        fields = {"address": f"{index}-{round_}-{k}", "status": "on_hold"}
                        ops.append(phone.op("work_order", shared, "update", 1, **fields))
                    else:
                        body = {"work_order_id": shared, "body": f"{index}-{round_}-{k}"}
                        ops.append(phone.op("comment", str(uuid.uuid4()), "create", 0, **body))
                phone.push(*ops)
                if round_ % 3 == 0:
                    apply_now()  # this thread applies too, racing the worker
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=field_day, args=(p, i)) for i, p in enumerate(phones)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    settled(timeout=60)

    assert Operation.objects.filter(status=OpStatus.PENDING).count() == 0
    versions = list(
        Event.objects.filter(entity_id=shared, bumped=True)
        .order_by("version")
        .values_list("version", flat=True)
    )
    record = WorkOrder.objects.get(pk=shared)
    assert versions == list(range(1, record.version + 1))
    per_op = Event.objects.exclude(op_id=None).values_list("op_id", flat=True)
    assert len(per_op) == len(set(per_op))
    # Comments from technicians whose scope holds the work order are all kept.
    assert Operation.objects.filter(entity="comment", status=OpStatus.APPLIED).count() == 50
    assert projection_check() == []
