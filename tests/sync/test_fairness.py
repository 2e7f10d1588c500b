"""One organisation's backlog never holds back another's ops: the apply claims devices in
turns across organisations (operations.services.state._CLAIM_SQL)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from django.test import override_settings

from operations.models import Operation, OpStatus
from operations.services import device_apply_pending
from operations.services.apply import _round_or_carefully
from syncserver.celery import app as celery_app
from tests.conftest import CeleryWorker
from tests.fixtures import Phone

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _rounds_run_here_only(celery_worker: CeleryWorker) -> Iterator[None]:
    """These tests run the apply's rounds themselves, one at a time: the session's Celery
    worker is stopped meanwhile (a drain of its own would claim the same devices), and its
    queue emptied of rings meant for it."""
    celery_worker.stop()
    celery_app.control.purge()
    yield
    celery_worker.start()


def _work_orders(phone: Phone, count: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    phone.push(*[phone.op("work_order", i, "create", 0, title="Boiler") for i in ids])
    device_apply_pending(uuid.UUID(phone.device_id))
    return ids


def test_a_busy_organisation_does_not_delay_another_ones_next_op(
    make_phone: Callable[..., Phone],
) -> None:
    # Given: organisation "busy" has five devices with 200 ops each waiting, pushed first,
    busy = [make_phone("dispatcher", org="busy") for _ in range(5)]
    for phone in busy:
        records = _work_orders(phone, 4)
        for batch in range(2):
            phone.push(
                *[
                    phone.op("work_order", records[n % 4], "update", 1, title=f"v{batch}-{n}")
                    for n in range(100)
                ]
            )
    # and organisation "quiet" then pushes a single op.
    quiet = make_phone("dispatcher", org="quiet")
    (record,) = _work_orders(quiet, 1)
    op = quiet.op("work_order", record, "update", 1, title="urgent")
    quiet.push(op)

    # When: one apply round runs with room for only two devices,
    with override_settings(SYNC_APPLY_DEVICES=2, SYNC_APPLY_BATCH=50):
        done = _round_or_carefully(None)

    # Then: the quiet organisation had a turn in it, ahead of the busy one's later devices,
    assert Operation.objects.get(pk=op["op_id"]).status == OpStatus.APPLIED
    assert len(done.claimed) == 2 and uuid.UUID(quiet.device_id) in done.claimed
    # and the busy organisation's backlog is still there for later rounds.
    busy_devices = [uuid.UUID(p.device_id) for p in busy]
    pending = Operation.objects.filter(device_id__in=busy_devices, status=OpStatus.PENDING)
    assert pending.count() == 1000 - 50


def test_a_device_waiting_for_a_missing_seq_is_not_claimed(
    make_phone: Callable[..., Phone],
) -> None:
    # Given: a device whose seq 2 never arrived, with seq 3 waiting,
    phone = make_phone("dispatcher")
    (record,) = _work_orders(phone, 1)
    phone.seq += 1
    late = phone.op("work_order", record, "update", 1, title="after the gap")
    phone.push(late)
    first = _round_or_carefully(None)
    assert first.claimed == [uuid.UUID(phone.device_id)] and first.finished == 0

    # When: the apply looks for work again while the gap is open,
    again = _round_or_carefully(None)

    # Then: it leaves the device alone (no round spent on it),
    assert again.claimed == []
    # and claims it again once the missing op arrives.
    phone.seq = 1
    phone.push(phone.op("work_order", record, "update", 1, title="the missing one"))
    assert _round_or_carefully(None).finished == 2
    assert Operation.objects.get(pk=late["op_id"]).status == OpStatus.APPLIED
