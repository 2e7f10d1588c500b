"""Who may see and change what: reassignment, deletes, and ids of other organisations."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from tests.fixtures import Phone, apply_now
from workorders.models import WorkOrder

pytestmark = pytest.mark.django_db(transaction=True)


def _work_order(dispatcher: Phone, tech: Phone) -> str:
    wo = str(uuid.uuid4())
    dispatcher.push(
        dispatcher.op(
            "work_order", wo, "create", 0, title="Job", address="1 Main St",
            assigned_to=tech.user.username,
        )
    )  # fmt: skip
    apply_now()
    return wo


def test_after_reassignment_the_old_technician_never_gets_current_fields(
    dispatcher: Phone, make_phone: Callable[..., Phone]
) -> None:
    # Given a work order with a checklist item, reassigned from alice to bob
    alice, bob = make_phone(), make_phone()
    wo = _work_order(dispatcher, alice)
    item = str(uuid.uuid4())
    dispatcher.push(
        dispatcher.op("checklist_item", item, "create", 0, work_order_id=wo, label="Check")
    )
    apply_now()
    dispatcher.push(
        dispatcher.op("work_order", wo, "update", 1, assigned_to=bob.user.username,
                      address="Secret new address")
    )  # fmt: skip
    apply_now()

    # When alice pulls from scratch, one change per page (old entries still name her)
    changes = alice.pull(limit=1)["changes"]

    # Then every change she gets is revoked, with no fields
    assert changes, "she is told the records left her scope"
    assert {(c["entity_id"], c["state"]) for c in changes} == {(wo, "revoked"), (item, "revoked")}
    assert all(c["fields"] == {} for c in changes)
    assert {c["state"] for c in bob.pull(limit=1)["changes"]} == {"live"}


def test_a_technician_cannot_bring_back_what_a_dispatcher_deleted(
    dispatcher: Phone, tech: Phone
) -> None:
    # Given an offline edit of a work order the dispatcher deleted meanwhile
    wo = _work_order(dispatcher, tech)
    dispatcher.push(dispatcher.op("work_order", wo, "delete", 1))
    apply_now()
    tech.push(tech.op("work_order", wo, "update", 1, technician_notes="I was on site"))
    apply_now()
    [conflict] = tech.client.get("/api/v1/conflicts").json()["results"]
    assert conflict["field"] == "__deleted__"
    url = f"/api/v1/conflicts/{conflict['id']}/resolve"

    # When the technician resolves it with their own edit
    response = tech.client.post(url, {"choice": "client"}, format="json")

    # Then it is refused and the record stays deleted; the dispatcher decides
    assert (response.status_code, response.json()["code"]) == (403, "not_allowed")
    assert WorkOrder.objects.get(pk=wo).deleted
    assert dispatcher.client.post(url, {"choice": "server"}, format="json").status_code == 200


def test_a_create_with_another_organisations_id_does_not_reveal_it(
    dispatcher: Phone, tech: Phone, make_phone: Callable[..., Phone]
) -> None:
    # Given a work order of one organisation
    wo = _work_order(dispatcher, tech)
    stranger = make_phone("dispatcher", org="globex")

    # When a dispatcher of another organisation creates a record with the same id
    [result] = stranger.push(stranger.op("work_order", wo, "create", 0, title="Mine"))

    # Then the answer does not say that a record holds that id
    assert result["status"] == "rejected"
    assert result["code"] == "entity_id_unavailable"
    assert wo not in result["detail"] and "exist" not in result["detail"]
    # (in scope, it may say so)
    [own] = dispatcher.push(dispatcher.op("work_order", wo, "create", 0, title="Again"))
    assert own["code"] == "entity_exists"
