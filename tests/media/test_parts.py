"""How PATCH bodies become parts in the object store, through Django's test client against
real Postgres and SeaweedFS: the file's last part is committed together with the
verification it needs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from media.models import Upload, UploadPart, UploadStatus
from media.services import upload_finish
from media.storage import crc32, object_store
from tests.fixtures import Phone
from tests.media.conftest import (
    TEST_PART_SIZE,
    MiB,
    TusClient,
    attachment_id_of,
    path_of,
    payload,
    upload_row_updates,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("s3_server")]


@pytest.fixture
def no_doorbell(monkeypatch: pytest.MonkeyPatch) -> None:
    # No worker is asked to finish: the tests that finish an upload do it in this process.
    monkeypatch.setattr("media.services.appender.ring_after_commit", lambda task, *args: None)


def _create(tus: TusClient, work_order: str, length: int) -> str:
    created = tus.create(
        work_order, length, kind="video", content_type="video/mp4", filename="site.mp4"
    )
    assert created.status_code == 201, created.content
    return path_of(created["Location"])


@pytest.fixture
def upload_states() -> Iterator[Callable[[], list[tuple[int, str]]]]:
    """Every (offset, status) an upload row passes through, recorded by a trigger."""
    with upload_row_updates([("offset", "bigint"), ("status", "text")]) as read:
        yield lambda: [(int(offset), str(status)) for offset, status in read()]


@pytest.mark.usefixtures("no_doorbell")
def test_the_last_part_is_committed_with_its_verification_never_before(
    tus_for: Callable[[Phone], TusClient],
    tech: Phone,
    work_order: str,
    upload_states: Callable[[], list[tuple[int, str]]],
) -> None:
    # Given a file of exactly two parts
    tus = tus_for(tech)
    data = payload(2 * TEST_PART_SIZE)
    url = _create(tus, work_order, len(data))

    # When each part arrives as one chunk
    for start in (0, TEST_PART_SIZE):
        response = tus.patch(url, start, data[start : start + TEST_PART_SIZE])
        assert response.status_code == 204, response.content

    # Then the upload never sat at its full length still "uploading": a crash there would
    # leave a file every client takes for done and no worker ever verifies
    states = upload_states()
    assert (len(data), UploadStatus.UPLOADING) not in states, states
    assert states[-1] == (len(data), UploadStatus.VERIFYING), states


@contextmanager
def _damaged_on_the_way() -> Iterator[None]:
    """Every part and object body sent to the store has one bit flipped after its checksum
    was taken, as a fault on the way would."""

    def flip(request: Any, **kwargs: Any) -> None:
        sent = request.body
        body = bytearray(sent.read() if hasattr(sent, "read") else sent)
        body[len(body) // 2] ^= 1
        request.body = bytes(body)

    client = object_store().client
    for operation in ("UploadPart", "PutObject"):
        client.meta.events.register_last(f"before-send.s3.{operation}", flip)
    try:
        yield
    finally:
        for operation in ("UploadPart", "PutObject"):
            client.meta.events.unregister(f"before-send.s3.{operation}", flip)


@pytest.mark.usefixtures("no_doorbell")
@pytest.mark.parametrize("size", [TEST_PART_SIZE, MiB], ids=["a part", "a segment"])
def test_bytes_damaged_on_their_way_to_the_store_are_never_counted(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str, size: int
) -> None:
    # Given an upload of two parts
    tus = tus_for(tech)
    data = payload(2 * TEST_PART_SIZE)
    url = _create(tus, work_order, len(data))

    # When a PATCH's bytes are damaged between the server and the store
    with _damaged_on_the_way():
        response = tus.patch(url, 0, data[:size])

    # Then the store refuses them (their checksum no longer matches), the phone is told to
    # retry, and the offset does not count them
    assert (response.status_code, response.json()["code"]) == (503, "storage_unavailable")
    assert tus.head(url)["Upload-Offset"] == "0"
    # And the same bytes sent again are stored
    assert tus.patch(url, 0, data[:size])["Upload-Offset"] == str(size)


@pytest.mark.usefixtures("no_doorbell")
def test_a_multipart_upload_begun_before_part_checksums_completes(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    # Given an upload whose multipart upload was begun without part checksums (by a server
    # from before they were sent), its first part stored
    tus = tus_for(tech)
    data = payload(2 * TEST_PART_SIZE + MiB)
    url = _create(tus, work_order, len(data))
    upload = Upload.objects.get(pk=attachment_id_of(url))
    store = object_store()
    multipart_id = store.client.create_multipart_upload(Bucket=store.bucket, Key=upload.object_key)[
        "UploadId"
    ]
    Upload.objects.filter(pk=upload.pk).update(multipart_id=multipart_id)
    assert tus.patch(url, 0, data[:TEST_PART_SIZE]).status_code == 204

    # When the rest arrives and the upload is finished
    assert tus.patch(url, TEST_PART_SIZE, data[TEST_PART_SIZE:]).status_code == 204
    status = upload_finish(upload.pk)

    # Then its parts went without checksums (S3 refuses ones it does not expect) and the
    # file is whole
    assert list(UploadPart.objects.filter(upload=upload).values_list("checksum", flat=True)) == [
        "",
        "",
        "",
    ]
    assert status == UploadStatus.ATTACHED
    assert Upload.objects.get(pk=upload.pk).sha256 == hashlib.sha256(data).hexdigest()


def test_parts_of_a_new_upload_carry_the_checksum_the_store_verified(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    # Given a new upload
    tus = tus_for(tech)
    data = payload(TEST_PART_SIZE + MiB)
    url = _create(tus, work_order, len(data))

    # When its first part is stored
    assert tus.patch(url, 0, data[:TEST_PART_SIZE]).status_code == 204

    # Then the part's row keeps the CRC32 the store checked, for the completion to list
    (part,) = UploadPart.objects.filter(upload_id=attachment_id_of(url))
    assert part.checksum == crc32(data[:TEST_PART_SIZE])
    assert Upload.objects.get(pk=attachment_id_of(url)).part_checksums
