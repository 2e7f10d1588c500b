"""The conflict queue: side by side, resolved through the conflicts service, in bulk too."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from django.test import Client

from conflicts.models import Conflict
from operations.models import Event
from tests.fixtures import Phone, apply_now
from workorders.models import WorkOrder

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "/admin/conflicts/conflict/"


def status_conflict(dispatcher: Phone, tech: Phone, title: str = "Job") -> Conflict:
    """The technician sets a status the dispatcher changed meanwhile (through the API)."""
    wo = str(uuid.uuid4())
    dispatcher.push(
        dispatcher.op("work_order", wo, "create", 0, title=title, status="scheduled",
                      assigned_to=tech.user.username)
    )  # fmt: skip
    apply_now()
    dispatcher.push(dispatcher.op("work_order", wo, "update", 1, status="on_hold"))
    apply_now()  # first, so the technician's op is the one that finds a newer status
    tech.push(tech.op("work_order", wo, "update", 1, status="completed"))
    apply_now()
    return Conflict.objects.get(entity_id=wo)


def test_the_conflict_page_shows_base_server_and_technician_values_side_by_side(
    desk: Client, dispatcher: Phone, tech: Phone
) -> None:
    conflict = status_conflict(dispatcher, tech)
    body = desk.get(f"{QUEUE}{conflict.pk}/change/").content.decode()
    assert 'data-testid="server-value">on_hold<' in body
    assert 'data-testid="client-value">completed<' in body
    assert ">scheduled<" in body  # the base
    assert tech.user.username in body
    assert "Accept technician" in body and "Apply custom value" in body


@pytest.mark.parametrize(("choice", "expected"), [("server", "on_hold"), ("client", "completed")])
def test_resolving_from_the_admin_is_an_event_the_technician_pulls(
    desk: Client, dispatcher: Phone, tech: Phone, choice: str, expected: str
) -> None:
    conflict = status_conflict(dispatcher, tech)
    tech.pull()
    response = desk.post(f"{QUEUE}{conflict.pk}/change/", {"choice": choice})
    assert response.status_code == 302
    conflict.refresh_from_db()
    assert (conflict.status, conflict.resolution, conflict.resolved_by) == (
        "resolved",
        choice,
        dispatcher.user,
    )
    assert Event.objects.filter(entity_id=conflict.entity_id, kind="resolve").exists()
    assert WorkOrder.objects.get(pk=conflict.entity_id).status == expected
    if choice == "client":
        [change] = tech.pull()["changes"]
        assert change["fields"]["status"] == "completed"


def test_a_custom_value_is_validated_and_applied(
    desk: Client, dispatcher: Phone, tech: Phone
) -> None:
    conflict = status_conflict(dispatcher, tech)
    url = f"{QUEUE}{conflict.pk}/change/"
    bad = desk.post(url, {"choice": "custom", "value": "exploded"}, follow=True)
    assert "Enter a valid custom value" in bad.content.decode()
    assert desk.post(url, {"choice": "custom", "value": "on_site"}).status_code == 302
    assert WorkOrder.objects.get(pk=conflict.entity_id).status == "on_site"


def test_resolved_conflicts_leave_the_queue_but_stay_visible_with_who_resolved_them(
    desk: Client, dispatcher: Phone, tech: Phone
) -> None:
    first = status_conflict(dispatcher, tech, "First")
    second = status_conflict(dispatcher, tech, "Second")
    desk.post(f"{QUEUE}{first.pk}/change/", {"choice": "server"})
    queue = desk.get(QUEUE)
    assert [c.pk for c in queue.context["cl"].result_list] == [second.pk]
    resolved = desk.get(QUEUE, {"status": "resolved"})
    assert [c.pk for c in resolved.context["cl"].result_list] == [first.pk]
    assert dispatcher.user.username in resolved.content.decode()
    page = desk.get(f"{QUEUE}{first.pk}/change/").content.decode()
    assert "Resolved" in page and dispatcher.user.username in page
    assert "Accept technician" not in page


def test_bulk_resolve_settles_every_selected_open_conflict(
    desk: Client, dispatcher: Phone, tech: Phone
) -> None:
    conflicts = [status_conflict(dispatcher, tech, f"Job {n}") for n in range(3)]
    response = desk.post(
        QUEUE,
        {"action": "resolve_with_client", "_selected_action": [str(c.pk) for c in conflicts]},
    )
    assert response.status_code == 302
    assert not Conflict.objects.filter(status="open").exists()
    statuses = WorkOrder.objects.filter(pk__in=[c.entity_id for c in conflicts])
    assert set(statuses.values_list("status", flat=True)) == {"completed"}


def test_the_work_order_page_links_its_open_conflicts_and_the_list_counts_them(
    desk: Client, dispatcher: Phone, tech: Phone, make_phone: Callable[..., Phone]
) -> None:
    conflict = status_conflict(dispatcher, tech)
    page = desk.get(f"/admin/workorders/workorder/{conflict.work_order_id}/change/")
    assert f"/admin/conflicts/conflict/{conflict.pk}/change/" in page.content.decode()
    queue = desk.get(QUEUE, {"work_order_id": str(conflict.work_order_id)})
    assert [c.pk for c in queue.context["cl"].result_list] == [conflict.pk]
