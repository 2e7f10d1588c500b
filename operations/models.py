"""The op log (what devices sent), the event log (what happened to records) and the
commit-ordered change feed (what devices pull)."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from accounts.models import Device, Organization, User


class OpStatus(models.TextChoices):
    PENDING = "pending"
    APPLIED = "applied"
    CONFLICT = "conflict"
    REJECTED = "rejected"


FINISHED = (OpStatus.APPLIED, OpStatus.CONFLICT, OpStatus.REJECTED)


class Operation(models.Model):
    """One client op, stored durably before the client hears ``accepted``."""

    op_id = models.UUIDField(primary_key=True)
    device = models.ForeignKey(Device, on_delete=models.PROTECT, related_name="operations")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    # Null only for ops rejected at push whose seq was not a positive integer.
    seq = models.BigIntegerField(null=True)
    entity = models.CharField(max_length=40)
    entity_id = models.UUIDField(null=True)
    action = models.CharField(max_length=10)
    base_version = models.BigIntegerField(null=True)
    fields = models.JSONField(default=dict)
    client_time = models.DateTimeField(null=True)
    # sha256 of the op's canonical content: same op_id + other content → op_id_reused.
    content_hash = models.CharField(max_length=64)
    received_at = models.DateTimeField()
    status = models.CharField(max_length=10, choices=OpStatus.choices, default=OpStatus.PENDING)
    rejected_at_push = models.BooleanField(default=False)
    code = models.CharField(max_length=40, blank=True, default="")
    detail = models.TextField(blank=True, default="")
    version = models.BigIntegerField(null=True)
    overridden_fields = models.JSONField(default=list)
    conflict_ids = models.JSONField(default=list)
    finished_at = models.DateTimeField(null=True)

    class Meta:
        # Partitioned by month of received_at (operations.partitions). Unique in each
        # partition, and checked across them by the push: op_id, and a device's seq (ops
        # refused at push may repeat a seq).
        indexes = [
            models.Index(
                fields=["device", "seq"], condition=Q(status="pending"), name="op_pending_idx"
            ),
            models.Index(
                fields=["received_at"], condition=Q(status="pending"), name="op_pending_age_idx"
            ),
            models.Index(fields=["device", "seq"], name="op_device_seq_idx"),
            models.Index(fields=["device", "status"], name="op_device_status_idx"),
            models.Index(fields=["finished_at"], name="op_finished_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.op_id} {self.entity}.{self.action} seq={self.seq} ({self.status})"


class DeviceSyncState(models.Model):
    """Where the apply loop stands for one device: the sync engine's own row, apart from the
    account's ``Device``, so an apply never locks the row that authentication, push and pull
    read and stamp.

    ``done_seq`` is the apply watermark: every op of this device with seq <= done_seq is
    finished (applied, conflict or rejected), or was skipped as a gap (see ``skipped_seqs``).
    The row is made on the device's first apply (or compaction, or refusal).
    """

    device = models.OneToOneField(
        Device, primary_key=True, on_delete=models.CASCADE, related_name="sync_state"
    )
    done_seq = models.BigIntegerField(default=0)
    # Set while the apply loop waits for a missing seq; cleared when it moves on.
    gap_since = models.DateTimeField(null=True, blank=True)
    gap_seq = models.BigIntegerField(null=True, blank=True)
    skipped_seqs = models.JSONField(default=list, blank=True)
    # Ops with seq <= this were compacted away; an unknown op at or below it is refused.
    compacted_seq = models.BigIntegerField(default=0)
    # The device's latest refused op, for support (sync health in the workspace).
    last_error = models.TextField(blank=True, default="")

    def __str__(self) -> str:
        return f"{self.device_id} done_seq={self.done_seq}"


class EventKind(models.TextChoices):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    RESOLVE = "resolve"


class Event(models.Model):
    """An applied change to one record. Replaying a record's bumping events in version order
    rebuilds it (``manage.py rebuild_projection``)."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    entity = models.CharField(max_length=40)
    entity_id = models.UUIDField()
    version = models.BigIntegerField()
    # False for events that changed no value (a resolution that kept the server value).
    bumped = models.BooleanField(default=True)
    kind = models.CharField(max_length=10, choices=EventKind.choices)
    op_id = models.UUIDField(null=True, blank=True)
    device = models.ForeignKey(
        Device, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    seq = models.BigIntegerField(null=True, blank=True)
    actor = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # {field: [old, new]}; a delete is {"__deleted__": [false, true]}.
    changes = models.JSONField(default=dict)
    overridden_fields = models.JSONField(default=list)
    conflict_ids = models.JSONField(default=list)
    received_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # Partitioned by month of created_at (operations.partitions). Unique in each
        # partition: a bumping event's (record, version), and an event's op_id (an op is
        # applied at most once, whatever the workers do: its status moves from pending only
        # once, under its device's sync-state row lock).
        indexes = [models.Index(fields=["entity_id", "version"], name="event_record_idx")]

    def __str__(self) -> str:
        return f"{self.entity} {self.entity_id} v{self.version} {self.kind}"


class FeedKind(models.TextChoices):
    RECORD = "record"
    OUTCOME = "outcome"


class FeedEntry(models.Model):
    """The commit-ordered change feed.

    ``pos`` is taken while holding a per-organisation advisory lock that is released only
    at commit (see ``operations.recording``), so positions become visible in increasing
    order: a reader that has seen position N will never later find a new row below N.
    """

    pos = models.BigAutoField(primary_key=True)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=10, choices=FeedKind.choices)
    entity = models.CharField(max_length=40, blank=True, default="")
    entity_id = models.UUIDField(null=True)
    # The technician whose scope holds the record after this change, and the one who just
    # lost it (reassignment): pull sends ``revoked`` to the latter.
    assignee_id = models.BigIntegerField(null=True)
    prev_assignee_id = models.BigIntegerField(null=True)
    device_id = models.UUIDField(null=True)
    op_id = models.UUIDField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # Partitioned by month of created_at (operations.partitions), with a base partition
        # for the entries retention keeps.
        indexes = [
            models.Index(fields=["organization", "pos"], name="feed_org_pos_idx"),
            models.Index(
                fields=["assignee_id", "pos"],
                condition=Q(assignee_id__isnull=False),
                name="feed_assignee_idx",
            ),
            models.Index(
                fields=["prev_assignee_id", "pos"],
                condition=Q(prev_assignee_id__isnull=False),
                name="feed_prev_assignee_idx",
            ),
            models.Index(
                fields=["device_id", "pos"],
                condition=Q(device_id__isnull=False),
                name="feed_device_idx",
            ),
            models.Index(fields=["entity_id", "pos"], name="feed_record_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.pos} {self.kind} {self.entity or self.op_id}"


class RetentionMark(models.Model):
    """Singleton: feed positions below ``horizon_pos`` may have been compacted."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    horizon_pos = models.BigIntegerField(default=0)
    compacted_at = models.DateTimeField(null=True)

    def __str__(self) -> str:
        return f"horizon {self.horizon_pos}"
