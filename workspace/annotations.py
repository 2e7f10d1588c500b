"""Per-row figures the workspace's lists and board annotate their querysets with."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from conflicts.models import Conflict, ConflictStatus
from media.models import Upload, UploadStatus


def count_of(rows: QuerySet[Any], key: str) -> Coalesce:
    """How many of ``rows`` (already filtered on ``key=OuterRef(...)``) each outer row has,
    0 when none: one correlated subquery, grouped on ``key``."""
    counted = rows.order_by().values(key).annotate(n=Count("*")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


def open_conflicts_here() -> QuerySet[Conflict]:
    """The open conflicts of the work order of the outer row."""
    return Conflict.objects.filter(work_order_id=OuterRef("pk"), status=ConflictStatus.OPEN)


def uploads_in_progress_here() -> QuerySet[Upload]:
    """The uploads of the work order of the outer row that are not attached or failed yet."""
    return Upload.objects.filter(
        work_order_id=OuterRef("pk"), status__in=[UploadStatus.UPLOADING, UploadStatus.VERIFYING]
    )
