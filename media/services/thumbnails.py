"""Thumbnails of attached photos, for the admin."""

from __future__ import annotations

import uuid
from io import BytesIO

from django.db.models import F

from common.logging import log_warning
from media import storage
from media.models import Kind, Upload, UploadStatus
from media.services.uploads import media_type
from media.storage import object_store

THUMBNAIL_BOX = (320, 320)
# Pillow's formats by name, never guessed from the bytes: a file named a JPEG that is really
# something else is refused, not decoded by whatever plugin claims it.
THUMBNAIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
# Far below Pillow's own bomb limit (~89 million): a phone photo is 12-50 million pixels.
MAX_PIXELS = 64_000_000
MAX_ATTEMPTS = 3


class NoThumbnail(Exception):
    """This image will not make a thumbnail (recorded on the upload; never retried)."""


def thumbnail_create(upload_id: uuid.UUID) -> str:
    """Make a photo's JPEG thumbnail for the admin; returns its key ("" when none)."""
    upload = Upload.objects.filter(
        pk=upload_id, status=UploadStatus.ATTACHED, kind=Kind.PHOTO
    ).first()
    if upload is None or upload.thumbnail_key or upload.thumbnail_error:
        return upload.thumbnail_key if upload else ""
    image_format = THUMBNAIL_FORMATS.get(media_type(upload.content_type))
    if image_format is None:
        return ""
    # Counted before decoding: a try that kills the worker still counts.
    Upload.objects.filter(pk=upload.pk).update(thumbnail_attempts=F("thumbnail_attempts") + 1)
    if upload.thumbnail_attempts >= MAX_ATTEMPTS:
        _give_up(upload, f"no thumbnail after {MAX_ATTEMPTS} tries")
        return ""
    store = object_store()
    try:
        data = _thumbnail(store.get(upload.object_key), image_format)
    except NoThumbnail as exc:
        _give_up(upload, str(exc))
        return ""
    key = storage.thumbnail_key(upload.organization_id, upload.pk)
    store.put(key, data, "image/jpeg")
    Upload.objects.filter(pk=upload.pk).update(thumbnail_key=key)
    return key


def _thumbnail(original: bytes, image_format: str) -> bytes:
    """Decode as the declared format only, refuse more than MAX_PIXELS before decoding any
    pixel, and shrink before any full-size conversion."""
    # Imported here, in the worker that makes thumbnails: the web processes, which import
    # this module with the other services, never load Pillow (a few MiB each).
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(BytesIO(original), formats=[image_format]) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise NoThumbnail(f"{width}x{height} pixels is more than {MAX_PIXELS}")
            image.draft("RGB", (THUMBNAIL_BOX[0] * 2, THUMBNAIL_BOX[1] * 2))
            image.thumbnail(THUMBNAIL_BOX)
            thumbnail = ImageOps.exif_transpose(image).convert("RGB")
            out = BytesIO()
            thumbnail.save(out, "JPEG", quality=80)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise NoThumbnail(repr(exc)[:300]) from exc
    return out.getvalue()


def _give_up(upload: Upload, reason: str) -> None:
    Upload.objects.filter(pk=upload.pk).update(thumbnail_error=reason[:300])
    log_warning("upload.thumbnail_failed", upload_id=str(upload.pk), error=reason)
