"""Retention: the sweep that re-rings work a dead worker or a lost message left, and the
compaction of history older than the retention horizon."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from common.doorbell import ring
from common.logging import log_event
from operations.models import Operation, OpStatus, RetentionMark
from operations.partitions import (
    BASE_PARTITION,
    BASE_TIME,
    EVENTS,
    FEED,
    OPS,
    History,
    history_partitions_ensure,
    months_held,
    next_month,
    partition_name,
)
from operations.services.apply import DRAIN_TASK

RETENTION_LOCK_TIMEOUT = "5s"


def ops_sweep() -> list[uuid.UUID]:
    """Ring a drain when ops wait longer than they should (a worker died mid-apply, a
    Celery message was lost, Redis was flushed, or a gap needs skipping); returns the
    devices they belong to. One ring, not one per device: the drain claims every device with
    work it can (a device a lost host's session still holds is skipped, not waited for)."""
    stale = timezone.now() - timedelta(seconds=settings.SYNC_STALE_PENDING_SECONDS)
    device_ids = list(
        Operation.objects.filter(status=OpStatus.PENDING, received_at__lt=stale)
        .values_list("device_id", flat=True)
        .distinct()
    )
    if device_ids:
        # Not coalesced: the sweep is what recovers from a lost ring whose flag still stands.
        ring(DRAIN_TASK)
        log_event("sweep.rang", devices=len(device_ids))
    return device_ids


def history_compact(now: datetime | None = None) -> int:
    """Retention: drop each month of history older than the retention horizon, a partition
    at a time (``operations.partitions``), and return how many feed entries went.

    - The op log: a month goes once none of its ops is pending; each device's compacted seq
      is raised to its highest seq in it, so a replay of one of those ops is refused rather
      than applied twice.
    - The change feed: each record's latest entry of the month is kept (moved to the base
      partition) unless a later one supersedes it, so a resync from scratch still finds every
      record; cursors from before the month's last position then get 410 ``cursor_expired``.
    - The event log: only with SYNC_EVENT_RETENTION_DAYS set (off by default: the records
      are a projection rebuilt from it).

    Partitions for the months ahead are made first, and rows that waited in a DEFAULT
    partition are moved into their month's.
    """
    now = now or timezone.now()
    history_partitions_ensure(now)
    cutoff = now - timedelta(days=settings.SYNC_RETENTION_DAYS)
    try:
        for month in _months_before(OPS, cutoff):
            if not _drop_ops_month(month):
                break
        removed = sum(_drop_feed_month(month) for month in _months_before(FEED, cutoff))
        if removed:
            _prune_base()
        if settings.SYNC_EVENT_RETENTION_DAYS:
            event_cutoff = now - timedelta(days=settings.SYNC_EVENT_RETENTION_DAYS)
            for month in _months_before(EVENTS, event_cutoff):
                _drop_month(EVENTS, month)
    except OperationalError as exc:
        # Most likely the lock timeout: a long query held the table. The next run goes on.
        log_event("history.retention_deferred", error=str(exc).strip()[:500])
        return 0
    return removed


def _months_before(history: History, cutoff: datetime) -> list[datetime]:
    return [month for month in months_held(history) if next_month(month) <= cutoff]


def _drop_ops_month(month: datetime) -> bool:
    name = partition_name(OPS, month)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {name} WHERE status = 'pending')"  # noqa: S608
        )
        (pending,) = cursor.fetchone() or (False,)
        if pending:
            log_event("history.retention_waits", partition=name, reason="ops pending")
            return False
        cursor.execute(
            "UPDATE operations_devicesyncstate s SET compacted_seq = m.top"  # noqa: S608
            f" FROM (SELECT device_id, max(seq) AS top FROM {name} WHERE seq IS NOT NULL"
            " GROUP BY device_id) m"
            " WHERE s.device_id = m.device_id AND s.compacted_seq < m.top"
        )
        _drop_month(OPS, month)
    return True


def _drop_feed_month(month: datetime) -> int:
    name = partition_name(FEED, month)
    with transaction.atomic(), connection.cursor() as cursor:
        mark, _ = RetentionMark.objects.select_for_update().get_or_create(id=1)
        cursor.execute(f"SELECT max(pos), count(*) FROM {name}")  # noqa: S608
        top, entries = cursor.fetchone() or (None, 0)
        # Each record's latest entry, unless a later one supersedes it, moves to the base.
        cursor.execute(
            f"UPDATE {FEED.table} f SET created_at = %s"  # noqa: S608
            f" FROM (SELECT DISTINCT ON (entity_id) entity_id, pos FROM {name}"
            "        WHERE kind = 'record' ORDER BY entity_id, pos DESC) AS latest"
            " WHERE f.created_at >= %s AND f.created_at < %s AND f.pos = latest.pos"
            f" AND NOT EXISTS (SELECT 1 FROM {FEED.table} later"
            "  WHERE later.entity_id = latest.entity_id AND later.pos > latest.pos)",
            [BASE_TIME, month, next_month(month)],
        )
        kept: int = cursor.rowcount
        _drop_month(FEED, month)
        if top is not None:
            mark.horizon_pos = max(mark.horizon_pos, top)
        mark.compacted_at = timezone.now()
        mark.save()
    log_event("history.compacted", partition=name, horizon_pos=mark.horizon_pos, kept=kept)
    return int(entries) - kept


def _prune_base() -> None:
    """Entries kept past retention that a later entry of their record has since superseded."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {BASE_PARTITION} b WHERE EXISTS ("  # noqa: S608
            f" SELECT 1 FROM {FEED.table} later"
            "  WHERE later.entity_id = b.entity_id AND later.pos > b.pos)"
        )


def _drop_month(history: History, month: datetime) -> None:
    """Drop the month's partition (inside the caller's transaction, if any)."""
    name = partition_name(history, month)
    with transaction.atomic(), connection.cursor() as cursor:
        # Dropping a partition takes its table's lock for a moment: wait for it no longer
        # than this, rather than hold every push and pull queued behind a long query.
        cursor.execute(f"SET LOCAL lock_timeout = '{RETENTION_LOCK_TIMEOUT}'")
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [name])
        (rows,) = cursor.fetchone() or (0,)
        cursor.execute(f"DROP TABLE {name}")
    log_event("history.partition_dropped", partition=name, rows_estimate=rows)
