"""Who rings the workers, and when: a push rings one shared drain after it commits (and
nothing when it stored nothing new); the sweep's per-device task never waits for a device
another session holds."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.db import close_old_connections, transaction

from operations.models import DeviceSyncState, Operation
from operations.services.apply import DRAIN_FLAG, DRAIN_TASK
from operations.tasks import apply_device_ops_task
from tests.fixtures import Phone, apply_now

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def rings(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The drains asked for. Recorded instead of sent: what is checked is that the push
    asks, once and after commit; the real worker's answering it has tests of its own."""
    asked: list[tuple[str, str]] = []
    monkeypatch.setattr(
        "operations.services.apply.ring_coalesced",
        lambda task, flag: asked.append((task, flag)),
    )
    return asked


def test_a_push_of_new_ops_rings_one_drain_and_a_retry_none(
    dispatcher: Phone, rings: list[tuple[str, str]]
) -> None:
    ops = [
        dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title=f"Job {n}")
        for n in range(3)
    ]
    # One statement stored all three (the fast path): one ring
    assert {r["status"] for r in dispatcher.push(*ops)} == {"accepted"}
    assert rings == [(DRAIN_TASK, DRAIN_FLAG)]
    # The same batch again stores nothing: no ring
    assert {r["status"] for r in dispatcher.push(*ops)} == {"duplicate"}
    assert rings == [(DRAIN_TASK, DRAIN_FLAG)]


def test_a_push_rings_only_once_it_has_committed(
    dispatcher: Phone, rings: list[tuple[str, str]]
) -> None:
    from operations.services.push import op_batch_accept

    op = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="Job")
    with transaction.atomic():
        op_batch_accept(dispatcher.user, uuid.UUID(dispatcher.device_id), [op])
        assert rings == []  # a worker rung now could not see the op yet
    assert rings == [(DRAIN_TASK, DRAIN_FLAG)]


def test_the_per_device_task_skips_a_device_another_session_holds(
    dispatcher: Phone, rings: list[tuple[str, str]]
) -> None:
    # Given a device with a pending op, its sync-state row held by another session (as a
    # lost host's open transaction would hold it)
    op = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="Held")
    dispatcher.push(op)
    device_id = uuid.UUID(dispatcher.device_id)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                DeviceSyncState.objects.select_for_update().get(pk=device_id)
                held.set()
                release.wait(30)
        finally:
            close_old_connections()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        # When the sweep's per-device task runs for it
        began = time.monotonic()
        finished = apply_device_ops_task(str(device_id))
        # Then it returns at once, having applied nothing, rather than wait
        assert (finished, Operation.objects.get(pk=op["op_id"]).status) == (0, "pending")
        assert time.monotonic() - began < 5
    finally:
        release.set()
        holder.join()
    # And once the row is free, the op is applied
    apply_now()
    assert Operation.objects.get(pk=op["op_id"]).status == "applied"
