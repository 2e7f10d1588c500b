"""Who may use the workspace: dispatchers for their own organisation, superusers for all,
technicians never."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.test import Client

from accounts.models import User
from operations.models import Event, Operation
from tests.fixtures import Phone
from workorders.models import WorkOrder

pytestmark = pytest.mark.django_db(transaction=True)

PAGES = [
    "/admin/",
    "/admin/workorders/workorder/",
    "/admin/conflicts/conflict/",
    "/admin/accounts/device/",
    "/admin/accounts/user/",
    "/admin/accounts/apitoken/",
    "/admin/accounts/organization/",
    "/admin/operations/operation/",
    "/admin/operations/event/",
]


def test_a_technician_cannot_log_in_even_when_flagged_staff(tech: Phone) -> None:
    tech.user.is_staff = True
    tech.user.save(update_fields=["is_staff"])
    client = Client()
    response = client.post(
        "/admin/login/?next=/admin/", {"username": tech.user.username, "password": "pw-12345678"}
    )
    assert response.status_code == 200
    assert "Please enter the correct" in response.content.decode()
    client.force_login(tech.user)
    assert client.get("/admin/workorders/workorder/").status_code == 302  # back to login


def test_a_dispatcher_logs_in_with_a_password(dispatcher: Phone) -> None:
    client = Client()
    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": dispatcher.user.username, "password": "pw-12345678"},
    )
    assert (response.status_code, response["Location"]) == (302, "/admin/")


@pytest.mark.parametrize("url", PAGES)
def test_every_page_opens_for_a_dispatcher(desk: Client, url: str) -> None:
    assert desk.get(url).status_code == 200


def test_a_dispatcher_sees_only_their_organisation(
    desk: Client,
    make_phone: Callable[..., Phone],
    make_work_order: Callable[..., WorkOrder],
    admin_client_for: Callable[[User], Client],
) -> None:
    mine = make_work_order(title="Ours")
    rival = make_phone("dispatcher", org="rival")
    theirs = make_work_order(by=rival.user, title="Theirs")
    listed = desk.get("/admin/workorders/workorder/").context["cl"].result_list
    assert [w.pk for w in listed] == [mine.pk]
    response = desk.get(f"/admin/workorders/workorder/{theirs.pk}/change/")
    assert response.status_code == 302  # "doesn't exist", as for any unknown id
    users = desk.get("/admin/accounts/user/").context["cl"].result_list
    assert rival.user not in users
    rival_desk = admin_client_for(rival.user)
    rival_list = rival_desk.get("/admin/workorders/workorder/").context["cl"].result_list
    assert [w.pk for w in rival_list] == [theirs.pk]


def test_a_dispatcher_cannot_change_another_organisations_work_order(
    desk: Client, make_phone: Callable[..., Phone], make_work_order: Callable[..., WorkOrder]
) -> None:
    rival = make_phone("dispatcher", org="rival")
    theirs = make_work_order(by=rival.user, title="Theirs")
    response = desk.post(f"/admin/workorders/workorder/{theirs.pk}/change/", {"title": "Mine now"})
    assert response.status_code == 302
    theirs.refresh_from_db()
    assert (theirs.title, theirs.version) == ("Theirs", 1)


def test_a_superuser_sees_every_organisation_but_writes_nothing_without_being_a_dispatcher(
    make_phone: Callable[..., Phone], make_work_order: Callable[..., WorkOrder]
) -> None:
    make_work_order(title="Acme job")
    rival = make_phone("dispatcher", org="rival")
    make_work_order(by=rival.user, title="Rival job")
    root = User.objects.create_superuser("root", "root@example.com", "pw-12345678")
    client = Client()
    client.force_login(root)
    listed = client.get("/admin/workorders/workorder/").context["cl"].result_list
    assert {w.title for w in listed} == {"Acme job", "Rival job"}
    assert client.get("/admin/workorders/workorder/add/").status_code == 403


def test_an_anonymous_visitor_is_sent_to_the_login_page() -> None:
    response = Client().get("/admin/workorders/workorder/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_the_logs_cannot_be_added_to_changed_or_deleted(
    desk: Client, make_work_order: Callable[..., WorkOrder]
) -> None:
    make_work_order()
    op = Operation.objects.get()
    event = Event.objects.get()
    assert desk.get("/admin/operations/operation/add/").status_code == 403
    assert desk.get("/admin/operations/event/add/").status_code == 403
    assert desk.get(f"/admin/operations/operation/{op.pk}/delete/").status_code == 403
    assert desk.get(f"/admin/operations/event/{event.pk}/delete/").status_code == 403
    page = desk.get(f"/admin/operations/operation/{op.pk}/change/")
    assert page.status_code == 200 and "Save" not in page.content.decode().split("submit-row")[-1]
    desk.post(f"/admin/operations/operation/{op.pk}/change/", {"status": "rejected"})
    op.refresh_from_db()
    assert op.status == "applied"
