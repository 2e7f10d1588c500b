"""How PATCH bodies become parts in the object store, through Django's test client against
real Postgres and SeaweedFS: the file's last part is committed together with the
verification it needs."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from django.db import connection

from media.models import UploadStatus
from tests.fixtures import Phone
from tests.media.conftest import (
    TEST_PART_SIZE,
    TusClient,
    path_of,
    payload,
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
    with connection.cursor() as cursor:
        cursor.execute(
            """
            CREATE TABLE test_upload_states (id bigserial, "offset" bigint, status text);
            CREATE FUNCTION test_record_upload_state() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO test_upload_states ("offset", status) VALUES (NEW."offset", NEW.status);
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_record_upload_state AFTER UPDATE ON media_upload
                FOR EACH ROW EXECUTE FUNCTION test_record_upload_state();
            """
        )

    def states() -> list[tuple[int, str]]:
        with connection.cursor() as cursor:
            cursor.execute('SELECT "offset", status FROM test_upload_states ORDER BY id')
            return [(int(offset), str(status)) for offset, status in cursor.fetchall()]

    try:
        yield states
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "DROP TRIGGER test_record_upload_state ON media_upload;"
                "DROP FUNCTION test_record_upload_state();"
                "DROP TABLE test_upload_states;"
            )


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
