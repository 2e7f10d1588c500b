"""Conflicts: listing in scope, resolving to either side or a custom value, exactly once."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from tests.fixtures import Phone, apply_now
from workorders.models import WorkOrder

pytestmark = pytest.mark.django_db(transaction=True)


def _status_conflict(dispatcher: Phone, tech: Phone) -> tuple[str, dict[str, object]]:
    wo = str(uuid.uuid4())
    dispatcher.push(
        dispatcher.op("work_order", wo, "create", 0, title="Job", status="scheduled",
                      assigned_to=tech.user.username)
    )  # fmt: skip
    apply_now()
    tech.pull()
    dispatcher.push(dispatcher.op("work_order", wo, "update", 1, status="on_hold"))
    apply_now()  # the office's change lands first; the phone's is then the concurrent one
    tech.push(tech.op("work_order", wo, "update", 1, status="completed"))
    apply_now()
    [conflict] = dispatcher.client.get("/api/v1/conflicts", {"status": "open"}).json()["results"]
    return wo, conflict


@pytest.mark.parametrize(("choice", "expected"), [("server", "on_hold"), ("client", "completed")])
def test_conflict_resolves_to_either_side_and_reaches_the_device(
    dispatcher: Phone, tech: Phone, choice: str, expected: str
) -> None:
    wo, conflict = _status_conflict(dispatcher, tech)
    tech.pull()
    response = dispatcher.client.post(
        f"/api/v1/conflicts/{conflict['id']}/resolve", {"choice": choice}, format="json"
    )
    assert response.status_code == 200
    body = response.json()
    assert body["conflict"]["status"] == "resolved"
    assert body["conflict"]["resolution"] == choice
    assert body["conflict"]["resolved_by"] == dispatcher.user.username
    record = WorkOrder.objects.get(pk=wo)
    assert record.status == expected
    assert body["version"] == record.version == (3 if choice == "client" else 2)
    [change] = tech.pull()["changes"]
    assert (change["fields"]["status"], change["version"]) == (expected, record.version)


def test_custom_resolution_is_validated_and_applied(dispatcher: Phone, tech: Phone) -> None:
    wo, conflict = _status_conflict(dispatcher, tech)
    url = f"/api/v1/conflicts/{conflict['id']}/resolve"
    bad = dispatcher.client.post(url, {"choice": "custom", "value": "exploded"}, format="json")
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_value")
    missing = dispatcher.client.post(url, {"choice": "custom"}, format="json")
    assert (missing.status_code, missing.json()["code"]) == (400, "invalid_value")
    ok = dispatcher.client.post(url, {"choice": "custom", "value": "on_site"}, format="json")
    assert ok.status_code == 200
    assert WorkOrder.objects.get(pk=wo).status == "on_site"


def test_resolving_twice_is_409(dispatcher: Phone, tech: Phone) -> None:
    _, conflict = _status_conflict(dispatcher, tech)
    url = f"/api/v1/conflicts/{conflict['id']}/resolve"
    assert dispatcher.client.post(url, {"choice": "server"}, format="json").status_code == 200
    again = tech.client.post(url, {"choice": "client"}, format="json")
    assert (again.status_code, again.json()["code"]) == (409, "already_resolved")


def test_technician_sees_and_resolves_own_conflicts_only(
    dispatcher: Phone, tech: Phone, make_phone: Callable[..., Phone]
) -> None:
    _, conflict = _status_conflict(dispatcher, tech)
    stranger = make_phone()
    assert stranger.client.get("/api/v1/conflicts").json()["results"] == []
    url = f"/api/v1/conflicts/{conflict['id']}/resolve"
    assert stranger.client.post(url, {"choice": "client"}, format="json").status_code == 404
    mine = tech.client.get("/api/v1/conflicts").json()["results"]
    assert [c["id"] for c in mine] == [conflict["id"]]
    assert tech.client.post(url, {"choice": "client"}, format="json").status_code == 200
    resolved = tech.client.get("/api/v1/conflicts", {"status": "resolved"}).json()["results"]
    assert resolved[0]["resolved_by"] == tech.user.username


def test_deleted_record_conflict_restores_the_edit_on_client_choice(
    dispatcher: Phone, tech: Phone
) -> None:
    wo = str(uuid.uuid4())
    dispatcher.push(
        dispatcher.op("work_order", wo, "create", 0, title="Job", assigned_to=tech.user.username)
    )
    apply_now()
    dispatcher.push(dispatcher.op("work_order", wo, "delete", 1))
    apply_now()
    tech.push(tech.op("work_order", wo, "update", 1, technician_notes="I was on site"))
    apply_now()
    [conflict] = dispatcher.client.get("/api/v1/conflicts").json()["results"]
    assert conflict["field"] == "__deleted__"
    url = f"/api/v1/conflicts/{conflict['id']}/resolve"
    custom = dispatcher.client.post(url, {"choice": "custom", "value": 1}, format="json")
    assert custom.status_code == 400
    assert dispatcher.client.post(url, {"choice": "client"}, format="json").status_code == 200
    record = WorkOrder.objects.get(pk=wo)
    assert (record.deleted, record.technician_notes, record.version) == (False, "I was on site", 3)


@pytest.mark.parametrize("payload", [{}, {"choice": "maybe"}, {"choice": 5}])
def test_bad_resolution_requests_are_400(
    dispatcher: Phone, tech: Phone, payload: dict[str, object]
) -> None:
    _, conflict = _status_conflict(dispatcher, tech)
    response = dispatcher.client.post(
        f"/api/v1/conflicts/{conflict['id']}/resolve", payload, format="json"
    )
    assert response.status_code == 400
    assert set(response.json()) == {"code", "detail"}


def test_unknown_conflict_and_bad_status_filter(dispatcher: Phone) -> None:
    url = f"/api/v1/conflicts/{uuid.uuid4()}/resolve"
    assert dispatcher.client.post(url, {"choice": "server"}, format="json").status_code == 404
    assert (
        dispatcher.client.post(
            "/api/v1/conflicts/nope/resolve", {"choice": "server"}, format="json"
        ).status_code
        == 404
    )
    assert dispatcher.client.get("/api/v1/conflicts", {"status": "weird"}).status_code == 400
