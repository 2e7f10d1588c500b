"""History partitioned by time: the op log, the event log and the change feed are Postgres
range-partitioned tables, one partition per calendar month (UTC) of their time column, so
retention is a partition dropped, not rows deleted, and the hot partitions stay small
however many years lie behind them.

Each table also has a DEFAULT partition, which only catches rows of a month whose partition
is missing (``history_partitions_ensure`` was not run for months): nothing is ever refused
for want of a partition, and the next ``ensure`` moves such rows into their month. The feed
has one more, ``operations_feedentry_base``: the entries retention keeps from a dropped
month (each record's latest, so a resync from scratch still finds every record) are moved
there, with ``created_at`` set to ``BASE_TIME``.

Postgres cannot enforce a unique index across partitions unless it holds the partition key,
so the uniques that make pushes and applies idempotent (an op's id, a device's seq, an op's
event, a record's version) are indexes of each partition (``UNIQUE_PER_PARTITION``), made
with the partition. Across partitions the push checks them itself (``operations.services.
push``): its insert skips an op already stored in another month, and near a month's edge,
where two copies of one op could land on either side of it, pushes of one device (and of
one op id) are serialised by advisory locks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from common.logging import log_event

# Where the feed entries kept past retention live (their own partition).
BASE_TIME = datetime(1970, 1, 1, tzinfo=UTC)
BASE_PARTITION = "operations_feedentry_base"


@dataclass(frozen=True)
class History:
    table: str
    key: str  # the time column it is partitioned by
    # Each partition's unique indexes: (name suffix, columns and predicate).
    uniques: tuple[tuple[str, str], ...]


OPS = History(
    "operations_operation",
    "received_at",
    (("op", "(op_id)"), ("seq", "(device_id, seq) WHERE NOT rejected_at_push")),
)
EVENTS = History(
    "operations_event",
    "created_at",
    (
        ("id", "(id)"),
        ("op", "(op_id) WHERE op_id IS NOT NULL"),
        ("version", "(entity, entity_id, version) WHERE bumped"),
    ),
)
FEED = History("operations_feedentry", "created_at", (("pos", "(pos)"),))
HISTORY = (OPS, EVENTS, FEED)


def month_of(moment: datetime) -> datetime:
    """The first instant (UTC) of the month holding ``moment``."""
    moment = moment.astimezone(UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(month: datetime) -> datetime:
    return (month + timedelta(days=32)).replace(day=1)


def partition_name(history: History, month: datetime) -> str:
    return f"{history.table}_p{month:%Y%m}"


def near_edge(moment: datetime) -> bool:
    """Whether ``moment`` is within SYNC_PARTITION_EDGE_SECONDS of a month's edge: writes
    stamped by hosts whose clocks differ by a few seconds (or that started a moment apart)
    may then land in different partitions."""
    margin = timedelta(seconds=settings.SYNC_PARTITION_EDGE_SECONDS)
    month = month_of(moment)
    return moment - month < margin or next_month(month) - moment < margin


def create_partitioned_parts(history: History) -> None:
    """The DEFAULT partition (and the feed's base), with their unique indexes: what a newly
    partitioned table needs before any row goes in."""
    with connection.cursor() as cursor:
        default = f"{history.table}_default"
        cursor.execute(f"CREATE TABLE {default} PARTITION OF {history.table} DEFAULT")
        partition_uniques_make(cursor, history, default)
        if history is FEED:
            cursor.execute(
                f"CREATE TABLE {BASE_PARTITION} PARTITION OF {FEED.table}"
                " FOR VALUES FROM (MINVALUE) TO (%s)",
                [BASE_TIME + timedelta(days=1)],
            )
            partition_uniques_make(cursor, FEED, BASE_PARTITION)


def partition_uniques_make(cursor: CursorWrapper, history: History, partition: str) -> None:
    """The partition's unique indexes (a partitioned table cannot have them itself)."""
    for statement in partition_uniques_sql(history, partition):
        cursor.execute(statement)


def partition_uniques_sql(history: History, partition: str) -> list[str]:
    return [
        f"CREATE UNIQUE INDEX IF NOT EXISTS {partition}_{suffix}_uniq ON {partition} {definition}"
        for suffix, definition in history.uniques
    ]


def months_held(history: History) -> list[datetime]:
    """The months that have a partition of their own, oldest first."""
    prefix = f"{history.table}_p"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = %s::regclass",
            [history.table],
        )
        names = [row[0] for row in cursor.fetchall()]
    months = [
        datetime.strptime(name[len(prefix) :], "%Y%m").replace(tzinfo=UTC)
        for name in names
        if name.startswith(prefix) and name[len(prefix) :].isdigit()
    ]
    return sorted(months)


def history_partitions_ensure(now: datetime | None = None) -> list[str]:
    """Make the partitions of this month and SYNC_PARTITIONS_AHEAD months ahead, and of every
    month rows wait for in a DEFAULT partition; returns the partitions made. Idempotent:
    beat runs it with the retention, and ``migrate`` once."""
    now = now or timezone.now()
    made = []
    for history in HISTORY:
        wanted = {month_of(now)}
        for _ in range(settings.SYNC_PARTITIONS_AHEAD):
            wanted.add(next_month(max(wanted)))
        wanted |= _months_in_default(history)
        for month in sorted(wanted - set(months_held(history))):
            history_partition_make(history, month)
            made.append(partition_name(history, month))
    if made:
        log_event("history.partitions_made", partitions=made)
    return made


def _months_in_default(history: History) -> set[datetime]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT DISTINCT date_trunc('month', {history.key}, 'UTC')"  # noqa: S608
            f" FROM {history.table}_default"
        )
        return {row[0].astimezone(UTC) for row in cursor.fetchall()}


def history_partition_make(history: History, month: datetime) -> None:
    name, end = partition_name(history, month), next_month(month)
    default = f"{history.table}_default"
    bounds = [month, end]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {default}"  # noqa: S608
            f" WHERE {history.key} >= %s AND {history.key} < %s)",
            bounds,
        )
        (stray,) = cursor.fetchone() or (False,)
        if not stray:
            cursor.execute(
                f"CREATE TABLE {name} PARTITION OF {history.table} FOR VALUES FROM (%s) TO (%s)",
                bounds,
            )
        else:
            # Rows of this month wait in the DEFAULT partition: moved into a table of their
            # own that is then attached, with writes to the table held off meanwhile.
            cursor.execute(f"LOCK TABLE {history.table} IN EXCLUSIVE MODE")
            cursor.execute(
                f"CREATE TABLE {name} (LIKE {history.table} INCLUDING DEFAULTS"
                " INCLUDING CONSTRAINTS)"
            )
            cursor.execute(
                f"WITH moved AS (DELETE FROM {default} WHERE {history.key} >= %s"  # noqa: S608
                f" AND {history.key} < %s RETURNING *) INSERT INTO {name} SELECT * FROM moved",
                bounds,
            )
            cursor.execute(
                f"ALTER TABLE {history.table} ATTACH PARTITION {name} FOR VALUES FROM (%s) TO (%s)",
                bounds,
            )
        partition_uniques_make(cursor, history, name)
