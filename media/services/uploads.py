"""The upload lifecycle around the bytes: create an upload, terminate it, verify and attach
the finished file (or fail it and release what it stored), and sweep (expiry, lost
verifications, storage release)."""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import User
from common.doorbell import ring, ring_after_commit
from common.logging import log_event, log_warning
from common.metrics import UPLOAD_VERIFICATIONS
from media import storage
from media.entity import ATTACHMENT
from media.exceptions import Refusal, UploadError
from media.models import Kind, Upload, UploadPart, UploadStatus
from media.selectors import upload_for_user, upload_for_writer, upload_gone
from media.services.locks import lease_free, upload_lock
from media.storage import ObjectStore, object_store
from operations.recording import Author, ChangeSet
from workorders.scope import Scope

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's floor for every part but the last
MAX_PARTS = 10_000  # S3's ceiling on parts per multipart upload
# The tasks are rung by name (``common.doorbell``), so no service imports the task module,
# which declares its tasks under these names. A ring is best effort: the sweep rings again
# for a finish that is lost.
FINISH_UPLOAD_TASK = "media.tasks.finish_upload_task"
THUMBNAIL_TASK = "media.tasks.make_thumbnail_task"
SWEEP_UPLOADS_TASK = "media.tasks.sweep_uploads_task"  # also named by the beat schedule
SWEEP_BATCH = 100


@dataclass(frozen=True)
class UploadMeta:
    """What a tus ``POST`` declares, already parsed from ``Upload-Metadata``."""

    attachment_id: uuid.UUID
    work_order_id: uuid.UUID
    filename: str
    content_type: str
    kind: str
    sha256: str = ""
    note: str = ""


# ============================================================================================
# Create
# ============================================================================================
def part_size_for(length: int) -> int:
    """The preferred part size, raised (in whole MiB) so the file fits in 10,000 parts."""
    needed = math.ceil(length / MAX_PARTS / MiB) * MiB
    preferred: int = settings.UPLOADS_PART_SIZE
    return max(MIN_PART_SIZE, preferred, needed)


def media_type(content_type: str) -> str:
    """``image/JPEG; q=1`` → ``image/jpeg``."""
    return content_type.split(";", maxsplit=1)[0].strip().lower()


def upload_check_limits(kind: str, content_type: str, length: int) -> None:
    """Per-kind size and content-type limits, checked before any byte is stored."""
    if kind not in Kind.values:
        raise UploadError("invalid_kind", f"kind must be one of {', '.join(Kind.values)}")
    allowed = settings.UPLOADS_CONTENT_TYPES[kind]
    if media_type(content_type) not in allowed:
        raise UploadError(
            "unsupported_content_type",
            f"a {kind} must be one of {', '.join(allowed)}",
            Refusal.UNSUPPORTED_MEDIA_TYPE,
        )
    limit = settings.UPLOADS_MAX_SIZE[kind]
    if length > limit:
        raise UploadError(
            "upload_too_large", f"a {kind} may be at most {limit} bytes", Refusal.TOO_LARGE
        )


def upload_create(user: User, meta: UploadMeta, length: int) -> Upload:
    """Start an upload, or return the one already started under this ``attachment_id``
    (the phone may never have seen the first answer)."""
    upload_check_limits(meta.kind, meta.content_type, length)
    if not Scope.of(user).work_orders().filter(pk=meta.work_order_id).exists():
        raise UploadError(
            "not_found", f"work order {meta.work_order_id} not found", Refusal.NOT_FOUND
        )
    now = timezone.now()
    upload = Upload(
        id=meta.attachment_id,
        organization_id=user.org_id,
        work_order_id=meta.work_order_id,
        created_by=user,
        kind=meta.kind,
        filename=meta.filename,
        content_type=meta.content_type,
        note=meta.note,
        declared_sha256=meta.sha256,
        length=length,
        part_size=part_size_for(length),
        object_key=storage.final_key(user.org_id, meta.attachment_id),
        last_activity_at=now,
        status_changed_at=now,
    )
    try:
        with transaction.atomic():
            upload.save(force_insert=True)
    except IntegrityError:
        return _existing_upload(user, meta, length)
    log_event(
        "upload.created",
        upload_id=str(upload.id),
        work_order_id=str(meta.work_order_id),
        kind=meta.kind,
        length=length,
    )
    return upload


def _existing_upload(user: User, meta: UploadMeta, length: int) -> Upload:
    existing = Upload.objects.filter(pk=meta.attachment_id).first()
    if existing is None:  # deleted between our insert and this read: cannot happen today
        raise UploadError(
            "attachment_id_reused", "this attachment_id cannot be used", Refusal.CONFLICT
        )
    try:
        upload = upload_for_user(user, existing.pk)
    except UploadError as exc:
        raise UploadError(
            "attachment_id_reused", "this attachment_id belongs to another upload", Refusal.CONFLICT
        ) from exc
    if upload.created_by_id != user.pk:
        # Seen, but someone else's bytes: the second POST must not hand over its Location.
        raise UploadError(
            "attachment_id_reused", "this attachment_id belongs to another upload", Refusal.CONFLICT
        )
    if upload.length != length or upload.work_order_id != meta.work_order_id:
        raise UploadError(
            "attachment_id_reused",
            "this attachment_id was created with another length or work order",
            Refusal.CONFLICT,
        )
    gone = upload_gone(upload)
    if gone is not None:
        raise gone
    return upload


# ============================================================================================
# Terminate (DELETE)
# ============================================================================================
def upload_terminate(user: User, upload_id: uuid.UUID) -> None:
    """tus termination: the upload is ended for good and its stored bytes deleted."""
    upload_for_writer(user, upload_id, terminating=True)  # refused before taking the lock
    with upload_lock(upload_id, settings.UPLOADS_LOCK_WAIT_SECONDS):
        upload = upload_for_writer(user, upload_id, terminating=True)
        if upload.status == UploadStatus.FAILED and upload.code == "terminated":
            return  # a retry after a lost answer
        gone = upload_gone(upload)
        if gone is not None:
            raise gone
        if upload.status != UploadStatus.UPLOADING:
            raise UploadError(
                "upload_finished", "a finished upload cannot be terminated", Refusal.CONFLICT
            )
        _fail(upload, UploadStatus.UPLOADING, "terminated", "terminated by the client")
    log_event("upload.terminated", upload_id=str(upload_id))


# ============================================================================================
# Finish: assemble, verify, attach
# ============================================================================================
def upload_finish(upload_id: uuid.UUID) -> str:
    """Complete the multipart upload, sha256 the stored object and attach it. Safe to run
    twice or concurrently: the claim and the attach are conditional updates. Returns the
    upload's status afterwards."""
    upload = _claim_verification(upload_id)
    if upload is None:
        return Upload.objects.filter(pk=upload_id).values_list("status", flat=True).first() or ""
    try:
        return _verify_and_attach(upload)
    except Exception:
        # Give the claim back so the task's retry can claim it at once.
        Upload.objects.filter(pk=upload_id, verify_claimed_at=upload.verify_claimed_at).update(
            verify_claimed_at=None
        )
        raise


def _verify_and_attach(upload: Upload) -> str:
    store = object_store()
    if upload.multipart_id:
        parts = list(
            UploadPart.objects.filter(upload_id=upload.pk)
            .order_by("number")
            .values_list("number", "etag", "checksum")
        )
        # False means an earlier attempt completed it; the digest below checks the result.
        store.complete(upload.object_key, upload.multipart_id, parts)
    digest, size = _digest(store, upload.object_key)
    if size != upload.length:
        _fail(
            upload,
            UploadStatus.VERIFYING,
            "size_mismatch",
            f"stored {size} bytes, not {upload.length}",
        )
        return UploadStatus.FAILED
    if upload.declared_sha256 and upload.declared_sha256 != digest:
        _fail(
            upload,
            UploadStatus.VERIFYING,
            "sha256_mismatch",
            f"the stored file's sha256 is {digest}, not the declared {upload.declared_sha256}",
        )
        return UploadStatus.FAILED
    return _attach(upload, digest)


def _claim_verification(upload_id: uuid.UUID) -> Upload | None:
    now = timezone.now()
    lease = now - timedelta(seconds=settings.UPLOADS_VERIFY_LEASE_SECONDS)
    claimed = (
        Upload.objects.filter(pk=upload_id, status=UploadStatus.VERIFYING)
        .filter(Q(verify_claimed_at__isnull=True) | Q(verify_claimed_at__lt=lease))
        .update(verify_claimed_at=now, verify_attempts=F("verify_attempts") + 1)
    )
    return Upload.objects.get(pk=upload_id) if claimed else None


def _digest(store: ObjectStore, key: str) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    for chunk in store.stream(key):
        hasher.update(chunk)
        size += len(chunk)
    return hasher.hexdigest(), size


def _attach(upload: Upload, digest: str) -> str:
    """Create the attachment record (version 1, with its event and feed entry) and mark the
    upload attached, in one transaction. The work order's version does not change."""
    with transaction.atomic():
        locked = Upload.objects.select_for_update().get(pk=upload.pk)
        if locked.status != UploadStatus.VERIFYING:
            return locked.status
        changes = ChangeSet(locked.organization_id)
        changes.create(
            ATTACHMENT,
            locked.pk,
            {
                "work_order_id": str(locked.work_order_id),
                "kind": locked.kind,
                "filename": locked.filename,
                "content_type": locked.content_type,
                "size": locked.length,
                "sha256": digest,
                "note": locked.note,
            },
            Author(actor_id=locked.created_by_id),
        )
        changes.flush()
        now = timezone.now()
        Upload.objects.filter(pk=locked.pk).update(
            status=UploadStatus.ATTACHED, sha256=digest, status_changed_at=now, tail=[]
        )
        if locked.kind == Kind.PHOTO:
            ring_after_commit(THUMBNAIL_TASK, str(locked.pk))
    _release_tail(upload)
    UPLOAD_VERIFICATIONS.labels("attached").inc()
    log_event("upload.attached", upload_id=str(upload.pk), sha256=digest, size=upload.length)
    return UploadStatus.ATTACHED


def _fail(upload: Upload, expected: str, code: str, detail: str) -> bool:
    """Move the upload to ``failed`` (if it is still in ``expected``) and release its
    storage. Returns whether this call made the move."""
    moved = Upload.objects.filter(pk=upload.pk, status=expected).update(
        status=UploadStatus.FAILED,
        code=code,
        detail=detail[:2000],
        status_changed_at=timezone.now(),
    )
    if moved:
        if expected == UploadStatus.VERIFYING:  # not a termination: the file failed its checks
            UPLOAD_VERIFICATIONS.labels("failed").inc()
        log_event("upload.failed", upload_id=str(upload.pk), code=code, detail=detail)
        upload_release_storage(upload)
    return bool(moved)


def upload_release_storage(upload: Upload) -> None:
    """Delete everything a failed upload stored (idempotent), then record that."""
    store = object_store()
    store.abort_multipart_uploads(upload.object_key)
    store.delete_prefix(storage.tail_prefix(upload.pk))
    store.delete(upload.object_key)
    Upload.objects.filter(pk=upload.pk, status=UploadStatus.FAILED).update(
        released_at=timezone.now()
    )


def _release_tail(upload: Upload) -> None:
    try:
        object_store().delete_prefix(storage.tail_prefix(upload.pk))
    except (BotoCoreError, ClientError) as exc:  # leftover segments are garbage, not data
        log_warning("upload.tail_release_failed", upload_id=str(upload.pk), error=repr(exc))


# ============================================================================================
# Sweep
# ============================================================================================
@dataclass
class SweepReport:
    expired: int = 0
    released: int = 0
    requeued: int = 0


def uploads_sweep(now: datetime | None = None) -> SweepReport:
    """Expire idle unfinished uploads, release what failed uploads still store, and hand
    out again verifications that a dead worker (or a lost message) left behind."""
    now = now or timezone.now()
    report = SweepReport()
    report.expired = _expire_idle(now)
    report.released = _release_failed()
    report.requeued = _requeue_verifications(now)
    if report.expired or report.released or report.requeued:
        log_event("uploads.swept", **vars(report))
    return report


def _expire_idle(now: datetime) -> int:
    cutoff = now - timedelta(seconds=settings.UPLOADS_EXPIRY_SECONDS)
    idle = Upload.objects.filter(status=UploadStatus.UPLOADING, last_activity_at__lt=cutoff)
    expired = 0
    for upload in idle.order_by("last_activity_at")[:SWEEP_BATCH]:
        # Not while a request holds its lease: it is writing to it right now, so not idle
        # after all (one conditional update: no lease of our own to take and give back).
        moved = (
            Upload.objects.filter(lease_free())
            .filter(pk=upload.pk, status=UploadStatus.UPLOADING, last_activity_at__lt=cutoff)
            .update(
                status=UploadStatus.FAILED,
                code="expired",
                detail=f"no bytes arrived for {settings.UPLOADS_EXPIRY_SECONDS} seconds",
                status_changed_at=now,
            )
        )
        if moved:
            expired += 1
            log_event("upload.expired", upload_id=str(upload.pk), offset=upload.offset)
            upload_release_storage(upload)
    return expired


def _release_failed() -> int:
    unreleased = Upload.objects.filter(status=UploadStatus.FAILED, released_at__isnull=True)
    uploads = list(unreleased.order_by("status_changed_at")[:SWEEP_BATCH])
    for upload in uploads:
        upload_release_storage(upload)
    return len(uploads)


def _requeue_verifications(now: datetime) -> int:
    lease = now - timedelta(seconds=settings.UPLOADS_VERIFY_LEASE_SECONDS)
    # Unclaimed for as long as a pending op may wait: its doorbell was lost.
    unrung = now - timedelta(seconds=settings.SYNC_STALE_PENDING_SECONDS)
    stale = Q(verify_claimed_at__lt=lease) | Q(
        verify_claimed_at__isnull=True, status_changed_at__lt=unrung
    )
    ids = list(
        Upload.objects.filter(stale, status=UploadStatus.VERIFYING).values_list("pk", flat=True)[
            :SWEEP_BATCH
        ]
    )
    # Clear dead claims so the next worker may claim at once, whatever its lease setting.
    Upload.objects.filter(pk__in=ids, verify_claimed_at__lt=lease).update(verify_claimed_at=None)
    for upload_id in ids:
        ring(FINISH_UPLOAD_TASK, str(upload_id))
    return len(ids)
