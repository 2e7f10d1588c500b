"""The tus protocol at /api/v1/uploads/, through Django's test client against real Postgres
and SeaweedFS: discovery, creation, offsets, checksums, limits, termination, scope."""

from __future__ import annotations

import base64
import hashlib
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from django.db import connection
from rest_framework.test import APIClient

from devstack.ensure_bucket import S3Settings
from media import storage
from media.models import Upload, UploadPart, UploadStatus
from media.services import MAX_PARTS, part_size_for, upload_finish, upload_lock
from tests.fixtures import Phone
from tests.helpers import wait_until
from tests.media.conftest import (
    TUS,
    MiB,
    TusClient,
    attachment_id_of,
    path_of,
    payload,
    raw_request,
    sha256_hex,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("s3_server")]


def _keys(s3: S3Settings, prefix: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def test_options_announces_version_extensions_and_limits(
    tus_for: Callable[[Phone], TusClient], tech: Phone
) -> None:
    response = tus_for(tech).options()

    assert response.status_code == 204
    assert response["Tus-Resumable"] == "1.0.0"
    assert response["Tus-Version"] == "1.0.0"
    assert set(response["Tus-Extension"].split(",")) == {
        "creation",
        "creation-with-upload",
        "termination",
        "expiration",
        "checksum",
    }
    assert int(response["Tus-Max-Size"]) == 2048 * MiB
    assert set(response["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "sha256"}


def test_cors_preflight_and_exposed_headers(tech: Phone, work_order: str) -> None:
    preflight = tech.client.options(
        "/api/v1/uploads/",
        headers={"Origin": "https://admin.example", "Access-Control-Request-Method": "PATCH"},
    )
    assert preflight.status_code == 204
    assert "PATCH" in preflight["Access-Control-Allow-Methods"]
    assert "Upload-Offset" in preflight["Access-Control-Allow-Headers"]

    created = TusClient(tech.client).create(
        work_order, 10, headers={"Origin": "https://admin.example"}
    )
    assert created["Access-Control-Allow-Origin"] == "https://admin.example"
    assert "Location" in created["Access-Control-Expose-Headers"]
    assert "Upload-Offset" in created["Access-Control-Expose-Headers"]


def test_missing_tus_resumable_is_412_with_supported_version(tech: Phone) -> None:
    response = tech.client.post("/api/v1/uploads/", headers={"Upload-Length": "10"})

    assert response.status_code == 412
    assert response["Tus-Version"] == "1.0.0"
    assert response["Tus-Resumable"] == "1.0.0"
    assert response.json()["code"] == "unsupported_tus_version"


def test_every_request_needs_a_token(work_order: str) -> None:
    response = TusClient(APIClient()).create(work_order, 10)

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response["Tus-Resumable"] == "1.0.0"


def test_create_answers_an_absolute_location_named_by_attachment_id(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    attachment_id = str(uuid.uuid4())

    response = tus_for(tech).create(work_order, 1234, attachment_id=attachment_id)

    assert response.status_code == 201
    assert response["Location"] == f"http://testserver/api/v1/uploads/{attachment_id}"
    assert response["Upload-Offset"] == "0"
    assert "Upload-Expires" in response
    head = tus_for(tech).head(path_of(response["Location"]))
    assert head.status_code == 200
    assert (head["Upload-Offset"], head["Upload-Length"]) == ("0", "1234")
    assert head["Cache-Control"] == "no-store"


def test_creating_again_returns_the_same_upload_and_keeps_its_offset(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    tus = tus_for(tech)
    attachment_id = str(uuid.uuid4())
    data = payload(3 * MiB)
    first = tus.create(work_order, len(data), attachment_id=attachment_id)
    url = path_of(first["Location"])
    assert tus.patch(url, 0, data[: 1 * MiB]).status_code == 204

    again = tus.create(work_order, len(data), attachment_id=attachment_id, body=data[:MiB])

    assert again.status_code == 201
    assert again["Location"] == first["Location"]
    assert again["Upload-Offset"] == str(MiB)
    assert Upload.objects.count() == 1


def test_creating_with_another_length_under_the_same_id_is_refused(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    attachment_id = str(uuid.uuid4())
    tus_for(tech).create(work_order, 100, attachment_id=attachment_id)

    response = tus_for(tech).create(work_order, 200, attachment_id=attachment_id)

    assert response.status_code == 409
    assert response.json()["code"] == "attachment_id_reused"


def test_creation_with_upload_stores_the_first_bytes(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    data = payload(2 * MiB)

    response = tus_for(tech).create(work_order, 3 * MiB, body=data)

    assert response.status_code == 201
    assert response["Upload-Offset"] == str(len(data))


@pytest.mark.parametrize(
    ("kind", "content_type", "length", "status", "code"),
    [
        ("photo", "image/jpeg", 50 * MiB + 1, 413, "upload_too_large"),
        ("video", "video/mp4", 2048 * MiB + 1, 413, "upload_too_large"),
        ("photo", "application/x-msdownload", 10, 415, "unsupported_content_type"),
        ("hologram", "image/jpeg", 10, 400, "invalid_kind"),
    ],
)
def test_limits_are_refused_before_anything_is_stored(
    tus_for: Callable[[Phone], TusClient],
    tech: Phone,
    work_order: str,
    kind: str,
    content_type: str,
    length: int,
    status: int,
    code: str,
) -> None:
    response = tus_for(tech).create(work_order, length, kind=kind, content_type=content_type)

    assert response.status_code == status
    assert response.json()["code"] == code
    assert not Upload.objects.exists()


def test_metadata_must_name_the_attachment_and_its_work_order(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    response = tus_for(tech).create(work_order, 10, attachment_id="not-a-uuid")

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_metadata"


def test_patch_at_the_wrong_offset_is_409_with_the_true_offset(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    tus = tus_for(tech)
    url = path_of(tus.create(work_order, 2 * MiB)["Location"])
    assert tus.patch(url, 0, payload(MiB)).status_code == 204

    response = tus.patch(url, 0, payload(MiB))

    assert response.status_code == 409
    assert response["Upload-Offset"] == str(MiB)
    assert response.json()["code"] == "offset_mismatch"


def test_checksum_mismatch_is_460_and_the_chunk_is_discarded(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str, s3_server: S3Settings
) -> None:
    tus = tus_for(tech)
    data = payload(7 * MiB)
    url = path_of(tus.create(work_order, 20 * MiB)["Location"])
    wrong = base64.b64encode(hashlib.sha256(b"something else").digest()).decode()

    refused = tus.patch(url, 0, data, headers={"Upload-Checksum": f"sha256 {wrong}"})

    assert refused.status_code == 460
    assert refused.json()["code"] == "checksum_mismatch"
    assert tus.head(url)["Upload-Offset"] == "0"
    assert not UploadPart.objects.exists()
    right = base64.b64encode(hashlib.sha1(data).digest()).decode()
    accepted = tus.patch(url, 0, data, headers={"Upload-Checksum": f"sha1 {right}"})
    assert accepted.status_code == 204
    assert accepted["Upload-Offset"] == str(len(data))


def test_unsupported_checksum_algorithm_is_400(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    tus = tus_for(tech)
    url = path_of(tus.create(work_order, 10)["Location"])

    response = tus.patch(url, 0, b"0123456789", headers={"Upload-Checksum": "md5 AAAA"})

    assert response.status_code == 400
    assert response.json()["code"] == "unsupported_checksum_algorithm"


def test_small_chunks_are_kept_as_tail_segments_until_a_part_is_full(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str, s3_server: S3Settings
) -> None:
    tus = tus_for(tech)
    data = payload(6 * MiB)
    url = path_of(tus.create(work_order, len(data) + MiB)["Location"])
    upload_id = uuid.UUID(attachment_id_of(url))
    chunk = 256 * 1024

    for offset in range(0, 4 * MiB, chunk):
        assert tus.patch(url, offset, data[offset : offset + chunk]).status_code == 204

    upload = Upload.objects.get(pk=upload_id)
    assert (upload.offset, upload.tail_size, UploadPart.objects.count()) == (4 * MiB, 4 * MiB, 0)
    assert len(_keys(s3_server, storage.tail_prefix(upload_id))) == len(upload.tail)
    assert tus.patch(url, 4 * MiB, data[4 * MiB :]).status_code == 204
    upload.refresh_from_db()
    assert UploadPart.objects.get().size == 5 * MiB
    assert (upload.offset, upload.tail_size) == (6 * MiB, MiB)
    # Segments merged into the part are deleted; only the new tail remains.
    assert len(_keys(s3_server, storage.tail_prefix(upload_id))) == 1


def test_patch_past_upload_length_is_413(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    tus = tus_for(tech)
    url = path_of(tus.create(work_order, 10)["Location"])

    response = tus.patch(url, 0, b"x" * 11)

    assert response.status_code == 413
    assert tus.head(url)["Upload-Offset"] == "0"


def test_patch_needs_the_offset_octet_stream_content_type(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    url = path_of(tus_for(tech).create(work_order, 10)["Location"])

    response = raw_request(tech.client)(
        "PATCH", url, b"x", content_type="text/plain", headers={**TUS, "Upload-Offset": "0"}
    )

    assert response.status_code == 415


def test_empty_patch_at_the_end_of_a_finished_upload_is_204(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    tus = tus_for(tech)
    data = payload(1000)
    url = tus.upload(work_order, data)

    retry = tus.patch(url, len(data), b"")

    assert retry.status_code == 204
    assert retry["Upload-Offset"] == str(len(data))
    # Still on its way (a worker an earlier test left running may have attached it already).
    assert Upload.objects.get().status in {UploadStatus.VERIFYING, UploadStatus.ATTACHED}


def test_method_override_turns_a_post_into_a_patch(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    url = path_of(tus_for(tech).create(work_order, 10)["Location"])

    response = raw_request(tech.client)(
        "POST",
        url,
        b"0123456789",
        content_type="application/offset+octet-stream",
        headers={**TUS, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"},
    )

    assert response.status_code == 204
    assert response["Upload-Offset"] == "10"


def test_unknown_upload_is_404_for_head_and_patch(
    tus_for: Callable[[Phone], TusClient], tech: Phone
) -> None:
    tus = tus_for(tech)
    url = f"/api/v1/uploads/{uuid.uuid4()}"

    assert tus.head(url).status_code == 404
    assert tus.patch(url, 0, b"x").status_code == 404
    assert tus.head("/api/v1/uploads/not-a-uuid").status_code == 404


def test_termination_aborts_storage_and_the_upload_is_gone(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str, s3_server: S3Settings
) -> None:
    tus = tus_for(tech)
    data = payload(7 * MiB)
    url = path_of(tus.create(work_order, 20 * MiB)["Location"])
    tus.patch(url, 0, data)
    upload = Upload.objects.get()
    assert upload.multipart_id and upload.tail

    assert tus.delete(url).status_code == 204

    assert tus.head(url).status_code == 410
    assert tus.patch(url, len(data), b"more").status_code == 410
    assert tus.delete(url).status_code == 204  # a retry after a lost answer
    upload.refresh_from_db()
    assert (upload.status, upload.code, upload.released_at is not None) == (
        UploadStatus.FAILED,
        "terminated",
        True,
    )
    assert _keys(s3_server, storage.tail_prefix(upload.pk)) == []
    multipart = s3_server.client().list_multipart_uploads(
        Bucket=s3_server.bucket, Prefix=upload.object_key
    )
    assert [u for u in multipart.get("Uploads", []) if u["Key"] == upload.object_key] == []


def test_a_technician_cannot_touch_another_technicians_upload(
    tus_for: Callable[[Phone], TusClient],
    tech: Phone,
    make_phone: Callable[..., Phone],
    work_order: str,
) -> None:
    other = make_phone("technician")
    stranger = make_phone("dispatcher", org="globex")
    url = path_of(tus_for(tech).create(work_order, 10)["Location"])

    for outsider in (other, stranger):
        assert tus_for(outsider).head(url).status_code == 404
        assert tus_for(outsider).patch(url, 0, b"x").status_code == 404
        assert (
            outsider.client.get(f"/api/v1/attachments/{attachment_id_of(url)}").status_code == 404
        )
    # Nor upload to a work order they cannot see.
    assert tus_for(other).create(work_order, 10).status_code == 404
    assert tus_for(stranger).create(work_order, 10).status_code == 404


def test_a_dispatcher_of_the_organisation_sees_the_upload(
    tus_for: Callable[[Phone], TusClient], tech: Phone, dispatcher: Phone, work_order: str
) -> None:
    url = path_of(tus_for(tech).create(work_order, 10)["Location"])

    assert tus_for(dispatcher).head(url).status_code == 200


def test_a_second_writer_gets_423_only_while_the_first_holds_the_lock(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str, settings: Any
) -> None:
    settings.UPLOADS_LOCK_WAIT_SECONDS = 0.2
    tus = tus_for(tech)
    url = path_of(tus.create(work_order, 10)["Location"])
    upload_id = uuid.UUID(attachment_id_of(url))
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with upload_lock(upload_id, 1.0):
            held.set()
            release.wait(10)
        connection.close()

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    locked = tus.patch(url, 0, b"0123456789")
    release.set()
    thread.join()
    after = tus.patch(url, 0, b"0123456789")

    assert locked.status_code == 423
    assert locked.json()["code"] == "upload_locked"
    assert after.status_code == 204


def test_a_lease_left_by_a_killed_process_lapses(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str, settings: Any
) -> None:
    # Given a request in another process took the upload's lease (for a second) and that
    # process was killed: nothing gives the lease back
    settings.UPLOADS_LOCK_WAIT_SECONDS = 0.2
    tus = tus_for(tech)
    url = path_of(tus.create(work_order, 10)["Location"])
    with psycopg.connect(_conninfo(), autocommit=True) as other_process:
        other_process.execute(
            "UPDATE media_upload SET lease_token = %s,"
            " lease_expires_at = now() + interval '1 second' WHERE id = %s",
            [uuid.uuid4(), uuid.UUID(attachment_id_of(url))],
        )

    # When the phone sends its chunk meanwhile, then it is told the upload is busy
    assert tus.patch(url, 0, b"0123456789").status_code == 423
    # And once the lease has lapsed, the next attempt is stored
    wait_until(
        lambda: tus.patch(url, 0, b"0123456789").status_code == 204,
        timeout=10,
        message="the dead holder's lease never lapsed",
    )


def _conninfo() -> str:
    db = connection.settings_dict
    return psycopg.conninfo.make_conninfo(
        dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"] or None,
        host=db["HOST"], port=db["PORT"] or None,
    )  # fmt: skip


def test_part_size_keeps_any_allowed_file_within_ten_thousand_parts(settings: Any) -> None:
    settings.UPLOADS_PART_SIZE = 8 * MiB

    assert part_size_for(2048 * MiB) == 8 * MiB
    huge = 100 * 1024 * MiB
    assert part_size_for(huge) % MiB == 0
    assert huge / part_size_for(huge) <= MAX_PARTS
    settings.UPLOADS_PART_SIZE = MiB
    assert part_size_for(10) == 5 * MiB  # never below S3's minimum part


def test_an_empty_file_is_complete_at_creation(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    response = tus_for(tech).create(
        work_order, 0, filename="empty.txt", kind="document", content_type="text/plain"
    )

    assert (response.status_code, response["Upload-Offset"]) == (201, "0")
    assert Upload.objects.get().status == UploadStatus.VERIFYING


def test_many_small_chunks_are_merged_into_few_segments_and_stay_intact(
    tus_for: Callable[[Phone], TusClient],
    tech: Phone,
    work_order: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("media.services.appender.MAX_TAIL_SEGMENTS", 3)
    # No worker is asked to finish: this test finishes the upload itself, below.
    monkeypatch.setattr("media.services.appender.ring_after_commit", lambda task, *args: None)
    tus = tus_for(tech)
    data = payload(700_000)
    url = path_of(tus.create(work_order, len(data))["Location"])
    chunk = 100_000
    for offset in range(0, 600_000, chunk):
        assert tus.patch(url, offset, data[offset : offset + chunk]).status_code == 204
    assert len(Upload.objects.get().tail) <= 3

    assert tus.patch(url, 600_000, data[600_000:]).status_code == 204

    # Finishing in this process checks the assembled bytes end to end.
    assert upload_finish(uuid.UUID(attachment_id_of(url))) == UploadStatus.ATTACHED
    assert Upload.objects.get().sha256 == sha256_hex(data)
