"""Thumbnails of attached photos, for the admin."""

from __future__ import annotations

import uuid
from io import BytesIO

from PIL import Image, ImageOps, UnidentifiedImageError

from common.logging import log_warning
from media import storage
from media.models import Kind, Upload, UploadStatus
from media.services.uploads import media_type
from media.storage import object_store

THUMBNAIL_BOX = (320, 320)
THUMBNAIL_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})


def thumbnail_create(upload_id: uuid.UUID) -> str:
    """Make a photo's JPEG thumbnail for the admin; returns its key ("" when none)."""
    upload = Upload.objects.filter(
        pk=upload_id, status=UploadStatus.ATTACHED, kind=Kind.PHOTO
    ).first()
    if upload is None or upload.thumbnail_key:
        return upload.thumbnail_key if upload else ""
    if media_type(upload.content_type) not in THUMBNAIL_TYPES:
        return ""
    store = object_store()
    try:
        with Image.open(BytesIO(store.get(upload.object_key))) as image:
            image.draft("RGB", (THUMBNAIL_BOX[0] * 2, THUMBNAIL_BOX[1] * 2))
            thumbnail = ImageOps.exif_transpose(image).convert("RGB")
            thumbnail.thumbnail(THUMBNAIL_BOX)
            out = BytesIO()
            thumbnail.save(out, "JPEG", quality=80)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        log_warning("upload.thumbnail_failed", upload_id=str(upload_id), error=repr(exc))
        return ""
    key = storage.thumbnail_key(upload.organization_id, upload.pk)
    store.put(key, out.getvalue(), "image/jpeg")
    Upload.objects.filter(pk=upload.pk).update(thumbnail_key=key)
    return key
