"""The per-upload lease (media.services.locks) under a connection pool: the body streams with
no database connection checked out, a holder whose lease was taken over writes nothing, and
a request that dies mid-body leaves nothing locked, in its row or in any Postgres session."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from media.exceptions import BodyInterrupted, UploadError
from media.models import Upload, UploadPart, UploadStatus
from media.services import upload_append, upload_lock, uploads_sweep
from tests.fixtures import Phone
from tests.media.conftest import (
    TEST_PART_SIZE,
    MiB,
    TusClient,
    attachment_id_of,
    path_of,
    payload,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("s3_server")]

PIECE = 256 * 1024


class Body:
    """A phone's PATCH body, handed to the service piece by piece (``BodySource``).

    At every read it notes whether the reading thread had a database connection checked
    out. After ``pause_after`` bytes it says so and waits for the test; after ``end_after``
    bytes the phone is gone (``BodyInterrupted``)."""

    def __init__(
        self, data: bytes, pause_after: int | None = None, end_after: int | None = None
    ) -> None:
        self.data = data
        self.sent = 0
        self.pause_after = pause_after
        self.end_after = end_after
        self.with_connection: list[bool] = []
        self.paused = threading.Event()
        self.resume = threading.Event()

    def readinto(self, buffer: memoryview) -> int:
        self.with_connection.append(connection.connection is not None)
        if self.sent == self.pause_after and not self.resume.is_set():
            self.paused.set()
            assert self.resume.wait(30), "the test never let the body go on"
        if self.sent == self.end_after:
            raise BodyInterrupted("the phone lost its signal")
        marks = (self.pause_after, self.end_after)
        stop = min([len(self.data), *(m for m in marks if m is not None and m > self.sent)])
        count = min(len(buffer), PIECE, stop - self.sent)
        buffer[:count] = self.data[self.sent : self.sent + count]
        self.sent += count
        return count


def _created(tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str, size: int) -> str:
    response = tus_for(tech).create(work_order, size, kind="video", content_type="video/mp4")
    assert response.status_code == 201, response.content
    return attachment_id_of(path_of(response["Location"]))


def test_a_body_streams_with_no_database_connection_checked_out(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    # Given an upload of several parts (the tests' parts are 5 MiB)
    data = payload(12 * MiB)
    upload_id = _created(tus_for, tech, work_order, len(data))
    body = Body(data)

    # When the phone sends it all in one PATCH
    upload = upload_append(tech.user, uuid.UUID(upload_id), 0, body, len(data))

    # Then it is stored, and no read of the body (a wait on the phone) held a connection of
    # the pool, before the first part, between parts or after the last
    assert (upload.offset, upload.status) == (len(data), UploadStatus.VERIFYING)
    assert len(body.with_connection) > 12 * MiB // PIECE
    assert not any(body.with_connection)


@pytest.mark.parametrize(
    ("size", "what_it_writes_first"),
    [(2 * MiB, "the whole (small) file, then its offset"), (6 * MiB, "a multipart upload's id")],
)
def test_a_holder_whose_lease_was_taken_over_stores_nothing(
    tus_for: Callable[[Phone], TusClient],
    tech: Phone,
    work_order: str,
    size: int,
    what_it_writes_first: str,
) -> None:
    # Given a PATCH that stalls after its first MiB (its lease then lapses), and a later
    # request (on another host, say) that took the lapsed lease over; when the stalled
    # phone sends the rest of its body
    upload_id = _created(tus_for, tech, work_order, size)
    body = Body(payload(size), pause_after=MiB)
    outcome, thief = _taken_over_while_stalled(tech, upload_id, body, size)

    # Then the first request writes nothing of it and says the upload is busy
    assert len(outcome) == 1 and isinstance(outcome[0], UploadError), outcome
    assert outcome[0].code == "upload_locked"
    upload = Upload.objects.get(pk=upload_id)
    assert (upload.offset, upload.tail, upload.multipart_id) == (0, [], ""), what_it_writes_first
    assert not UploadPart.objects.filter(upload_id=upload_id).exists()
    # And it leaves the lease with the request that holds it now
    assert upload.lease_token == thief


def test_a_holder_whose_lease_was_taken_over_commits_no_part_it_stored_since(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    # Given a PATCH of a whole 12 MiB file whose first part (5 MiB) is committed, and
    # which stalls a MiB into its second part, when another request took its lapsed lease
    # over and the stalled phone sends the rest, a second part's worth and more
    size = 12 * MiB
    upload_id = _created(tus_for, tech, work_order, size)
    body = Body(payload(size), pause_after=TEST_PART_SIZE + MiB)
    outcome, thief = _taken_over_while_stalled(tech, upload_id, body, size)

    # Then the second part, stored in the object store meanwhile, is not committed: the
    # upload stays at its first part, with the lease where the other request holds it
    assert len(outcome) == 1 and isinstance(outcome[0], UploadError), outcome
    assert outcome[0].code == "upload_locked"
    upload = Upload.objects.get(pk=upload_id)
    assert (upload.offset, upload.status, upload.lease_token) == (
        TEST_PART_SIZE,
        UploadStatus.UPLOADING,
        thief,
    )
    assert list(UploadPart.objects.filter(upload_id=upload_id).values_list("number")) == [(1,)]


def test_a_patch_takes_the_lease_and_gives_it_back_with_its_commit(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    # Given an upload of two parts
    data = payload(2 * TEST_PART_SIZE)
    upload_id = _created(tus_for, tech, work_order, len(data))

    # When its first part arrives as one PATCH
    with CaptureQueriesContext(connection) as queries:
        upload = upload_append(
            tech.user, uuid.UUID(upload_id), 0, Body(data[:TEST_PART_SIZE]), TEST_PART_SIZE
        )

    # Then the upload row is written twice: the lease taken (the row read with it), then the
    # part and the offset committed with the lease given back, in one statement
    writes = [q["sql"] for q in queries.captured_queries if "UPDATE media_upload" in q["sql"]]
    assert len(writes) == 2, writes
    assert upload.offset == TEST_PART_SIZE
    stored = Upload.objects.get(pk=upload_id)
    assert (stored.offset, stored.lease_token, stored.lease_expires_at) == (
        TEST_PART_SIZE,
        None,
        None,
    )
    assert list(UploadPart.objects.filter(upload_id=upload_id).values_list("number")) == [(1,)]


def test_a_request_that_dies_mid_body_leaves_nothing_locked(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str, settings: Any
) -> None:
    # Given a phone whose signal drops after 1 MiB of a 3 MiB PATCH
    data = payload(3 * MiB)
    upload_id = _created(tus_for, tech, work_order, len(data))
    body = Body(data, end_after=MiB)

    # When the request ends there
    with pytest.raises(UploadError) as refused:
        upload_append(tech.user, uuid.UUID(upload_id), 0, body, len(data))

    # Then what arrived is kept, its lease is given back, and no Postgres session (pooled
    # or not) holds any advisory lock for the connection's next user to inherit
    assert refused.value.code == "body_incomplete"
    upload = Upload.objects.get(pk=upload_id)
    assert (upload.offset, upload.lease_token, upload.lease_expires_at) == (MiB, None, None)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert cursor.fetchone() == (0,)
    # And the phone's next attempt goes on at once, without waiting for anyone
    settings.UPLOADS_LOCK_WAIT_SECONDS = 0
    response = tus_for(tech).patch(f"/api/v1/uploads/{upload_id}", MiB, data[MiB:])
    assert (response.status_code, response["Upload-Offset"]) == (204, str(len(data)))


def test_the_sweep_never_expires_an_upload_whose_lease_is_held(
    tus_for: Callable[[Phone], TusClient], tech: Phone, work_order: str
) -> None:
    # Given an upload idle for longer than uploads may be, whose phone is sending it bytes
    # again right now (its request holds the lease)
    upload_id = uuid.UUID(_created(tus_for, tech, work_order, MiB))
    a_week_later = timezone.now() + timedelta(days=7, minutes=1)
    with upload_lock(upload_id, 0):
        # When the sweep runs meanwhile
        while_held = uploads_sweep(now=a_week_later).expired

    # Then it leaves the upload alone, and expires it only once nobody writes to it
    assert while_held == 0
    assert uploads_sweep(now=a_week_later).expired == 1
    assert Upload.objects.get(pk=upload_id).code == "expired"


def _taken_over_while_stalled(
    tech: Phone, upload_id: str, body: Body, size: int
) -> tuple[list[Any], uuid.UUID]:
    """A PATCH of the whole file in a thread of its own: while its body is paused, another
    request's token takes the upload's lease; then the body resumes. What the PATCH ended
    with (its result or its error), and the other request's token."""
    outcome: list[Any] = []

    def first_request() -> None:
        try:
            outcome.append(upload_append(tech.user, uuid.UUID(upload_id), 0, body, size))
        except UploadError as exc:
            outcome.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=first_request)
    thread.start()
    try:
        assert body.paused.wait(30), "the first request never reached its pause"
        thief = uuid.uuid4()
        Upload.objects.filter(pk=upload_id).update(lease_token=thief)
    finally:
        body.resume.set()
        thread.join(60)
    return outcome, thief
