"""The upload queue's states without a server: saved, and why a file is not moving."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fieldsync_client import Network, UploadPolicy, UploadStatus
from fieldsync_client.store import Store
from fieldsync_client.transport import Api
from fieldsync_client.uploads import Uploader

WO = "00000000-0000-4000-8000-000000000001"


@pytest.fixture
def uploader(tmp_path: Path) -> Uploader:
    store = Store(tmp_path / "phone")
    store.put("device_id", "11111111-1111-4111-8111-111111111111")
    return Uploader(store, Api("http://unused"), UploadPolicy())


def saved(uploader: Uploader, tmp_path: Path, name: str, size: int = 1000) -> str:
    path = tmp_path / name
    path.write_bytes(b"x" * size)
    return uploader.add(WO, path, note=f"note for {name}", job="visit")


def state(uploader: Uploader, attachment_id: str) -> tuple[str, str | None]:
    row = uploader.store.upload(attachment_id)
    assert row is not None
    return row["status"], row["reason"]


def test_a_file_is_saved_with_its_size_checksum_note_and_kind(
    uploader: Uploader, tmp_path: Path
) -> None:
    attachment_id = saved(uploader, tmp_path, "meter.jpg", 5000)
    row = uploader.store.upload(attachment_id)
    assert row is not None
    assert (row["status"], row["kind"], row["content_type"], row["size"]) == (
        "saved",
        "photo",
        "image/jpeg",
        5000,
    )
    assert row["sha256"] == hashlib.sha256(b"x" * 5000).hexdigest()
    assert row["note"] == "note for meter.jpg"


def test_every_waiting_file_says_why(uploader: Uploader, tmp_path: Path) -> None:
    photo = saved(uploader, tmp_path, "a.jpg")
    video = saved(uploader, tmp_path, "b.mp4")
    uploader.store.put("network", Network.CELLULAR.value)
    uploader.refresh_states()
    assert state(uploader, photo) == ("waiting", None)
    assert state(uploader, video) == ("paused", "waiting_for_wifi")
    uploader.store.put("network", Network.OFFLINE.value)
    uploader.refresh_states()
    assert state(uploader, photo) == ("paused", "no_signal")
    uploader.store.put("network", Network.WIFI.value)
    uploader.pause(photo, paused=True)
    assert state(uploader, photo) == ("paused", "user")
    assert state(uploader, video) == ("waiting", None)
    uploader.pause(None, paused=False)
    assert state(uploader, photo) == ("waiting", None)


def test_job_progress_reads_like_the_queue_screen(uploader: Uploader, tmp_path: Path) -> None:
    items = [saved(uploader, tmp_path, f"{i}.jpg") for i in range(3)]
    uploader.store.upload_update(items[0], offset=1000)
    uploader.store.upload_update(items[0], UploadStatus.UPLOADED)
    uploader.store.upload_update(items[1], UploadStatus.UPLOADING, offset=400)
    progress = uploader.progress("visit")
    assert (progress.files, progress.uploaded, progress.bytes_confirmed) == (3, 1, 1400)
    assert progress.text == "Uploading 2 of 3"


def test_a_file_that_shrank_after_saving_fails_instead_of_looping(
    uploader: Uploader, tmp_path: Path
) -> None:
    attachment_id = saved(uploader, tmp_path, "a.jpg", 1000)
    (tmp_path / "a.jpg").write_bytes(b"x" * 500)
    uploader.store.upload_update(attachment_id, upload_url="/api/v1/uploads/x", offset=500)
    # Nothing is sent (an empty PATCH would be answered 204 at the same offset, forever):
    # the error makes the file `failed` with code local_file for a person to look at.
    with pytest.raises(OSError, match="shorter"):
        uploader._send_chunks(attachment_id, "/api/v1/uploads/x", 500, lambda: False)


def test_nothing_is_due_while_a_file_cannot_move(uploader: Uploader, tmp_path: Path) -> None:
    attachment_id = saved(uploader, tmp_path, "a.jpg")
    uploader.store.upload_update(attachment_id, next_attempt_at=1.0)  # a retry long past
    uploader.store.put("network", Network.OFFLINE.value)
    assert uploader.step(lambda: False) > 1.0
