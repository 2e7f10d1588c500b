"""Retention: the sweep that re-rings work a dead worker or a lost message left, and the
compaction of history older than the retention horizon."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from common.doorbell import ring
from common.logging import log_event
from operations.models import FINISHED, FeedEntry, Operation, OpStatus, RetentionMark
from operations.services.apply import DRAIN_TASK
from operations.services.state import raise_compacted_seq


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
    """Drop what is older than the retention horizon and no longer needed: finished ops and
    feed entries superseded by a later entry for the same record. Cursors from before the
    horizon then get 410 ``cursor_expired`` (the client resyncs from scratch)."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.SYNC_RETENTION_DAYS)
    horizon = (
        FeedEntry.objects.filter(created_at__lt=cutoff)
        .order_by("-pos")
        .values_list("pos", flat=True)
        .first()
    )
    if horizon is None:
        return 0
    with transaction.atomic():
        mark, _ = RetentionMark.objects.select_for_update().get_or_create(id=1)
        with connection.cursor() as cursor:
            cursor.execute(
                """
                DELETE FROM operations_feedentry f
                WHERE f.pos <= %s AND (f.kind = 'outcome' OR EXISTS (
                    SELECT 1 FROM operations_feedentry later
                    WHERE later.entity_id = f.entity_id AND later.pos > f.pos))
                """,
                [horizon],
            )
            removed: int = cursor.rowcount
        compacted = Operation.objects.filter(status__in=FINISHED, finished_at__lt=cutoff)
        for device_id, seq in _max_seq_per_device(compacted):
            raise_compacted_seq(device_id, seq)
        compacted.delete()
        mark.horizon_pos = max(mark.horizon_pos, horizon)
        mark.compacted_at = now
        mark.save()
    log_event("history.compacted", horizon_pos=horizon, feed_entries_removed=removed)
    return removed


def _max_seq_per_device(ops: Any) -> list[tuple[uuid.UUID, int]]:
    return [
        (row["device_id"], row["top"])
        for row in ops.exclude(seq__isnull=True).values("device_id").annotate(top=Max("seq"))
    ]
