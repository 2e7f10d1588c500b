"""History partitioned by month (operations.partitions): retention drops partitions, rows
of a month without a partition wait in the DEFAULT one and are moved into theirs, and an op
stays stored once however its copies fall across months."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from operations.models import DeviceSyncState, Event, FeedEntry, Operation
from operations.partitions import (
    BASE_PARTITION,
    EVENTS,
    FEED,
    OPS,
    History,
    history_partition_make,
    history_partitions_ensure,
    month_of,
    months_held,
    near_edge,
    next_month,
    partition_name,
)
from operations.selectors import _PULL_SQL, Cursor, cursor_read
from operations.services import history_compact
from tests.fixtures import Phone, apply_now

pytestmark = pytest.mark.django_db(transaction=True)


def _rows_in(partition: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {partition}")
        (count,) = cursor.fetchone() or (0,)
    return int(count)


def _long_ago() -> datetime:
    """A moment in a month wholly past the retention horizon."""
    return timezone.now() - timedelta(days=settings.SYNC_RETENTION_DAYS + 62)


def _create(phone: Phone, title: str = "Job") -> str:
    wo = str(uuid.uuid4())
    [result] = phone.push(phone.op("work_order", wo, "create", 0, title=title))
    assert result["status"] == "accepted"
    return wo


def test_a_month_without_its_partition_waits_in_the_default_and_ensure_moves_it(
    dispatcher: Phone,
) -> None:
    # Given ops and feed entries of a month that has no partition (its rows went to DEFAULT)
    _create(dispatcher)
    apply_now()
    then = _long_ago()
    Operation.objects.update(received_at=then)
    FeedEntry.objects.update(created_at=then)
    assert _rows_in(f"{OPS.table}_default") == 1
    # When the partitions are ensured
    made = history_partitions_ensure()
    # Then that month has a partition of its own holding them, with its uniques
    month = month_of(then)
    assert partition_name(OPS, month) in made
    assert _rows_in(partition_name(OPS, month)) == 1
    assert _rows_in(f"{OPS.table}_default") == 0
    assert _rows_in(f"{FEED.table}_default") == 0
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = %s",
            [partition_name(OPS, month)],
        )
        names = {row[0] for row in cursor.fetchall()}
    assert {f"{partition_name(OPS, month)}_op_uniq", f"{partition_name(OPS, month)}_seq_uniq"} <= (
        names
    )
    # And this month and the months ahead have theirs
    now = month_of(timezone.now())
    assert now in months_held(OPS) and now in months_held(EVENTS) and now in months_held(FEED)
    assert len([m for m in months_held(FEED) if m > now]) == settings.SYNC_PARTITIONS_AHEAD


def test_retention_drops_old_months_keeping_each_records_latest_entry(
    dispatcher: Phone,
) -> None:
    # Given a record created and changed long ago, and one changed again since
    kept = _create(dispatcher, "kept")
    changed = _create(dispatcher, "changed")
    dispatcher.push(dispatcher.op("work_order", kept, "update", 1, title="kept v2"))
    apply_now()
    then = _long_ago()
    Operation.objects.update(received_at=then, finished_at=then)
    FeedEntry.objects.update(created_at=then)
    Event.objects.update(created_at=then)
    old_top = FeedEntry.objects.order_by("-pos").values_list("pos", flat=True)[0]
    old_entries = FeedEntry.objects.count()
    dispatcher.push(dispatcher.op("work_order", changed, "update", 1, title="changed v2"))
    apply_now()
    history_partitions_ensure()
    month = month_of(then)
    # When retention runs
    removed = history_compact()
    # Then the old month's partitions are gone (the event log's are kept: off by default)
    assert month not in months_held(OPS) and month not in months_held(FEED)
    assert month in months_held(EVENTS)
    # Only `kept`'s latest entry was kept (in the base); superseded ones and outcomes went
    assert list(FeedEntry.objects.filter(pos__lte=old_top).values_list("entity_id", "kind")) == [
        (uuid.UUID(kept), "record")
    ]
    assert _rows_in(BASE_PARTITION) == 1
    assert removed == old_entries - 1
    # And a full resync still sends both records, at their latest versions
    dispatcher.cursor = None
    got = {c["entity_id"]: c["version"] for c in dispatcher.pull()["changes"]}
    assert got == {kept: 2, changed: 2}
    # And the device's ops up to the dropped month's highest seq are known as compacted
    state = DeviceSyncState.objects.get(pk=uuid.UUID(dispatcher.device_id))
    assert state.compacted_seq == 3
    # And that month's events are all still there
    assert Event.objects.filter(created_at__lt=month_of(timezone.now())).count() == 3


def test_a_month_with_a_pending_op_is_not_dropped(dispatcher: Phone) -> None:
    # Given a month long past whose ops are not all finished (held back by a gap)
    wo = _create(dispatcher)
    apply_now()
    dispatcher.seq += 1  # seq 2 never arrives: seq 3 waits
    dispatcher.push(dispatcher.op("work_order", wo, "update", 1, title="late"))
    then = _long_ago()
    Operation.objects.update(received_at=then)
    history_partitions_ensure()
    # When retention runs
    history_compact()
    # Then the op log keeps that month (nothing pending is ever dropped)
    assert month_of(then) in months_held(OPS)
    assert Operation.objects.filter(status="pending").count() == 1


@override_settings(SYNC_EVENT_RETENTION_DAYS=30)
def test_event_retention_when_configured_drops_old_months_of_events(dispatcher: Phone) -> None:
    _create(dispatcher)
    apply_now()
    then = _long_ago()
    Event.objects.update(created_at=then)
    history_partitions_ensure()
    assert month_of(then) in months_held(EVENTS)
    history_compact()
    assert month_of(then) not in months_held(EVENTS)
    assert Event.objects.count() == 0


def _stored_last_month(phone: Phone, op: dict[str, object]) -> None:
    """Push `op` and move it to last month's partition, as if it had come then."""
    [result] = phone.push(op)
    assert result["status"] == "accepted"
    last_month = month_of(timezone.now()) - timedelta(days=1)
    Operation.objects.filter(op_id=str(op["op_id"])).update(received_at=last_month)
    history_partitions_ensure()
    assert _rows_in(partition_name(OPS, month_of(last_month))) == 1


@pytest.mark.parametrize("edge", [False, True], ids=["mid-month", "near-edge"])
def test_an_op_stored_in_another_month_is_a_duplicate_and_its_seq_stays_taken(
    dispatcher: Phone, edge: bool
) -> None:
    wo = str(uuid.uuid4())
    op = dispatcher.op("work_order", wo, "create", 0, title="once")
    _stored_last_month(dispatcher, op)
    margin = 40 * 86400 if edge else 1  # 40 days: every moment is near a month's edge
    with override_settings(SYNC_PARTITION_EDGE_SECONDS=margin):
        assert near_edge(timezone.now()) is edge
        # A retry of the op (its reply was lost) is a duplicate, not a second op
        assert dispatcher.push(op)[0]["status"] == "duplicate"
        # Another op under the same seq is refused
        other = {
            **dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="b"),
            "seq": op["seq"],
        }
        [result] = dispatcher.push(other)
        assert (result["status"], result["code"]) == ("rejected", "seq_reused")
        # The same op id for another op is refused
        reused = {**dispatcher.op("work_order", wo, "update", 1, title="x"), "op_id": op["op_id"]}
        [result] = dispatcher.push(reused)
        assert (result["status"], result["code"]) == ("rejected", "op_id_reused")
    assert Operation.objects.filter(op_id=op["op_id"]).count() == 1
    apply_now()
    assert Event.objects.filter(op_id=op["op_id"]).count() == 1


def test_near_edge_is_true_only_within_the_margin_of_a_month_boundary() -> None:
    edge = datetime(2027, 1, 1, tzinfo=UTC)
    margin = timedelta(seconds=settings.SYNC_PARTITION_EDGE_SECONDS)
    assert near_edge(edge) and near_edge(edge - margin / 2) and near_edge(edge + margin / 2)
    assert not near_edge(edge + 2 * margin) and not near_edge(edge - 2 * margin)


@pytest.mark.parametrize("history", [OPS, EVENTS, FEED], ids=lambda h: h.table)
def test_every_partition_has_its_uniques(history: History) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, count(x.indexrelid) FILTER (WHERE x.indisunique"
            "  AND NOT x.indisprimary)"
            " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " LEFT JOIN pg_index x ON x.indrelid = c.oid"
            " WHERE i.inhparent = %s::regclass GROUP BY c.relname",
            [history.table],
        )
        counts = dict(cursor.fetchall())
    assert counts and set(counts.values()) == {len(history.uniques)}, counts


def test_a_pull_plans_only_the_months_from_its_cursor_on(dispatcher: Phone) -> None:
    # Given a feed with months of partitions behind this one
    now = month_of(timezone.now())
    past = [month_of(now - timedelta(days=31 * n)) for n in (1, 2, 3)]
    for month in past:
        history_partition_make(FEED, month)
    _create(dispatcher)
    apply_now()
    # When a phone pulls, its next cursor carries a bound an hour before its last entry
    dispatcher.pull()
    read = cursor_read(dispatcher.cursor)
    assert timezone.now() - read.since < timedelta(hours=1, minutes=1)

    # Then the next pull's plan reads none of the months before that bound (the old cursor
    # format, without one, still reads them all)
    def plan(cursor: Cursor) -> str:
        params = {"device": uuid.UUID(dispatcher.device_id), "technician": None,
                  "org": dispatcher.user.org_id, "after": cursor.pos, "since": cursor.since,
                  "limit": 100}  # fmt: skip
        with connection.cursor() as db:
            db.execute("EXPLAIN " + _PULL_SQL[True], params)
            return "\n".join(row[0] for row in db.fetchall())

    bounded = plan(read)
    assert partition_name(FEED, month_of(read.since)) in bounded
    for month in past:
        if next_month(month) <= read.since:
            assert partition_name(FEED, month) not in bounded
    unbounded = plan(Cursor(read.pos))
    assert all(partition_name(FEED, month) in unbounded for month in past)
    # And an old-format cursor (a phone that pulled before the upgrade) pulls the same
    dispatcher.push(dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="later"))
    apply_now()
    old = dispatcher.client.get(
        "/api/v1/sync/pull",
        {"device_id": dispatcher.device_id, "cursor": Cursor(read.pos).encode()},
    ).json()
    new = dispatcher.pull()
    assert [c["entity_id"] for c in old["changes"]] == [c["entity_id"] for c in new["changes"]]
    assert len(new["changes"]) == 1
