"""Bad input gets a clear refusal of that op alone, and nothing a client sends is a 500 or
stalls a device: text Postgres cannot store, times Python or Postgres cannot hold, ops the
server cannot read back."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from operations.models import Operation, OpStatus
from tests.fixtures import Phone, apply_now

pytestmark = pytest.mark.django_db(transaction=True)


def _push_raw(phone: Phone, *ops: dict[str, Any]) -> Any:
    # Sent as text, so an unpaired surrogate travels as the JSON escape a phone would send.
    body = json.dumps({"device_id": phone.device_id, "ops": list(ops)})
    return phone.client.post("/api/v1/sync/push", body, content_type="application/json")


def test_an_unpaired_surrogate_rejects_that_op_only(dispatcher: Phone) -> None:
    bad = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="Broken \ud83d")
    good = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="Fine 🙂")
    response = _push_raw(dispatcher, bad, good)
    assert response.status_code == 200, response.content
    first, second = response.json()["results"]
    assert (first["status"], first["code"]) == ("rejected", "invalid_value")
    assert second["status"] == "accepted"


def test_an_op_id_with_a_surrogate_is_answered_not_a_500(dispatcher: Phone) -> None:
    op = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="x")
    op["op_id"] = "\udc00"
    response = _push_raw(dispatcher, op)
    assert response.status_code == 200
    assert response.json()["results"][0]["code"] == "invalid_op_id"


def test_a_username_with_a_surrogate_is_a_400() -> None:
    body = json.dumps({"username": "a\ud800", "password": "x"})
    response = APIClient().post("/api/v1/auth/token", body, content_type="application/json")
    assert response.status_code == 400
    assert set(response.json()) == {"code", "detail"}


@pytest.mark.parametrize(
    "client_time",
    ["0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00Z"],
)
def test_client_times_python_or_postgres_cannot_hold_reject_that_op_only(
    dispatcher: Phone, client_time: str
) -> None:
    bad = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="x")
    bad["client_time"] = client_time
    good = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="y")
    first, second = dispatcher.push(bad, good)
    assert (first["status"], first["code"]) == ("rejected", "invalid_client_time")
    assert second["status"] == "accepted"
    assert dispatcher.outcome(first["op_id"])["status"] == "rejected"


def test_an_offset_past_postgres_range_is_held_in_utc(dispatcher: Phone) -> None:
    op = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="x",
                       scheduled_start="2026-11-23T08:00:00+20:00")  # fmt: skip
    op["client_time"] = "2026-11-23T08:00:00-23:30"
    [result] = dispatcher.push(op)
    assert result["status"] == "accepted"
    apply_now()
    outcome = dispatcher.outcome(op["op_id"])
    assert outcome["status"] == "applied"
    [change] = dispatcher.pull()["changes"]
    assert change["fields"]["scheduled_start"] == "2026-11-22T12:00:00Z"


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:30:00+01:00"])
def test_a_time_field_outside_the_years_python_holds_is_refused(
    dispatcher: Phone, value: str
) -> None:
    op = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="x",
                       scheduled_end=value)  # fmt: skip
    [result] = dispatcher.push(op)
    assert (result["status"], result["code"]) == ("rejected", "invalid_value")


def test_an_op_the_server_cannot_read_back_never_stalls_its_device(dispatcher: Phone) -> None:
    # Given an op stored before times were checked, whose client_time Python cannot hold,
    # queued ahead of a good op of the same device
    dispatcher.push()  # the device
    poisoned = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="old")
    dispatcher.push(poisoned)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE operations_operation SET client_time = '10000-01-01T00:00:00Z' "
            "WHERE op_id = %s",
            [poisoned["op_id"]],
        )
    good = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="new")
    dispatcher.push(good)

    # When the device's ops are applied
    apply_now()

    # Then both finish, and both outcomes can be read
    assert dispatcher.outcome(poisoned["op_id"])["status"] == "applied"
    assert dispatcher.outcome(good["op_id"])["status"] == "applied"


def test_an_op_whose_stored_fields_break_the_apply_is_finished_and_the_next_applies(
    dispatcher: Phone,
) -> None:
    # Given a stored create whose parent id cannot be parsed (stored before it was checked)
    wo = str(uuid.uuid4())
    dispatcher.push(dispatcher.op("work_order", wo, "create", 0, title="Job"))
    apply_now()
    # (its seq waits behind a held-back one, so no worker applies it before it is broken)
    held_seq = dispatcher.seq = dispatcher.seq + 1
    broken = dispatcher.op("checklist_item", str(uuid.uuid4()), "create", 0,
                           work_order_id=wo, label="x")  # fmt: skip
    dispatcher.push(broken)
    Operation.objects.filter(pk=broken["op_id"]).update(fields={"work_order_id": "nope"})
    good = dispatcher.op("work_order", wo, "update", 1, title="Renamed")
    held = {**dispatcher.op("work_order", wo, "update", 1, technician_notes="x"), "seq": held_seq}

    # When the next ops are pushed and the device applied
    dispatcher.push(held, good)
    apply_now()

    # Then the broken one is rejected as internal_error and the good one applied
    assert dispatcher.outcome(broken["op_id"])["code"] == "internal_error"
    assert dispatcher.outcome(good["op_id"])["status"] == "applied"
    assert not Operation.objects.filter(status=OpStatus.PENDING).exists()


def test_resolve_accepts_null_as_a_value(dispatcher: Phone) -> None:
    url = f"/api/v1/conflicts/{uuid.uuid4()}/resolve"
    response = dispatcher.client.post(url, {"choice": "custom", "value": None}, format="json")
    # The body is valid: the answer is about the conflict (there is none), not the request.
    assert (response.status_code, response.json()["code"]) == (404, "not_found")


def test_unknown_paths_answer_json() -> None:
    response = APIClient().get("/no/such/path")
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "detail": "no such path"}


def test_a_limit_of_unicode_digits_is_a_400(dispatcher: Phone) -> None:
    params = {"device_id": dispatcher.device_id, "limit": "²"}
    response = dispatcher.client.get("/api/v1/sync/pull", params)
    assert (response.status_code, response.json()["code"]) == (400, "invalid_limit")
