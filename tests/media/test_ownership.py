"""An upload's bytes belong to the user who started it: others who may see the work order
may read its progress, never append to it, lock it or end it (a dispatcher may end it)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from devstack.ensure_bucket import S3Settings
from tests.fixtures import Phone
from tests.media.conftest import TusClient, path_of, payload, upload_row_updates

pytestmark = pytest.mark.django_db(transaction=True)


def _started_by(tech: Phone, work_order: str, tus_for: Callable[[Phone], TusClient]) -> str:
    created = tus_for(tech).create(work_order, 3000)
    assert created.status_code == 201, created.content
    return path_of(created["Location"])


def test_another_user_who_sees_the_work_order_cannot_append_or_terminate(
    tech: Phone,
    make_phone: Callable[..., Phone],
    work_order: str,
    tus_for: Callable[[Phone], TusClient],
) -> None:
    # Given an upload a technician started
    url = _started_by(tech, work_order, tus_for)
    office = tus_for(make_phone("dispatcher"))

    # When a dispatcher (who sees every work order) appends to it
    appended = office.patch(url, 0, payload(1000))

    # Then it is refused, and nothing moved
    assert (appended.status_code, appended.json()["code"]) == (403, "not_allowed")
    assert tus_for(tech).head(url)["Upload-Offset"] == "0"
    # And a technician the work order is not assigned to does not even learn it exists
    stranger = tus_for(make_phone())
    assert stranger.patch(url, 0, payload(1000)).status_code == 404
    assert stranger.delete(url).status_code == 404


@pytest.fixture
def lease_holders() -> Iterator[Callable[[], list[str]]]:
    """Every lease token an upload row is ever given, recorded by a trigger."""
    with upload_row_updates([("lease_token", "uuid")], "NEW.lease_token IS NOT NULL") as read:
        yield lambda: [str(token) for (token,) in read()]


@pytest.mark.usefixtures("s3_server")
def test_a_user_who_may_not_write_never_holds_the_uploads_lease(
    tech: Phone,
    make_phone: Callable[..., Phone],
    work_order: str,
    tus_for: Callable[[Phone], TusClient],
    lease_holders: Callable[[], list[str]],
) -> None:
    # Given an upload a technician started
    url = _started_by(tech, work_order, tus_for)

    # When a dispatcher and a stranger try to append to it
    refused = [
        tus_for(make_phone("dispatcher")).patch(url, 0, payload(1000)).status_code,
        tus_for(make_phone()).patch(url, 0, payload(1000)).status_code,
    ]

    # Then both are refused without ever holding its lease (a writer is never kept waiting)
    assert refused == [403, 404]
    assert lease_holders() == []
    # And its writer takes it at once
    assert tus_for(tech).patch(url, 0, payload(1000)).status_code == 204
    assert len(lease_holders()) == 1


def test_only_the_creator_or_a_dispatcher_may_terminate(
    tech: Phone,
    dispatcher: Phone,
    work_order: str,
    tus_for: Callable[[Phone], TusClient],
    s3_server: S3Settings,
) -> None:
    url = _started_by(tech, work_order, tus_for)
    assert tus_for(dispatcher).delete(url).status_code == 204
    second = _started_by(tech, work_order, tus_for)
    assert tus_for(tech).delete(second).status_code == 204


def test_a_second_post_of_someone_elses_attachment_id_is_refused(
    tech: Phone,
    dispatcher: Phone,
    work_order: str,
    tus_for: Callable[[Phone], TusClient],
) -> None:
    url = _started_by(tech, work_order, tus_for)
    attachment_id = url.rsplit("/", 1)[1]
    again = tus_for(dispatcher).create(work_order, 3000, attachment_id=attachment_id)
    assert (again.status_code, again.json()["code"]) == (409, "attachment_id_reused")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("filename", "evil\r\nX-Amz-Meta: 1.jpg"),
        ("filename", "nul\x00.jpg"),
        ("content_type", "image/jpeg\n"),
    ],
)
def test_control_characters_in_metadata_are_refused_at_creation(
    tech: Phone,
    work_order: str,
    tus_for: Callable[[Phone], TusClient],
    key: str,
    value: str,
) -> None:
    metadata = {"filename": "photo.jpg", "content_type": "image/jpeg", key: value}
    created = tus_for(tech).create(
        work_order, 10, filename=metadata["filename"], content_type=metadata["content_type"]
    )
    assert (created.status_code, created.json()["code"]) == (400, "invalid_metadata")


def test_a_note_may_hold_line_breaks(
    tech: Phone, work_order: str, tus_for: Callable[[Phone], TusClient]
) -> None:
    created = tus_for(tech).create(work_order, 10, extra={"note": "line one\nline two"})
    assert created.status_code == 201, created.content
