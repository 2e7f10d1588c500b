"""Attachments (a synced record type) and the resumable uploads that produce them."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from accounts.models import Organization
from workorders.models import SyncedRecord, WorkOrder


class Kind(models.TextChoices):
    PHOTO = "photo"
    VIDEO = "video"
    SIGNATURE = "signature"
    DOCUMENT = "document"


class Attachment(SyncedRecord):
    """A verified file linked to its work order. Only the upload flow creates these (as an
    event, version 1); clients may then change ``note``."""

    work_order = models.ForeignKey(WorkOrder, on_delete=models.PROTECT, related_name="attachments")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=255)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    note = models.TextField(blank=True, default="")

    def __str__(self) -> str:
        return self.filename


class UploadStatus(models.TextChoices):
    UPLOADING = "uploading"
    # Every byte is durable; the object is being assembled, checksummed and attached.
    VERIFYING = "verifying"
    ATTACHED = "attached"
    FAILED = "failed"


class Upload(models.Model):
    """One tus upload, named by the client's ``attachment_id``.

    Postgres is the truth about what is stored: ``offset`` counts only bytes already written
    to the object store, as committed parts of the multipart upload (all ``part_size`` long)
    followed by ``tail`` segments (small objects holding bytes not yet in a part). So
    ``offset == parts * part_size + sum(tail sizes)`` after every commit.
    """

    id = models.UUIDField(primary_key=True)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    work_order = models.ForeignKey(WorkOrder, on_delete=models.PROTECT, related_name="uploads")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=255)
    note = models.TextField(blank=True, default="")
    # The client's sha256 of the whole file, when it sent one; checked before attaching.
    declared_sha256 = models.CharField(max_length=64, blank=True, default="")
    length = models.BigIntegerField()
    offset = models.BigIntegerField(default=0)
    part_size = models.BigIntegerField()
    object_key = models.CharField(max_length=300)
    multipart_id = models.CharField(max_length=300, blank=True, default="")
    # Its multipart upload was begun with CRC32 part checksums (media.storage); one begun
    # before they were (False) takes its parts with a Content-MD5.
    part_checksums = models.BooleanField(default=False)
    # [[start offset, size], ...] of the tail segment objects, in order.
    tail = models.JSONField(default=list, blank=True)
    # The sha256 the server computed from the stored object.
    sha256 = models.CharField(max_length=64, blank=True, default="")
    status = models.CharField(
        max_length=10, choices=UploadStatus.choices, default=UploadStatus.UPLOADING
    )
    code = models.CharField(max_length=40, blank=True, default="")
    detail = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    # Last time bytes were stored (or the upload was created): expiry counts from here.
    last_activity_at = models.DateTimeField()
    # When status last changed, and when a worker claimed the verification (its lease).
    status_changed_at = models.DateTimeField()
    verify_claimed_at = models.DateTimeField(null=True, blank=True)
    verify_attempts = models.PositiveIntegerField(default=0)
    # Set once the object store holds nothing of a failed upload any more.
    released_at = models.DateTimeField(null=True, blank=True)
    # The lease of the request writing to it (media.services.locks): who holds it, and when
    # it lapses (Postgres' clock) unless its holder renews it.
    lease_token = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    thumbnail_key = models.CharField(max_length=300, blank=True, default="")
    # Counted before each try, so an image that kills the worker decoding it is given up on
    # after a few tries instead of being retried for ever; why it failed, when it did.
    thumbnail_attempts = models.PositiveSmallIntegerField(default=0)
    thumbnail_error = models.CharField(max_length=300, blank=True, default="")

    class Meta:
        indexes = [
            models.Index(
                fields=["last_activity_at"],
                condition=Q(status="uploading"),
                name="upload_idle_idx",
            ),
            models.Index(
                fields=["status_changed_at"],
                condition=Q(status="verifying"),
                name="upload_verifying_idx",
            ),
            models.Index(
                fields=["status_changed_at"],
                condition=Q(status="failed", released_at__isnull=True),
                name="upload_unreleased_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.filename} ({self.status} {self.offset}/{self.length})"

    @property
    def tail_size(self) -> int:
        return sum(size for _, size in self.tail)


class UploadPart(models.Model):
    """A committed part of the upload's S3 multipart upload."""

    upload = models.ForeignKey(Upload, on_delete=models.CASCADE, related_name="parts")
    number = models.PositiveIntegerField()
    etag = models.CharField(max_length=200)
    size = models.BigIntegerField()
    # The CRC32 the store verified (base64), listed again with the completion; "" for a part
    # of a multipart upload begun without part checksums.
    checksum = models.CharField(max_length=16, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["upload", "number"], name="upload_part_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.upload_id} part {self.number}"
