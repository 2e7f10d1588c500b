"""Reads: an upload as its caller may see it, and an attachment's status."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from accounts.models import User
from media.exceptions import Refusal, UploadError
from media.models import Attachment, Upload, UploadStatus
from media.storage import presigned_get
from workorders.scope import Scope

# Failures after which an upload takes nothing more: HEAD and PATCH answer 410 Gone.
GONE_CODES = frozenset({"expired", "terminated"})


def upload_visible(user: User, upload: Upload) -> bool:
    """Scope: a dispatcher sees the organisation's uploads; a technician those of the work
    orders assigned to them, and always their own, so that evidence a technician was
    capturing when the work order was reassigned can still be finished."""
    scope = Scope.of(user)
    if upload.organization_id != scope.organization_id:
        return False
    if scope.whole_organization or upload.created_by_id == user.pk:
        return True
    return scope.work_orders().filter(pk=upload.work_order_id).exists()


def upload_for_user(user: User, upload_id: uuid.UUID) -> Upload:
    """The upload, or 404 when it does not exist or is out of scope (existence never
    leaks)."""
    upload = Upload.objects.filter(pk=upload_id).first()
    if upload is None or not upload_visible(user, upload):
        raise UploadError("not_found", "no such upload", Refusal.NOT_FOUND)
    return upload


def upload_for_writer(user: User, upload_id: uuid.UUID, terminating: bool = False) -> Upload:
    """The upload, if the user may write to it: its bytes belong to the user who started
    it; a dispatcher may also end it. Others who may see it get 403 ``not_allowed``."""
    upload = upload_for_user(user, upload_id)
    if upload.created_by_id == user.pk:
        return upload
    if terminating and Scope.of(user).whole_organization:
        return upload
    raise UploadError(
        "not_allowed", "only the user who started this upload may write to it", Refusal.FORBIDDEN
    )


def upload_gone(upload: Upload) -> UploadError | None:
    """The 410 an expired or terminated upload answers with, else None."""
    if upload.status == UploadStatus.FAILED and upload.code in GONE_CODES:
        return UploadError(
            f"upload_{upload.code}",
            f"this upload was {upload.code}; start again with a new attachment_id",
            Refusal.GONE,
        )
    return None


@dataclass(frozen=True)
class AttachmentStatus:
    """Where a file is on its way to being attached (``GET /api/v1/attachments/<id>``)."""

    id: uuid.UUID
    work_order_id: uuid.UUID
    filename: str
    content_type: str
    kind: str
    size: int
    offset: int
    sha256: str | None
    note: str
    status: str
    code: str | None
    detail: str | None
    download_url: str | None


def attachment_status(user: User, attachment_id: uuid.UUID) -> AttachmentStatus:
    try:
        upload = upload_for_user(user, attachment_id)
    except UploadError as exc:
        raise UploadError("not_found", "no such attachment", Refusal.NOT_FOUND) from exc
    note = upload.note
    download_url = None
    if upload.status == UploadStatus.ATTACHED:
        record = Attachment.objects.filter(pk=upload.pk).values_list("note", flat=True).first()
        note = upload.note if record is None else record
        download_url = presigned_get(upload.object_key)
    return AttachmentStatus(
        id=upload.pk,
        work_order_id=upload.work_order_id,
        filename=upload.filename,
        content_type=upload.content_type,
        kind=upload.kind,
        size=upload.length,
        offset=upload.offset,
        sha256=upload.sha256 or upload.declared_sha256 or None,
        note=note,
        status=upload.status,
        code=upload.code or None,
        detail=upload.detail or None,
        download_url=download_url,
    )
