"""People, tokens and devices: created and revoked through the accounts services."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from django.test import Client

from accounts.models import ApiToken, Device, Role, User
from tests.fixtures import Phone, apply_now

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_dispatcher_creates_a_technician_in_their_own_organisation(
    desk: Client, dispatcher: Phone
) -> None:
    response = desk.post(
        "/admin/accounts/user/add/",
        {"username": "carol", "password": "long-enough-pw", "role": "technician"},
    )
    assert response.status_code == 302, response.content
    carol = User.objects.get(username="carol")
    assert (carol.organization, carol.role, carol.is_staff) == (
        dispatcher.user.organization,
        Role.TECHNICIAN,
        False,
    )
    assert carol.check_password("long-enough-pw")


def test_a_new_dispatcher_is_staff_and_a_taken_username_is_refused(desk: Client) -> None:
    desk.post(
        "/admin/accounts/user/add/",
        {"username": "dan", "password": "long-enough-pw", "role": "dispatcher"},
    )
    assert User.objects.get(username="dan").is_staff
    again = desk.post(
        "/admin/accounts/user/add/",
        {"username": "dan", "password": "long-enough-pw", "role": "technician"},
    )
    assert again.status_code == 200
    assert "This username is taken" in again.content.decode()


def test_issuing_a_token_shows_it_once_and_it_works(desk: Client, tech: Phone) -> None:
    response = desk.post(
        "/admin/accounts/user/",
        {"action": "issue_tokens", "_selected_action": [str(tech.user.pk)]},
    )
    assert response.status_code == 200
    [(user, key)] = response.context["issued"]
    assert user == tech.user and key in response.content.decode()
    client = Client(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/conflicts").status_code == 200


def test_revoking_a_token_stops_it_working(desk: Client, tech: Phone) -> None:
    assert tech.client.get("/api/v1/conflicts").status_code == 200
    token = ApiToken.objects.get(user=tech.user)
    response = desk.post(
        "/admin/accounts/apitoken/", {"action": "revoke", "_selected_action": [str(token.pk)]}
    )
    assert response.status_code == 302
    assert tech.client.get("/api/v1/conflicts").status_code == 401


def test_the_device_list_shows_sync_health_per_device(
    desk: Client, dispatcher: Phone, tech: Phone
) -> None:
    wo = str(uuid.uuid4())
    dispatcher.push(
        dispatcher.op("work_order", wo, "create", 0, title="Job", assigned_to=tech.user.username)
    )
    apply_now()
    tech.push(
        tech.op("work_order", wo, "update", 1, technician_notes="ok"),
        tech.op("work_order", wo, "delete", 1),  # technicians may not delete: rejected
    )
    apply_now()
    tech.pull()
    response = desk.get("/admin/accounts/device/")
    [row] = [d for d in response.context["cl"].result_list if str(d.pk) == tech.device_id]
    assert (row.n_applied, row.n_rejected, row.n_pending, row.n_conflict) == (1, 1, 0, 0)
    assert row.last_push_at is not None and row.last_pull_at is not None


def test_the_device_page_shows_rejected_ops_with_code_and_payload(
    desk: Client, dispatcher: Phone, tech: Phone
) -> None:
    wo = str(uuid.uuid4())
    dispatcher.push(dispatcher.op("work_order", wo, "create", 0, title="Job"))
    apply_now()
    tech.push(tech.op("work_order", wo, "update", 1, assigned_to=tech.user.username))
    body = desk.get(f"/admin/accounts/device/{tech.device_id}/change/").content.decode()
    assert "Rejected ops" in body
    assert "forbidden" in body
    assert "assigned_to" in body  # the payload
    assert "Deactivate this device" in body


def test_deactivating_a_lost_device_revokes_its_token_and_keeps_its_pending_ops_visible(
    desk: Client, dispatcher: Phone, tech: Phone
) -> None:
    wo = str(uuid.uuid4())
    dispatcher.push(
        dispatcher.op("work_order", wo, "create", 0, title="Job", assigned_to=tech.user.username)
    )
    apply_now()
    tech.pull()
    tech.seq += 1  # seq 1 never arrives, so seq 2 waits: a pending op
    tech.push(tech.op("work_order", wo, "update", 1, technician_notes="offline note"))
    url = f"/admin/accounts/device/{tech.device_id}/deactivate/"
    assert desk.post(url).status_code == 302
    assert not Device.objects.get(pk=tech.device_id).is_active
    assert tech.client.get("/api/v1/conflicts").status_code == 401
    body = desk.get(f"/admin/accounts/device/{tech.device_id}/change/").content.decode()
    assert "Pending ops" in body and "offline note" in body
    assert "deactivated" in body


def test_the_admin_device_of_a_dispatcher_cannot_be_deactivated(
    desk: Client, make_work_order: Callable[..., object]
) -> None:
    make_work_order()
    admin_device = Device.objects.get(kind="admin")
    desk.post(f"/admin/accounts/device/{admin_device.pk}/deactivate/")
    assert Device.objects.get(pk=admin_device.pk).is_active
