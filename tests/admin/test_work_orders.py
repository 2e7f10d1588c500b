"""Work orders in the admin: every save is an op of the dispatcher's admin device."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from accounts.models import DeviceKind
from operations.models import Event, Operation
from operations.services import op_submit_local
from tests.admin.forms import change_form_data
from tests.fixtures import Phone, apply_now
from workorders.models import ChecklistItem, Comment, WorkOrder

pytestmark = pytest.mark.django_db(transaction=True)

ADD_URL = "/admin/workorders/workorder/add/"
LIST_URL = "/admin/workorders/workorder/"


def change_url(work_order: WorkOrder) -> str:
    return f"/admin/workorders/workorder/{work_order.pk}/change/"


def test_creating_a_work_order_is_a_create_op_of_the_dispatchers_admin_device(
    desk: Client, dispatcher: Phone, tech: Phone
) -> None:
    data = change_form_data(
        desk.get(ADD_URL),
        title="Leaking valve",
        customer_name="Ms Ada",
        address="1 Main St",
        priority="high",
        assigned_to=tech.user.username,
        scheduled_start="2026-11-23T08:30:00",
        **{"checklist-0-label": "Bring spare valve"},
    )
    response = desk.post(ADD_URL, data)
    assert response.status_code == 302, response.content
    work_order = WorkOrder.objects.get(title="Leaking valve")
    assert (work_order.version, work_order.priority, work_order.assigned_to) == (
        1,
        "high",
        tech.user,
    )
    assert work_order.scheduled_start is not None
    assert work_order.scheduled_start.isoformat() == "2026-11-23T08:30:00+00:00"
    event = Event.objects.get(entity_id=work_order.pk)
    assert (event.kind, event.actor, event.device.kind) == ("create", dispatcher.user, "admin")  # type: ignore[union-attr]
    [item] = ChecklistItem.objects.filter(work_order=work_order)
    assert item.label == "Bring spare valve"
    [change] = tech.pull()["changes"][:1]
    assert change["fields"]["title"] == "Leaking valve"


def test_editing_sends_only_the_changed_fields_and_bumps_the_version_once(
    desk: Client, make_work_order: Callable[..., WorkOrder]
) -> None:
    work_order = make_work_order(title="Old", customer_name="Bob", technician_notes="a\nb")
    data = change_form_data(desk.get(change_url(work_order)), title="New")
    response = desk.post(change_url(work_order), data)
    assert response.status_code == 302, response.content
    work_order.refresh_from_db()
    assert (work_order.title, work_order.customer_name, work_order.version) == ("New", "Bob", 2)
    op = Operation.objects.filter(entity_id=work_order.pk).order_by("-seq").first()
    assert op is not None
    assert (op.fields, op.base_version, op.status) == ({"title": "New"}, 1, "applied")


def test_a_stale_form_is_shown_again_with_what_changed_and_saves_nothing(
    desk: Client, dispatcher: Phone, make_work_order: Callable[..., WorkOrder], make_user: Any
) -> None:
    work_order = make_work_order(title="Fix boiler", address="1 Main St")
    page = desk.get(change_url(work_order))
    colleague = make_user("dispatcher")
    op_submit_local(colleague, "work_order", work_order.pk, "update", 1, {"address": "9 Elm St"})
    response = desk.post(change_url(work_order), change_form_data(page, title="Replace boiler"))
    assert response.status_code == 200
    body = response.content.decode()
    assert "Changed by someone else while you were editing" in body
    assert "Re-apply my changes" in body
    assert "1 Main St" in body and "9 Elm St" in body
    work_order.refresh_from_db()
    assert (work_order.title, work_order.address, work_order.version) == (
        "Fix boiler",
        "9 Elm St",
        2,
    )
    form = response.context["adminform"].form
    assert form["base_version"].value() == "2"
    assert form["address"].value() == "9 Elm St"  # the other's change is not undone
    assert form["title"].value() == "Replace boiler"  # and mine is kept


def test_re_applying_a_stale_form_saves_my_change_on_top_of_theirs(
    desk: Client, make_work_order: Callable[..., WorkOrder], make_user: Any
) -> None:
    work_order = make_work_order(title="Fix boiler", address="1 Main St")
    page = desk.get(change_url(work_order))
    colleague = make_user("dispatcher")
    op_submit_local(colleague, "work_order", work_order.pk, "update", 1, {"address": "9 Elm St"})
    stale = desk.post(change_url(work_order), change_form_data(page, title="Replace boiler"))
    again = desk.post(change_url(work_order), change_form_data(stale, _continue="1"))
    assert again.status_code == 302, again.content
    work_order.refresh_from_db()
    assert (work_order.title, work_order.address, work_order.version) == (
        "Replace boiler",
        "9 Elm St",
        3,
    )


def test_a_form_untouched_by_me_is_not_stale_and_saves_nothing(
    desk: Client, make_work_order: Callable[..., WorkOrder], make_user: Any
) -> None:
    work_order = make_work_order(title="Fix boiler", scheduled_start="2026-11-23T08:00:00.250Z")
    page = desk.get(change_url(work_order))
    op_submit_local(
        make_user("dispatcher"), "work_order", work_order.pk, "update", 1, {"title": "X"}
    )
    response = desk.post(change_url(work_order), change_form_data(page))
    assert response.status_code == 302
    work_order.refresh_from_db()
    assert (work_order.title, work_order.version) == ("X", 2)


def test_a_form_loaded_after_a_technicians_status_change_applies_without_a_conflict(
    desk: Client, tech: Phone, make_work_order: Callable[..., WorkOrder]
) -> None:
    work_order = make_work_order(status="scheduled", assigned_to=tech.user.username)
    tech.push(tech.op("work_order", str(work_order.pk), "update", 1, status="on_site"))
    apply_now()
    page = desk.get(change_url(work_order))
    # The form was loaded after the technician's change: it is the base, so no conflict.
    response = desk.post(change_url(work_order), change_form_data(page, status="on_hold"))
    assert response.status_code == 302
    work_order.refresh_from_db()
    assert work_order.status == "on_hold"


def test_cancel_and_reassign_actions_are_ops(
    desk: Client, dispatcher: Phone, tech: Phone, make_user: Any, make_work_order: Any
) -> None:
    first, second = make_work_order(title="A"), make_work_order(title="B")
    other = make_user("technician")
    ids = [str(first.pk), str(second.pk)]
    response = desk.post(LIST_URL, {"action": "cancel_work_orders", "_selected_action": ids})
    assert response.status_code == 302
    response = desk.post(
        LIST_URL,
        {"action": "reassign_work_orders", "_selected_action": ids, "assign_to": other.username},
    )
    assert response.status_code == 302
    for work_order in (first, second):
        work_order.refresh_from_db()
        assert (work_order.status, work_order.assigned_to, work_order.version) == (
            "cancelled",
            other,
            3,
        )
    admin_ops = Operation.objects.filter(device__kind=DeviceKind.ADMIN, entity_id__in=ids)
    assert admin_ops.filter(status="applied").count() == 6  # 2 creates, 2 cancels, 2 moves


def test_reassigning_to_nobody_is_refused_with_a_message(
    desk: Client, make_work_order: Callable[..., WorkOrder]
) -> None:
    work_order = make_work_order()
    response = desk.post(
        LIST_URL,
        {"action": "reassign_work_orders", "_selected_action": [str(work_order.pk)]},
        follow=True,
    )
    assert "Choose a technician" in response.content.decode()
    work_order.refresh_from_db()
    assert work_order.version == 1


def test_deleting_leaves_a_tombstone_event_and_keeps_children(
    desk: Client, dispatcher: Phone, make_work_order: Callable[..., WorkOrder]
) -> None:
    work_order = make_work_order()
    op_submit_local(
        dispatcher.user, "comment", uuid.uuid4(), "create", 0,
        {"work_order_id": str(work_order.pk), "body": "keep me"},
    )  # fmt: skip
    url = f"/admin/workorders/workorder/{work_order.pk}/delete/"
    assert desk.get(url).status_code == 200
    assert desk.post(url, {"post": "yes"}).status_code == 302
    work_order.refresh_from_db()
    assert (work_order.deleted, work_order.version) == (True, 2)
    assert Comment.objects.filter(work_order=work_order).exists()
    assert Event.objects.filter(entity_id=work_order.pk, kind="delete").exists()


def test_checklist_items_are_edited_and_deleted_and_comments_added_through_ops(
    desk: Client, dispatcher: Phone, make_work_order: Callable[..., WorkOrder]
) -> None:
    work_order = make_work_order()
    first = desk.post(
        change_url(work_order),
        change_form_data(
            desk.get(change_url(work_order)),
            **{"checklist-0-label": "Check pressure", "comments-0-body": "Gate code 1234"},
        ),
    )
    assert first.status_code == 302, first.content
    [item] = ChecklistItem.objects.filter(work_order=work_order)
    [comment] = Comment.objects.filter(work_order=work_order)
    assert (item.label, comment.body) == ("Check pressure", "Gate code 1234")
    page = desk.get(change_url(work_order))
    assert "Gate code 1234" in page.content.decode()
    ticked = change_form_data(page, **{"checklist-0-done": "on"})
    assert desk.post(change_url(work_order), ticked).status_code == 302
    item.refresh_from_db()
    assert (item.done, item.version) == (True, 2)
    page = desk.get(change_url(work_order))
    removed = change_form_data(page, **{"checklist-0-DELETE": "on"})
    assert desk.post(change_url(work_order), removed).status_code == 302
    item.refresh_from_db()
    assert (item.deleted, item.version) == (True, 3)
    kinds = set(Event.objects.filter(entity_id=item.pk).values_list("kind", flat=True))
    assert kinds == {"create", "update", "delete"}


def test_the_record_page_shows_a_timeline_with_devices_fields_and_conflicts(
    desk: Client, dispatcher: Phone, tech: Phone, make_work_order: Callable[..., WorkOrder]
) -> None:
    work_order = make_work_order(status="scheduled", assigned_to=tech.user.username)
    op_submit_local(
        dispatcher.user, "work_order", work_order.pk, "update", 1, {"status": "on_hold"}
    )
    tech.push(
        tech.op("work_order", str(work_order.pk), "update", 1, status="completed",
                technician_notes="done")
    )  # fmt: skip
    apply_now()
    body = desk.get(change_url(work_order)).content.decode()
    assert "Timeline" in body
    assert "admin workspace" in body
    assert f"device {tech.device_id[:8]}" in body
    assert "technician_notes" in body and "done" in body
    assert "scheduled → <strong>on_hold</strong>" in body
    assert "opened" in body and "conflict on status" in body
    assert "Open conflicts" in body


def test_list_filters_and_search_find_the_right_work_orders(
    desk: Client, dispatcher: Phone, tech: Phone, make_work_order: Callable[..., WorkOrder]
) -> None:
    mine = make_work_order(
        title="Heat pump", customer_name="Zed", address="7 Oak Rd",
        assigned_to=tech.user.username, scheduled_start="2026-11-23T09:00:00Z", status="scheduled",
    )  # fmt: skip
    other = make_work_order(title="Gutter")
    # The office's edit lands first, so the phone's is the concurrent one that conflicts.
    op_submit_local(dispatcher.user, "work_order", mine.pk, "update", 1, {"status": "on_hold"})
    tech.push(tech.op("work_order", str(mine.pk), "update", 1, status="completed"))
    apply_now()

    def titles(**params: str) -> set[str]:
        response = desk.get(LIST_URL, params)
        assert response.status_code == 200
        return {str(obj) for obj in response.context["cl"].result_list}

    assert titles() == {"Heat pump", "Gutter"}
    assert titles(q="oak") == {"Heat pump"}
    assert titles(q="zed") == {"Heat pump"}
    assert titles(technician=str(tech.user.pk)) == {"Heat pump"}
    assert titles(technician="none") == {"Gutter"}
    assert titles(scheduled_day="2026-11-23") == {"Heat pump"}
    assert titles(scheduled_day="none") == {"Gutter"}
    assert titles(open_conflicts="yes") == {"Heat pump"}
    assert titles(open_conflicts="no") == {"Gutter"}
    assert titles(uploading="yes") == set()
    assert titles(status__exact="on_hold") == {"Heat pump"}
    listed = desk.get(LIST_URL).content.decode()
    assert "1 open" in listed
    assert other.title in listed
