"""Thumbnails never decode what they should not: only the declared format, nothing past a
pixel limit far below Pillow's, and an image that cannot be made is recorded, never retried
without end (a decompression bomb that kills the worker is given up on after a few tries)."""

from __future__ import annotations

import io
import subprocess
import sys
import uuid

import pytest
from PIL import Image

from devstack.ensure_bucket import S3Settings
from media.models import Upload, UploadStatus
from media.services.thumbnails import MAX_ATTEMPTS, MAX_PIXELS, thumbnail_create
from tests.fixtures import Phone
from tests.media.conftest import TusClient, attachment_id_of

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _no_worker_finishes(monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests attach by hand and then make the thumbnail themselves; a worker (the
    # session's, if running) must not race them to it.
    monkeypatch.setattr("media.services.appender.ring_after_commit", lambda *args: None)


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, "PNG")  # compresses to almost nothing
    return out.getvalue()


def _attached(tech: Phone, work_order: str, data: bytes, content_type: str) -> uuid.UUID:
    tus = TusClient(tech.client)
    upload_id = uuid.UUID(
        attachment_id_of(tus.upload(work_order, data, filename="p", content_type=content_type))
    )
    # Attached by hand: the test decides when the thumbnail is tried, not a worker.
    Upload.objects.filter(pk=upload_id).update(status=UploadStatus.ATTACHED)
    return upload_id


def test_a_picture_past_the_pixel_limit_is_refused_before_decoding(
    tech: Phone, work_order: str, s3_server: S3Settings
) -> None:
    side = int(MAX_PIXELS**0.5) + 100
    upload_id = _attached(tech, work_order, _png(side, side), "image/png")

    assert thumbnail_create(upload_id) == ""

    upload = Upload.objects.get(pk=upload_id)
    assert "pixels" in upload.thumbnail_error and not upload.thumbnail_key
    assert thumbnail_create(upload_id) == ""  # recorded: not tried again
    assert Upload.objects.get(pk=upload_id).thumbnail_attempts == 1


def test_bytes_that_are_not_the_declared_format_are_not_decoded(
    tech: Phone, work_order: str, s3_server: S3Settings
) -> None:
    upload_id = _attached(tech, work_order, _png(64, 64), "image/jpeg")
    assert thumbnail_create(upload_id) == ""
    assert Upload.objects.get(pk=upload_id).thumbnail_error


def test_a_thumbnail_that_keeps_killing_its_worker_is_given_up(
    tech: Phone, work_order: str, s3_server: S3Settings
) -> None:
    # Given tries that never came back (the worker died each time, before recording why)
    upload_id = _attached(tech, work_order, _png(64, 64), "image/png")
    Upload.objects.filter(pk=upload_id).update(thumbnail_attempts=MAX_ATTEMPTS)

    # When it is tried once more, then
    assert thumbnail_create(upload_id) == ""
    assert "tries" in Upload.objects.get(pk=upload_id).thumbnail_error


def test_the_web_process_never_loads_pillow() -> None:
    # Given a fresh process that loads what a web process serves uploads with
    code = (
        "import sys, django; django.setup()\n"
        "from django.urls import get_resolver\n"
        "get_resolver().url_patterns\n"
        "import syncserver.wsgi, media.api.views, media.services\n"
        "print('PIL' in sys.modules)"
    )

    # When it has imported the WSGI app, every URL and the media services
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()

    # Then Pillow stays out of it: only the worker making a thumbnail imports it
    assert loaded == "False"
