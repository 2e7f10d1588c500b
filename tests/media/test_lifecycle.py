"""After the last byte: the real Celery worker completes, verifies and attaches; failures,
a worker killed halfway, thumbnails, expiry, and the attachment as a synced record."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import requests
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from PIL import Image

from devstack.ensure_bucket import S3Settings
from media import storage
from media.models import Attachment, Upload, UploadStatus
from media.services import uploads_sweep
from operations.models import Event
from operations.recording import FEED_LOCK_CLASS
from tests.conftest import CeleryWorker
from tests.fixtures import Phone, apply_now
from tests.helpers import wait_until
from tests.media.conftest import MiB, TusClient, attachment_id_of, path_of, payload, sha256_hex
from workorders.models import WorkOrder

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("s3_server")]


def _status_is(tus: TusClient, attachment_id: str, *wanted: str) -> dict[str, Any]:
    status = tus.status(attachment_id)
    return status if status["status"] in wanted else {}


def _settled(tus: TusClient, attachment_id: str, timeout: float = 30.0) -> dict[str, Any]:
    return wait_until(
        lambda: _status_is(tus, attachment_id, UploadStatus.ATTACHED, UploadStatus.FAILED),
        timeout=timeout,
        message=f"upload {attachment_id} was never attached nor failed",
    )


def test_a_finished_upload_is_verified_and_attached_as_an_event(
    tech: Phone, dispatcher: Phone, work_order: str, worker: CeleryWorker
) -> None:
    tus = TusClient(tech.client)
    data = payload(11 * MiB + 123)
    url = tus.upload(
        work_order, data, chunk=4 * MiB, kind="video", content_type="video/mp4",
        filename="walkthrough.mp4", extra={"sha256": sha256_hex(data), "note": "north wall"},
    )  # fmt: skip
    attachment_id = attachment_id_of(url)

    status = _settled(tus, attachment_id)

    assert status["status"] == "attached", status
    assert (status["size"], status["offset"], status["sha256"]) == (
        len(data), len(data), sha256_hex(data),
    )  # fmt: skip
    fetched = requests.get(status["download_url"], timeout=30)
    assert fetched.content == data, fetched.content[:500]
    record = Attachment.objects.get(pk=attachment_id)
    assert (record.version, record.note, record.filename) == (1, "north wall", "walkthrough.mp4")
    assert Event.objects.get(entity="attachment", entity_id=attachment_id).kind == "create"
    assert WorkOrder.objects.get(pk=work_order).version == 1
    pulled = [c for c in tech.pull()["changes"] if c["entity"] == "attachment"]
    assert [(c["entity_id"], c["version"], c["state"]) for c in pulled] == [
        (attachment_id, 1, "live")
    ]
    assert pulled[0]["fields"]["sha256"] == sha256_hex(data)
    assert any(c["entity_id"] == attachment_id for c in dispatcher.pull()["changes"])


def test_the_same_filename_twice_makes_two_attachments(
    tech: Phone, work_order: str, worker: CeleryWorker
) -> None:
    tus = TusClient(tech.client)
    first = tus.upload(work_order, payload(1000, seed=1), filename="IMG_0001.jpg")
    second = tus.upload(work_order, payload(2000, seed=2), filename="IMG_0001.jpg")

    statuses = [_settled(tus, attachment_id_of(url)) for url in (first, second)]

    assert [s["status"] for s in statuses] == ["attached", "attached"]
    assert Attachment.objects.filter(filename="IMG_0001.jpg").count() == 2
    assert statuses[0]["sha256"] != statuses[1]["sha256"]


def test_a_declared_sha256_that_does_not_match_fails_and_never_attaches(
    tech: Phone, work_order: str, worker: CeleryWorker, s3_server: S3Settings
) -> None:
    tus = TusClient(tech.client)
    data = payload(6 * MiB)
    url = tus.upload(work_order, data, extra={"sha256": sha256_hex(b"another file")})

    status = _settled(tus, attachment_id_of(url))

    assert (status["status"], status["code"]) == ("failed", "sha256_mismatch")
    assert status["download_url"] is None
    assert not Attachment.objects.exists()
    assert not any(c["entity"] == "attachment" for c in tech.pull()["changes"])
    upload = Upload.objects.get()
    wait_until(lambda: Upload.objects.get().released_at, message="storage never released")
    assert (
        s3_server.client()
        .list_objects_v2(Bucket=s3_server.bucket, Prefix=upload.object_key)
        .get("KeyCount")
        == 0
    )


def test_a_worker_killed_while_attaching_is_finished_by_the_sweep(
    tech: Phone, work_order: str, worker: CeleryWorker
) -> None:
    # Given a worker stuck halfway through attaching (it waits for the feed lock we hold)
    tus = TusClient(tech.client)
    organization_id = tech.user.org_id
    feed = psycopg.connect(_conninfo(), autocommit=False)
    feed.execute("SELECT pg_advisory_xact_lock(%s, %s)", [FEED_LOCK_CLASS, organization_id])
    url = tus.upload(work_order, payload(3 * MiB))
    attachment_id = attachment_id_of(url)
    wait_until(
        lambda: _waits_for_feed_lock(organization_id),
        message="the worker never reached the attach step",
    )

    # When it dies there, and the sweep later finds the verification abandoned
    worker.kill()
    feed.rollback()
    feed.close()
    assert Upload.objects.get(pk=attachment_id).status == UploadStatus.VERIFYING
    assert not Attachment.objects.filter(pk=attachment_id).exists()
    worker.start()
    with override_settings(UPLOADS_VERIFY_LEASE_SECONDS=0):
        assert uploads_sweep().requeued == 1

    # Then the next worker attaches it, once
    assert _settled(tus, attachment_id)["status"] == "attached"
    assert Upload.objects.get(pk=attachment_id).verify_attempts == 2
    assert Event.objects.filter(entity="attachment", entity_id=attachment_id).count() == 1


def _conninfo() -> str:
    db = connection.settings_dict
    return psycopg.conninfo.make_conninfo(
        dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"] or None,
        host=db["HOST"], port=db["PORT"] or None,
    )  # fmt: skip


def _waits_for_feed_lock(organization_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND classid = %s AND objid = %s",
            [FEED_LOCK_CLASS, organization_id],
        )
        row = cursor.fetchone()
    return bool(row and row[0])


def test_a_photo_gets_a_thumbnail(
    tech: Phone, work_order: str, worker: CeleryWorker, s3_server: S3Settings
) -> None:
    picture = io.BytesIO()
    Image.new("RGB", (1600, 1200), (200, 120, 40)).save(picture, "JPEG")
    tus = TusClient(tech.client)
    url = tus.upload(work_order, picture.getvalue(), filename="roof.jpg")
    upload_id = attachment_id_of(url)
    assert _settled(tus, upload_id)["status"] == "attached"

    key = wait_until(
        lambda: Upload.objects.get(pk=upload_id).thumbnail_key, message="no thumbnail made"
    )

    stored = s3_server.client().get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()
    with Image.open(io.BytesIO(stored)) as thumbnail:
        assert thumbnail.format == "JPEG"
        assert max(thumbnail.size) == 320


def test_a_technician_may_change_the_note_but_not_the_file_facts(
    tech: Phone, work_order: str, worker: CeleryWorker
) -> None:
    tus = TusClient(tech.client)
    attachment_id = attachment_id_of(tus.upload(work_order, payload(500), extra={"note": "a"}))
    assert _settled(tus, attachment_id)["status"] == "attached"

    note = tech.op("attachment", attachment_id, "update", 1, note="gas meter, left side")
    size = tech.op("attachment", attachment_id, "update", 1, size=1)
    create = tech.op("attachment", str(uuid.uuid4()), "create", 0, note="forged")
    results = tech.push(note, size, create)
    apply_now()

    assert results[2]["status"] == "rejected" and results[2]["code"] == "forbidden"
    assert tech.outcome(note["op_id"])["status"] == "applied"
    assert tech.outcome(size["op_id"])["code"] == "immutable_field"
    assert tus.status(attachment_id)["note"] == "gas meter, left side"


def test_idle_unfinished_uploads_expire_and_answer_410(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str, s3_server: S3Settings
) -> None:
    tus = tus_for(tech)
    url = path_of(tus.create(work_order, 20 * MiB)["Location"])
    assert tus.patch(url, 0, payload(6 * MiB)).status_code == 204
    upload = Upload.objects.get()
    assert upload.multipart_id and upload.tail

    report = uploads_sweep(now=timezone.now() + timedelta(days=7, minutes=1))

    assert report.expired == 1
    upload.refresh_from_db()
    assert (upload.status, upload.code) == (UploadStatus.FAILED, "expired")
    assert tus.head(url).status_code == 410
    assert tus.status(attachment_id_of(url))["code"] == "expired"
    client = s3_server.client()
    assert (
        client.list_objects_v2(Bucket=s3_server.bucket, Prefix=storage.tail_prefix(upload.pk)).get(
            "KeyCount"
        )
        == 0
    )
    multipart = client.list_multipart_uploads(Bucket=s3_server.bucket, Prefix=upload.object_key)
    assert [u for u in multipart.get("Uploads", []) if u["Key"] == upload.object_key] == []


def test_an_upload_in_use_is_not_expired(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    tus = tus_for(tech)
    url = path_of(tus.create(work_order, 20 * MiB)["Location"])
    assert tus.patch(url, 0, payload(MiB)).status_code == 204

    report = uploads_sweep(now=timezone.now() + timedelta(days=6))

    assert report.expired == 0
    assert tus.head(url).status_code == 200


def test_a_lost_doorbell_is_rung_again_by_the_sweep(
    tech: Phone, work_order: str, worker: CeleryWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an upload whose "finish" message never reached a worker
    monkeypatch.setattr("media.services.appender.ring_after_commit", lambda task, *args: None)
    tus = TusClient(tech.client)
    attachment_id = attachment_id_of(tus.upload(work_order, payload(2000)))
    monkeypatch.undo()
    assert tus.status(attachment_id)["status"] == "verifying"

    # When the sweep runs later
    uploads_sweep(now=timezone.now() + timedelta(minutes=5))

    # Then it is attached
    assert _settled(tus, attachment_id)["status"] == "attached"
