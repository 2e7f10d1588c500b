"""Push: idempotent storage, per-op answers, and bad input that changes nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest

from accounts.services import device_deactivate
from operations.api.serializers import PushResponseSerializer
from operations.models import Event, Operation, OpStatus
from operations.services import PushResult
from tests.fixtures import Phone, apply_now, client_for

pytestmark = pytest.mark.django_db(transaction=True)


def _new_work_order(dispatcher: Phone, assignee: Phone | None = None, **extra: object) -> str:
    wo = str(uuid.uuid4())
    fields = {"title": "Fix boiler", "status": "scheduled", **extra}
    if assignee is not None:
        fields["assigned_to"] = assignee.user.username
    [result] = dispatcher.push(dispatcher.op("work_order", wo, "create", 0, **fields))
    assert result["status"] == "accepted"
    return wo


def test_push_answers_accepted_and_stores_the_op(dispatcher: Phone) -> None:
    wo = _new_work_order(dispatcher)
    op = Operation.objects.get(entity_id=wo)
    assert op.status in (OpStatus.PENDING, OpStatus.APPLIED)
    assert op.seq == 1


def test_duplicate_push_applies_once(dispatcher: Phone) -> None:
    op = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="A")
    assert dispatcher.push(op)[0]["status"] == "accepted"
    apply_now()
    # The response was lost: the phone sends the very same op again, twice.
    results = dispatcher.push(op, op)
    assert [r["status"] for r in results] == ["duplicate", "duplicate"]
    apply_now()
    assert Event.objects.filter(op_id=op["op_id"]).count() == 1
    assert dispatcher.outcome(op["op_id"])["status"] == "applied"


def test_lost_response_retry_before_apply_is_a_duplicate(dispatcher: Phone) -> None:
    ops = [
        dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title=f"T{i}") for i in range(3)
    ]
    dispatcher.push(*ops)
    results = dispatcher.push(*ops)
    assert {r["status"] for r in results} == {"duplicate"}
    apply_now()
    assert Event.objects.filter(op_id__in=[o["op_id"] for o in ops]).count() == 3


def test_same_op_id_with_other_content_is_rejected_as_reused(dispatcher: Phone) -> None:
    op = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="A")
    dispatcher.push(op)
    changed = {**op, "fields": {"title": "B"}}
    [result] = dispatcher.push(changed)
    assert (result["status"], result["code"]) == ("rejected", "op_id_reused")
    assert Operation.objects.get(pk=op["op_id"]).fields == {"title": "A"}


def test_same_seq_with_another_op_id_is_rejected(dispatcher: Phone) -> None:
    first = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="A")
    dispatcher.push(first)
    clash = {**dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="B"), "seq": 1}
    [result] = dispatcher.push(clash)
    assert (result["status"], result["code"]) == ("rejected", "seq_reused")


def test_bad_op_mid_batch_does_not_block_the_ops_behind_it(dispatcher: Phone) -> None:
    good1 = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="A")
    bad = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="B", colour="red")
    good2 = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="C")
    results = dispatcher.push(good1, bad, good2)
    assert [r["status"] for r in results] == ["accepted", "rejected", "accepted"]
    assert results[1]["code"] == "unknown_field"
    apply_now()
    page = dispatcher.pull()
    assert page["last_done_seq"] == 3
    assert {o["op_id"]: o["status"] for o in page["outcomes"]} == {
        good1["op_id"]: "applied",
        bad["op_id"]: "rejected",
        good2["op_id"]: "applied",
    }
    # A retry of the rejected op gets the same answer, and it can be looked up.
    assert dispatcher.push(bad)[0]["code"] == "unknown_field"
    assert dispatcher.outcome(bad["op_id"])["code"] == "unknown_field"


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda o: o.update(op_id="not-a-uuid"), "invalid_op_id"),
        (lambda o: o.update(seq=0), "invalid_seq"),
        (lambda o: o.update(seq=-3), "invalid_seq"),
        (lambda o: o.update(seq="1"), "invalid_seq"),
        (lambda o: o.update(seq=True), "invalid_seq"),
        (lambda o: o.update(entity="invoice"), "unknown_entity"),
        (lambda o: o.update(entity_id="42"), "invalid_entity_id"),
        (lambda o: o.update(action="upsert"), "invalid_action"),
        (lambda o: o.update(base_version=-1), "invalid_base_version"),
        (lambda o: o.update(base_version=3), "invalid_base_version"),
        (lambda o: o.update(fields=[1, 2]), "invalid_fields"),
        (lambda o: o.update(fields={"title": 5}), "invalid_value"),
        (lambda o: o.update(fields={"title": "x" * 201}), "value_too_long"),
        (lambda o: o.update(fields={"title": "t", "priority": "meh"}), "invalid_value"),
        (lambda o: o.update(fields={"title": "t", "scheduled_start": "tomorrow"}), "invalid_value"),
        (
            lambda o: o.update(fields={"title": "t", "scheduled_start": "2026-01-01T10:00"}),
            "invalid_value",
        ),
        (lambda o: o.update(fields={"description": "no title"}), "missing_field"),
        (lambda o: o.update(client_time="yesterday"), "invalid_client_time"),
    ],
)
def test_invalid_op_is_rejected_with_its_code_and_changes_nothing(
    dispatcher: Phone, mutate: Callable[[dict[str, object]], None], code: str
) -> None:
    op = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="A")
    mutate(op)
    [result] = dispatcher.push(op)
    assert (result["status"], result["code"]) == ("rejected", code)
    apply_now()
    assert not Event.objects.exists()


def test_op_that_is_not_an_object_is_rejected(dispatcher: Phone) -> None:
    results = dispatcher.push(42, "op", None)  # type: ignore[arg-type]
    assert [(r["status"], r["code"]) for r in results] == [("rejected", "invalid_op")] * 3


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b"[]", 400, "invalid_envelope"),
        (b'{"ops": []}', 400, "invalid_envelope"),
        (b'{"device_id": "abc", "ops": []}', 400, "invalid_device_id"),
        (b'{"device_id": "%s", "ops": {}}' % str(uuid.uuid4()).encode(), 400, "invalid_envelope"),
        (b'{"device_id": "%s"}' % str(uuid.uuid4()).encode(), 400, "invalid_envelope"),
        (b"\xff\xfe", 400, "malformed_json"),
        (b"[" * 100_000, 400, "malformed_json"),
    ],
)
def test_malformed_envelope_is_400_and_stores_nothing(
    tech: Phone, body: bytes, status: int, code: str
) -> None:
    response = tech.client.generic(
        "POST",
        "/api/v1/sync/push",
        body,  # type: ignore[arg-type]  # bytes are sent as is
        content_type="application/json",
    )
    assert response.status_code == status
    assert response.json()["code"] == code
    assert not Operation.objects.exists()


def test_more_than_500_ops_is_413(dispatcher: Phone) -> None:
    ops = [
        dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="A") for _ in range(501)
    ]
    [error] = dispatcher.push(*ops, expect=413)
    assert error["code"] == "batch_too_large"
    assert not Operation.objects.exists()


def test_body_over_one_mib_is_413(dispatcher: Phone) -> None:
    big = dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="A")
    big["padding"] = "x" * (1024 * 1024)
    body = json.dumps({"device_id": dispatcher.device_id, "ops": [big]})
    response = dispatcher.client.generic(
        "POST", "/api/v1/sync/push", body, content_type="application/json"
    )
    assert response.status_code == 413
    assert response.json()["code"] == "batch_too_large"
    assert not Operation.objects.exists()


def test_push_without_token_is_401(dispatcher: Phone) -> None:
    dispatcher.client.credentials()
    [error] = dispatcher.push(expect=401)
    assert error["code"] == "not_authenticated"
    dispatcher.client.credentials(HTTP_AUTHORIZATION="Token nope")
    [error] = dispatcher.push(expect=401)
    assert error["code"] == "authentication_failed"


def test_device_of_another_user_is_403(make_phone: Callable[..., Phone]) -> None:
    alice, bob = make_phone(), make_phone()
    alice.push()
    bob.device_id = alice.device_id
    [error] = bob.push(expect=403)
    assert error["code"] == "device_owned_by_other_user"


def test_technician_may_not_create_delete_or_reassign_work_orders(
    dispatcher: Phone, tech: Phone
) -> None:
    wo = _new_work_order(dispatcher, tech)
    apply_now()
    results = tech.push(
        tech.op("work_order", str(uuid.uuid4()), "create", 0, title="mine"),
        tech.op("work_order", wo, "delete", 1),
        tech.op("work_order", wo, "update", 1, assigned_to=None),
    )
    assert [(r["status"], r["code"]) for r in results] == [("rejected", "forbidden")] * 3


def test_comments_are_append_only(dispatcher: Phone, tech: Phone) -> None:
    wo = _new_work_order(dispatcher, tech)
    comment = str(uuid.uuid4())
    tech.push(tech.op("comment", comment, "create", 0, work_order_id=wo, body="hi"))
    apply_now()
    results = tech.push(
        tech.op("comment", comment, "update", 1, body="edited"),
        tech.op("comment", comment, "delete", 1),
    )
    assert [r["code"] for r in results] == ["append_only", "append_only"]


def test_future_base_version_is_rejected(dispatcher: Phone) -> None:
    wo = _new_work_order(dispatcher)
    apply_now()
    [result] = dispatcher.push(dispatcher.op("work_order", wo, "update", 7, title="B"))
    assert (result["status"], result["code"]) == ("rejected", "invalid_base_version")


def test_records_out_of_scope_or_of_another_org_are_not_found(
    dispatcher: Phone, make_phone: Callable[..., Phone]
) -> None:
    mine, other_tech, foreign = make_phone(), make_phone(), make_phone("dispatcher", org="globex")
    wo = _new_work_order(dispatcher, other_tech)
    apply_now()
    for phone in (mine, foreign):
        results = phone.push(
            phone.op("work_order", wo, "update", 1, technician_notes="sneaky"),
            phone.op("comment", str(uuid.uuid4()), "create", 0, work_order_id=wo, body="x"),
        )
        assert [(r["status"], r["code"]) for r in results] == [("rejected", "not_found")] * 2
    assert dispatcher.pull()["changes"][0]["fields"]["technician_notes"] == ""


def test_op_outcome_of_another_user_is_404(
    dispatcher: Phone, make_phone: Callable[..., Phone]
) -> None:
    alice, bob = make_phone(), make_phone()
    op = alice.op("work_order", str(uuid.uuid4()), "update", 1, title="x")
    alice.push(op)
    assert bob.client.get(f"/api/v1/sync/ops/{op['op_id']}").status_code == 404
    assert dispatcher.client.get(f"/api/v1/sync/ops/{op['op_id']}").status_code == 200
    assert bob.client.get("/api/v1/sync/ops/not-a-uuid").status_code == 404


def test_deactivated_device_loses_its_token_and_keeps_its_ops(tech: Phone) -> None:
    op = tech.op("work_order", str(uuid.uuid4()), "update", 1, technician_notes="x")
    tech.push(op)
    device_deactivate(uuid.UUID(tech.device_id))
    [error] = tech.push(expect=401)
    assert error["code"] == "authentication_failed"
    tech.client = client_for(tech.user)  # logging in again does not revive the device
    [error] = tech.push(expect=403)
    assert error["code"] == "device_deactivated"
    assert Operation.objects.filter(pk=op["op_id"]).exists()


def test_the_fast_push_body_is_the_serializers_body() -> None:
    # Given: answers of every kind, the op_id of one as sent (not a UUID),
    results = [
        PushResult(str(uuid.uuid4()), "accepted"),
        PushResult(str(uuid.uuid4()), "duplicate"),
        PushResult("not-a-uuid", "rejected", "invalid_op_id", "op_id must be a UUID"),
        PushResult(None, "rejected", "invalid_op", "an op must be an object"),
    ]
    # When: both render them,
    fast = PushResponseSerializer.render(results)
    documented = PushResponseSerializer({"results": results}).data
    # Then: the bodies are the same, key for key (the schema documents the serializer's).
    assert json.dumps(fast) == json.dumps(documented)
