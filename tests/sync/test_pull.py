"""Pull: the commit-ordered feed, scope, revocation, pagination and retention."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from accounts.models import Device, User
from operations.api.serializers import PullResponseSerializer
from operations.models import FeedEntry, Operation
from operations.recording import Author, ChangeSet
from operations.selectors import changes_since
from operations.services import history_compact
from tests.fixtures import Phone, apply_now
from tests.helpers import wait_until
from workorders.models import WorkOrder
from workorders.registry import WORK_ORDER

pytestmark = pytest.mark.django_db(transaction=True)


def _create(dispatcher: Phone, tech: Phone | None = None, title: str = "Job") -> str:
    wo = str(uuid.uuid4())
    fields: dict[str, object] = {"title": title}
    if tech is not None:
        fields["assigned_to"] = tech.user.username
    dispatcher.push(dispatcher.op("work_order", wo, "create", 0, **fields))
    return wo


def test_pull_without_cursor_sends_everything_in_scope(
    dispatcher: Phone, tech: Phone, make_phone: Callable[..., Phone]
) -> None:
    mine = _create(dispatcher, tech)
    _create(dispatcher, make_phone())
    _create(dispatcher)
    apply_now()
    page = tech.pull()
    assert [c["entity_id"] for c in page["changes"]] == [mine]
    assert page["changes"][0]["state"] == "live"
    assert page["changes"][0]["fields"]["assigned_to"] == tech.user.username
    assert len(dispatcher.pull()["changes"]) == 3
    assert page["last_done_seq"] == 0


def test_pull_sends_only_the_latest_state_and_then_nothing_new(dispatcher: Phone) -> None:
    wo = _create(dispatcher)
    for v in range(1, 4):  # own successive ops, all made on top of version 1
        dispatcher.push(dispatcher.op("work_order", wo, "update", 1, title=f"v{v + 1}"))
    apply_now()
    page = dispatcher.pull()
    assert [(c["version"], c["fields"]["title"]) for c in page["changes"]] == [(4, "v4")]
    assert len(page["outcomes"]) == 4
    again = dispatcher.pull()
    assert again["changes"] == [] and again["outcomes"] == []


def test_other_organisations_never_leak(
    dispatcher: Phone, make_phone: Callable[..., Phone]
) -> None:
    _create(dispatcher)
    apply_now()
    foreign = make_phone("dispatcher", org="globex")
    assert foreign.pull()["changes"] == []
    assert foreign.client.get("/api/v1/conflicts").json() == {"results": []}


def test_reassignment_revokes_the_record_and_its_children(
    dispatcher: Phone, make_phone: Callable[..., Phone]
) -> None:
    alice, bob = make_phone(), make_phone()
    wo = _create(dispatcher, alice)
    item = str(uuid.uuid4())
    dispatcher.push(
        dispatcher.op("checklist_item", item, "create", 0, work_order_id=wo, label="Check")
    )
    apply_now()
    assert {c["entity_id"] for c in alice.pull()["changes"]} == {wo, item}
    bob.pull()
    dispatcher.push(dispatcher.op("work_order", wo, "update", 1, assigned_to=bob.user.username))
    apply_now()
    lost = alice.pull()["changes"]
    assert {(c["entity_id"], c["state"]) for c in lost} == {(wo, "revoked"), (item, "revoked")}
    assert all(c["fields"] == {} for c in lost)
    gained = bob.pull()["changes"]
    assert {(c["entity_id"], c["state"]) for c in gained} == {(wo, "live"), (item, "live")}


def test_deleted_records_are_sent_as_tombstones(dispatcher: Phone, tech: Phone) -> None:
    wo = _create(dispatcher, tech)
    apply_now()
    tech.pull()
    dispatcher.push(dispatcher.op("work_order", wo, "delete", 1))
    apply_now()
    [change] = tech.pull()["changes"]
    assert (change["state"], change["version"]) == ("deleted", 2)


def test_pagination_follows_the_cursor_without_skipping(dispatcher: Phone) -> None:
    ids = [_create(dispatcher, title=f"J{i}") for i in range(25)]
    apply_now()
    seen: list[str] = []
    pages = 0
    while True:
        params = {"device_id": dispatcher.device_id, "limit": "7"}
        if dispatcher.cursor:
            params["cursor"] = dispatcher.cursor
        response = dispatcher.client.get("/api/v1/sync/pull", params)
        page = response.json()
        pages += 1
        seen += [c["entity_id"] for c in page["changes"]]
        dispatcher.cursor = page["cursor"]
        if not page["has_more"]:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    assert pages >= 4


def test_a_change_committed_late_by_a_slow_transaction_is_not_skipped(
    dispatcher: Phone, make_user: Callable[..., User]
) -> None:
    """A writer that took its feed position first but commits last must still be seen by a
    reader whose cursor already moved past writers that committed before it."""
    slow_wo, fast_wo = _create(dispatcher, title="slow"), _create(dispatcher, title="fast")
    apply_now()
    dispatcher.pull()
    org_id = dispatcher.user.org_id
    slow_has_position, release_slow = threading.Event(), threading.Event()

    def write(wo: str, title: str, hold: bool) -> None:
        try:
            with transaction.atomic():
                changes = ChangeSet(org_id)
                record = changes.lock([(WORK_ORDER.name, uuid.UUID(wo))])[
                    (WORK_ORDER.name, uuid.UUID(wo))
                ]
                changes.update(WORK_ORDER, record, {"title": title}, Author(actor_id=None))
                changes.flush()
                if hold:
                    slow_has_position.set()
                    release_slow.wait(10)
        finally:
            close_old_connections()
            connection.close()

    slow = threading.Thread(target=write, args=(slow_wo, "slow done", True))
    slow.start()
    assert slow_has_position.wait(10)
    fast = threading.Thread(target=write, args=(fast_wo, "fast done", False))
    fast.start()
    # While the slow writer holds its position uncommitted, a pull sees neither change.
    assert dispatcher.pull()["changes"] == []
    release_slow.set()
    slow.join(10)
    fast.join(10)
    titles = {c["fields"]["title"] for c in dispatcher.pull()["changes"]}
    assert titles == {"slow done", "fast done"}


def test_concurrent_writers_and_a_paginating_reader_miss_nothing(
    make_phone: Callable[..., Phone],
) -> None:
    desks = [make_phone("dispatcher") for _ in range(3)]
    reader = desks[0]
    written: dict[str, int] = {}
    lock = threading.Lock()

    def writer(desk: Phone) -> None:
        try:
            for _ in range(6):
                ops = [
                    desk.op("work_order", str(uuid.uuid4()), "create", 0, title="t")
                    for _ in range(5)
                ]
                desk.push(*ops)
                apply_now()
                with lock:
                    written.update({o["entity_id"]: 1 for o in ops})
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(d,)) for d in desks]
    for t in threads:
        t.start()
    seen: set[str] = set()
    while any(t.is_alive() for t in threads):
        seen |= {c["entity_id"] for c in reader.pull(limit=4)["changes"]}
    for t in threads:
        t.join()
    apply_now()
    seen |= {c["entity_id"] for c in reader.pull(limit=4)["changes"]}
    assert seen == set(written) and len(seen) == 90


def test_cursor_older_than_the_retention_horizon_is_410(dispatcher: Phone) -> None:
    wo = _create(dispatcher)
    apply_now()
    dispatcher.pull()
    old_cursor = dispatcher.cursor
    assert old_cursor is not None
    dispatcher.push(dispatcher.op("work_order", wo, "update", 1, title="newer"))
    apply_now()
    # History is dropped a month at a time, once all of the month is past the horizon
    long_ago = timezone.now() - timedelta(days=settings.SYNC_RETENTION_DAYS + 62)
    FeedEntry.objects.update(created_at=long_ago)
    Operation.objects.update(received_at=long_ago, finished_at=long_ago)
    assert history_compact() > 0
    response = dispatcher.client.get(
        "/api/v1/sync/pull", {"device_id": dispatcher.device_id, "cursor": old_cursor}
    )
    assert response.status_code == 410
    assert response.json()["code"] == "cursor_expired"
    dispatcher.cursor = None  # resync from scratch still gives the whole current state
    [change] = dispatcher.pull()["changes"]
    assert (change["entity_id"], change["version"]) == (wo, 2)
    # An op at or below the compacted seq cannot be told from a replay: it is refused.
    replay = {**dispatcher.op("work_order", wo, "update", 2, title="replayed"), "seq": 1}
    assert dispatcher.push(replay)[0]["code"] == "op_expired"


@pytest.mark.parametrize(
    ("params", "code"),
    [({"cursor": "garbage!"}, "invalid_cursor"), ({"limit": "0"}, "invalid_limit"),
     ({"limit": "1001"}, "invalid_limit"), ({"limit": "ten"}, "invalid_limit")],
)  # fmt: skip
def test_bad_pull_parameters_are_400(tech: Phone, params: dict[str, str], code: str) -> None:
    response = tech.client.get("/api/v1/sync/pull", {"device_id": tech.device_id, **params})
    assert response.status_code == 400
    assert response.json()["code"] == code


def test_pull_without_device_id_is_400(tech: Phone) -> None:
    response = tech.client.get("/api/v1/sync/pull")
    assert (response.status_code, response.json()["code"]) == (400, "invalid_device_id")


def test_pull_waits_for_nothing_and_reports_outcomes_of_this_device_only(
    dispatcher: Phone, make_phone: Callable[..., Phone]
) -> None:
    other = make_phone("dispatcher")
    _create(dispatcher)
    _create(other)
    apply_now()
    page = dispatcher.pull()
    assert len(page["changes"]) == 2
    assert [o["device_id"] for o in page["outcomes"]] == [dispatcher.device_id]
    wait_until(lambda: WorkOrder.objects.count() == 2)


def test_the_fast_pull_body_is_the_serializers_body(dispatcher: Phone, tech: Phone) -> None:
    # Given: a page with live, deleted and revoked records and outcomes of every kind
    # (applied, a conflict, a rejection with its code),
    wo, gone, other = (str(uuid.uuid4()) for _ in range(3))
    mine = tech.user.username
    creates = [dispatcher.op("work_order", i, "create", 0, title="Job", assigned_to=mine)
               for i in (wo, gone, other)]  # fmt: skip
    dispatcher.push(*creates)
    apply_now()
    dispatcher.push(
        dispatcher.op("work_order", wo, "update", 1, status="on_hold"),
        dispatcher.op("work_order", gone, "delete", 1),
        dispatcher.op("work_order", other, "update", 1, assigned_to=None),
    )
    apply_now()
    tech.push(
        tech.op("work_order", wo, "update", 1, status="en_route", technician_notes="here"),
        tech.op("work_order", str(uuid.uuid4()), "update", 1, title="nope"),
    )
    apply_now()
    device = Device.objects.get(pk=tech.device_id)

    # When: both render it,
    page = changes_since(tech.user, device, None, 500)
    fast = PullResponseSerializer.render(page)
    documented = PullResponseSerializer(page).data

    # Then: the bodies are the same, key for key (the schema documents the serializer's).
    assert {c["state"] for c in fast["changes"]} == {"live", "deleted", "revoked"}
    assert {o["status"] for o in fast["outcomes"]} == {"conflict", "rejected"}
    assert json.dumps(fast) == json.dumps(documented)
