"""Applying ops: seq order, gaps, field rules, deletes, and the real worker doing it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from conflicts.models import Conflict
from operations.models import DeviceSyncState, Event, Operation, OpStatus
from tests.fixtures import Phone, apply_now, settled
from workorders.models import Comment, WorkOrder

pytestmark = pytest.mark.django_db(transaction=True)


def _work_order(dispatcher: Phone, tech: Phone | None = None, **fields: object) -> str:
    wo = str(uuid.uuid4())
    base = {"title": "Fix boiler", "address": "1 Main St", "status": "scheduled", **fields}
    if tech is not None:
        base["assigned_to"] = tech.user.username
    dispatcher.push(dispatcher.op("work_order", wo, "create", 0, **base))
    apply_now()
    return wo


def test_the_real_worker_applies_pushed_ops(dispatcher: Phone, worker: object) -> None:
    wo = str(uuid.uuid4())
    op = dispatcher.op("work_order", wo, "create", 0, title="Via worker")
    dispatcher.push(op)
    settled()
    assert dispatcher.outcome(op["op_id"])["status"] == "applied"
    assert WorkOrder.objects.get(pk=wo).version == 1


def test_out_of_order_seq_waits_for_the_missing_op(dispatcher: Phone) -> None:
    wo = _work_order(dispatcher)
    first = dispatcher.op("work_order", wo, "update", 1, title="second title")
    second = dispatcher.op("work_order", wo, "update", 1, title="third title")
    dispatcher.push(second)
    apply_now()
    assert Operation.objects.get(pk=second["op_id"]).status == OpStatus.PENDING
    assert dispatcher.pull()["last_done_seq"] == 1
    dispatcher.push(first)
    apply_now()
    record = WorkOrder.objects.get(pk=wo)
    assert (record.title, record.version) == ("third title", 3)
    assert dispatcher.pull()["last_done_seq"] == 3


def test_a_gap_open_too_long_is_skipped_and_shown_in_device_health(dispatcher: Phone) -> None:
    wo = _work_order(dispatcher)
    dispatcher.seq += 1  # op 2 is lost forever
    late = dispatcher.op("work_order", wo, "update", 1, title="after the gap")
    dispatcher.push(late)
    apply_now()
    assert Operation.objects.get(pk=late["op_id"]).status == OpStatus.PENDING
    with override_settings(SYNC_GAP_TIMEOUT_SECONDS=0):
        apply_now()
    assert Operation.objects.get(pk=late["op_id"]).status == OpStatus.APPLIED
    state = DeviceSyncState.objects.get(device_id=dispatcher.device_id)
    assert state.skipped_seqs == [[2, 2]]
    assert state.done_seq == 3


def test_a_gap_is_timed_by_the_databases_clock_not_a_workers(
    dispatcher: Phone, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an op waiting for a missing predecessor, its gap opened by one worker
    wo = _work_order(dispatcher)
    dispatcher.seq += 1  # op 2 has not arrived
    late = dispatcher.op("work_order", wo, "update", 1, title="after the gap")
    dispatcher.push(late)
    apply_now()
    # When a worker on a host whose clock runs an hour ahead applies the device's ops
    ahead = timezone.now() + timedelta(hours=1)
    monkeypatch.setattr("operations.services.apply.timezone.now", lambda: ahead)
    apply_now()
    # Then the gap has not waited its timeout (10 min) by the only clock both share
    assert Operation.objects.get(pk=late["op_id"]).status == OpStatus.PENDING
    assert DeviceSyncState.objects.get(device_id=dispatcher.device_id).skipped_seqs == []


def test_a_late_op_never_overwrites_its_devices_later_op(dispatcher: Phone) -> None:
    wo = _work_order(dispatcher)
    lost = dispatcher.op("work_order", wo, "update", 1, title="older", address="2 Elm St")
    newer = dispatcher.op("work_order", wo, "update", 1, title="newer")
    dispatcher.push(newer)
    with override_settings(SYNC_GAP_TIMEOUT_SECONDS=0):
        apply_now()
    dispatcher.push(lost)  # arrives after the gap was skipped
    apply_now()
    record = WorkOrder.objects.get(pk=wo)
    assert (record.title, record.address) == ("newer", "2 Elm St")
    outcome = dispatcher.outcome(lost["op_id"])
    assert outcome["status"] == "applied"
    assert outcome["overridden_fields"] == ["title"]
    assert dispatcher.pull()["last_done_seq"] == 3


def test_own_successive_ops_never_conflict(dispatcher: Phone, tech: Phone) -> None:
    wo = _work_order(dispatcher, tech)
    ops = [
        tech.op("work_order", wo, "update", 1, status="en_route"),
        tech.op("work_order", wo, "update", 1, status="on_site", arrived_at="2026-11-23T09:00:00Z"),
        tech.op("work_order", wo, "update", 1, status="completed"),
    ]
    tech.push(*ops)
    apply_now()
    assert [tech.outcome(o["op_id"])["status"] for o in ops] == ["applied"] * 3
    record = WorkOrder.objects.get(pk=wo)
    assert (record.status, record.version) == ("completed", 4)
    assert not Conflict.objects.exists()


def test_dispatcher_versus_technician(dispatcher: Phone, tech: Phone) -> None:
    """The field guide's scenario: the office changes address and status while the
    technician, offline on version 1, edits address, notes and status and comments."""
    wo = _work_order(dispatcher, tech)
    dispatcher.push(
        dispatcher.op(
            "work_order", wo, "update", 1, address="1 Main St, entrance B", status="on_hold"
        )
    )
    apply_now()
    comment = str(uuid.uuid4())
    offline = tech.op(
        "work_order", wo, "update", 1,
        address="1 Main Street", technician_notes="Replaced valve", status="completed",
    )  # fmt: skip
    note = tech.op("comment", comment, "create", 0, work_order_id=wo, body="Customer signed")
    tech.push(offline, note)
    apply_now()

    record = WorkOrder.objects.get(pk=wo)
    assert record.address == "1 Main St, entrance B"
    assert record.technician_notes == "Replaced valve"
    assert record.status == "on_hold"
    assert Comment.objects.get(pk=comment).body == "Customer signed"
    outcome = tech.outcome(offline["op_id"])
    assert outcome["status"] == "conflict"
    assert outcome["overridden_fields"] == ["address"]
    assert outcome["version"] == 3
    [conflict] = Conflict.objects.all()
    assert (conflict.field, conflict.base_value, conflict.server_value, conflict.client_value) == (
        "status", "scheduled", "on_hold", "completed",
    )  # fmt: skip
    assert [str(conflict.id)] == outcome["conflict_ids"]


def test_a_dispatchers_concurrent_edit_of_dispatcher_fields_applies(
    dispatcher: Phone, make_phone: Callable[..., Phone]
) -> None:
    other_desk = make_phone("dispatcher")
    wo = _work_order(dispatcher)
    dispatcher.push(dispatcher.op("work_order", wo, "update", 1, address="A"))
    other_desk.push(other_desk.op("work_order", wo, "update", 1, address="B"))
    apply_now()
    assert WorkOrder.objects.get(pk=wo).address in {"A", "B"}
    assert WorkOrder.objects.get(pk=wo).version == 3


def test_same_value_on_both_sides_is_no_conflict(dispatcher: Phone, tech: Phone) -> None:
    wo = _work_order(dispatcher, tech)
    dispatcher.push(dispatcher.op("work_order", wo, "update", 1, status="on_site"))
    apply_now()
    op = tech.op("work_order", wo, "update", 1, status="on_site")
    tech.push(op)
    apply_now()
    assert tech.outcome(op["op_id"])["status"] == "applied"
    assert WorkOrder.objects.get(pk=wo).version == 2  # nothing changed, no bump


def test_update_after_delete_opens_a_deleted_conflict(dispatcher: Phone, tech: Phone) -> None:
    wo = _work_order(dispatcher, tech)
    dispatcher.push(dispatcher.op("work_order", wo, "delete", 1))
    apply_now()
    op = tech.op("work_order", wo, "update", 1, technician_notes="was here")
    tech.push(op)
    apply_now()
    outcome = tech.outcome(op["op_id"])
    assert outcome["status"] == "conflict"
    conflict = Conflict.objects.get()
    assert conflict.field == "__deleted__"
    assert conflict.client_value == {"technician_notes": "was here"}
    # Deleting a deleted record changes nothing and is applied.
    again = dispatcher.op("work_order", wo, "delete", 2)
    dispatcher.push(again)
    apply_now()
    assert dispatcher.outcome(again["op_id"])["status"] == "applied"
    assert WorkOrder.objects.get(pk=wo).version == 2


def test_create_of_existing_id_and_update_of_unknown_id(dispatcher: Phone) -> None:
    wo = _work_order(dispatcher)
    dup = dispatcher.op("work_order", wo, "create", 0, title="again")
    ghost = dispatcher.op("work_order", str(uuid.uuid4()), "update", 1, title="who?")
    results = dispatcher.push(dup, ghost)
    assert results[0]["code"] == "entity_exists"
    assert results[1]["status"] == "accepted"  # may be a create still on its way
    apply_now()
    assert dispatcher.outcome(ghost["op_id"])["code"] == "not_found"


def test_every_applied_change_bumps_the_version_by_one(dispatcher: Phone, tech: Phone) -> None:
    wo = _work_order(dispatcher, tech)
    for i in range(5):
        tech.push(tech.op("work_order", wo, "update", 1, technician_notes=f"n{i}"))
    tech.push(tech.op("work_order", wo, "update", 1, technician_notes="n4"))  # no change
    apply_now()
    versions = list(
        Event.objects.filter(entity_id=wo).order_by("version").values_list("version", flat=True)
    )
    assert versions == [1, 2, 3, 4, 5, 6]
    assert WorkOrder.objects.get(pk=wo).version == 6


def test_reassigning_a_child_record_is_not_possible(dispatcher: Phone, tech: Phone) -> None:
    wo, other = _work_order(dispatcher, tech), _work_order(dispatcher, tech)
    item = str(uuid.uuid4())
    tech.push(tech.op("checklist_item", item, "create", 0, work_order_id=wo, label="Check"))
    apply_now()
    move = tech.op("checklist_item", item, "update", 1, work_order_id=other)
    tech.push(move)
    apply_now()
    assert tech.outcome(move["op_id"])["code"] == "immutable_field"


def test_an_unknown_assignee_is_rejected(dispatcher: Phone) -> None:
    op = dispatcher.op(
        "work_order", str(uuid.uuid4()), "create", 0, title="x", assigned_to="nobody"
    )
    dispatcher.push(op)
    apply_now()
    assert dispatcher.outcome(op["op_id"])["code"] == "invalid_value"
    assert not WorkOrder.objects.exists()


def test_device_health_shows_the_last_refusal(dispatcher: Phone) -> None:
    ghost = dispatcher.op("work_order", str(uuid.uuid4()), "update", 1, title="who?")
    dispatcher.push(ghost)
    apply_now()
    state = DeviceSyncState.objects.get(device_id=dispatcher.device_id)
    assert state.last_error.startswith("not_found:")
    assert str(ghost["op_id"]) in state.last_error
