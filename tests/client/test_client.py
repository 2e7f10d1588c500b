"""The reference client does what a well-built app does, against the real server."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fieldsync_client import Client, Network
from media.models import Attachment
from operations.models import Event, Operation
from tests.client.conftest import PASSWORD, write_file
from tests.conftest import ROOT
from tests.fixtures import Phone, apply_now, settled
from tests.helpers import wait_until
from tests.media.conftest import MiB
from workorders.models import WorkOrder

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("s3_server", "worker"),
]
PhoneFor = Callable[..., Client]


def assigned_work_order(dispatcher: Phone, tech: Phone, **fields: Any) -> str:
    wo = str(uuid.uuid4())
    fields = {"title": "Boiler", "address": "1 Main St", **fields}
    dispatcher.push(
        dispatcher.op("work_order", wo, "create", 0, assigned_to=tech.user.username, **fields)
    )
    apply_now()
    return wo


def sync_until(client: Client, done: Callable[[], bool], timeout: float = 30) -> None:
    def round_done() -> bool:
        client.sync_once()
        return done()

    wait_until(round_done, timeout=timeout, interval=0.2)


def run_uploads(client: Client, timeout: float = 60) -> None:
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    try:
        client.run(stop, until_idle=True)
    finally:
        timer.cancel()
    assert not stop.is_set(), f"not idle within {timeout} s: {client.status()}"


def test_local_edits_are_queued_pushed_applied_and_pulled(
    phone_for: PhoneFor, dispatcher: Phone, tech: Phone
) -> None:
    # Given a work order assigned to the technician, pulled onto the phone
    wo = assigned_work_order(dispatcher, tech)
    phone = phone_for(tech)
    phone.sync_once()
    assert phone.record("work_order", wo)["fields"]["title"] == "Boiler"  # type: ignore[index]
    # When the technician works offline: saved locally first, each change an op with the next seq
    phone.set_network(Network.OFFLINE)
    phone.update("work_order", wo, status="on_site", technician_notes="valve seized")
    comment = phone.comment(wo, "customer not home at 9")
    assert phone.record("work_order", wo)["fields"]["status"] == "on_site"  # type: ignore[index]
    ops = phone.store.ops()
    assert [op["seq"] for op in ops] == [1, 2]
    assert {op["status"] for op in ops} == {"new"}
    assert ops[0]["base_version"] == 1
    # Then, with signal again, they are accepted, applied by the worker and their fate pulled
    phone.set_network(Network.WIFI)
    sync_until(phone, lambda: phone.store.op_counts() == {"applied": 2})
    record = WorkOrder.objects.get(pk=wo)
    assert (record.status, record.technician_notes, record.version) == (
        "on_site",
        "valve seized",
        2,
    )
    mine = phone.record("work_order", wo)
    assert mine is not None
    assert mine["version"] == 2
    assert mine["fields"] == mine["server_fields"]
    assert phone.record("comment", comment)["fields"]["body"] == "customer not home at 9"  # type: ignore[index]
    assert [row["new"] for row in phone.store.log_rows() if row["subject"] == "op"][:4] == [
        "new",
        "new",
        "sending",
        "sending",
    ]


def test_a_lost_answer_resends_the_same_ops_and_nothing_applies_twice(
    phone_for: PhoneFor, dispatcher: Phone, tech: Phone
) -> None:
    # Given ops the server stored, whose answer never reached the phone (they are still
    # `sending` on the device, exactly as after a cut connection or a kill mid-push)
    wo = assigned_work_order(dispatcher, tech)
    phone = phone_for(tech)
    phone.sync_once()
    phone.comment(wo, "first")
    phone.update("work_order", wo, technician_notes="noted")
    phone.sync_once()
    with phone.store.write() as db:
        db.execute("UPDATE ops SET status = 'sending'")
    # When the phone syncs again
    phone.sync_once()
    # Then the same ids went again (duplicate → accepted) and each was applied once
    sync_until(phone, lambda: phone.store.op_counts() == {"applied": 2})
    assert Operation.objects.filter(device_id=phone.store.device_id).count() == 2
    assert Event.objects.filter(op_id__in=[op["op_id"] for op in phone.store.ops()]).count() == 2


def test_a_rejected_op_shows_its_reason_and_the_local_view_reverts(
    phone_for: PhoneFor, dispatcher: Phone, tech: Phone
) -> None:
    wo = assigned_work_order(dispatcher, tech)
    phone = phone_for(tech)
    phone.sync_once()
    # A technician may not reassign work: the op is refused, with a reason, and never blocks
    # the op behind it
    phone.update("work_order", wo, assigned_to=dispatcher.user.username)
    phone.update("work_order", wo, technician_notes="still mine")
    sync_until(phone, lambda: phone.store.op_counts() == {"rejected": 1, "applied": 1})
    rejected = phone.store.ops(("rejected",))[0]
    assert rejected["code"] == "forbidden"
    assert phone.record("work_order", wo)["fields"]["assigned_to"] == tech.user.username  # type: ignore[index]


def test_a_disputed_status_becomes_a_conflict_the_technician_settles(
    phone_for: PhoneFor, dispatcher: Phone, tech: Phone
) -> None:
    # Given the phone saw version 1, then the dispatcher put the job on hold
    wo = assigned_work_order(dispatcher, tech)
    phone = phone_for(tech)
    phone.sync_once()
    dispatcher.push(dispatcher.op("work_order", wo, "update", 1, status="on_hold"))
    apply_now()
    # When the technician, still on version 1, marks it completed
    phone.update("work_order", wo, status="completed")
    sync_until(
        phone,
        lambda: phone.store.op_counts() == {"conflict": 1} and len(phone.conflicts("open")) == 1,
    )
    (conflict,) = phone.conflicts("open")
    assert phone.store.ops()[0]["conflict_ids"] == f'["{conflict["id"]}"]'
    assert phone.record("work_order", wo)["fields"]["status"] == "on_hold"  # type: ignore[index]
    # Then "keep mine" is saved on the phone, sent, and the server value becomes the phone's
    phone.resolve(conflict["id"], "mine")
    sync_until(phone, lambda: phone.record("work_order", wo)["fields"]["status"] == "completed")  # type: ignore[index]
    assert WorkOrder.objects.get(pk=wo).status == "completed"
    assert phone.conflicts("open") == []
    assert phone.conflicts("resolved")[0]["id"] == conflict["id"]


def test_files_upload_in_chunks_and_count_only_when_attached(
    phone_for: PhoneFor, dispatcher: Phone, tech: Phone, tmp_path: Path
) -> None:
    wo = assigned_work_order(dispatcher, tech)
    phone = phone_for(tech)
    photo = write_file(tmp_path / "meter.jpg", 3 * MiB + 17, seed=1)
    # The same filename twice is two files
    first = phone.attach(wo, photo, note="meter before", job="visit-1")
    second = phone.attach(wo, photo, note="meter after", job="visit-1")
    assert [item["status"] for item in phone.store.uploads()] == ["saved", "saved"]
    run_uploads(phone)
    assert phone.progress("visit-1").text == "Uploaded 2 of 2"
    for attachment_id, note in ((first, "meter before"), (second, "meter after")):
        attachment = Attachment.objects.get(pk=attachment_id)
        assert (attachment.sha256, attachment.note) == (
            hashlib.sha256(photo.read_bytes()).hexdigest(),
            note,
        )
        item = phone.store.upload(attachment_id)
        assert item is not None
        assert (item["status"], item["bytes_sent"]) == ("uploaded", photo.stat().st_size)
    states = [row["new"] for row in phone.store.log_rows(200) if row["subject_id"] == first]
    assert states == ["saved", "waiting", "uploading", "uploaded"]


def test_videos_wait_for_wifi_while_photos_go_on_cellular(
    phone_for: PhoneFor, dispatcher: Phone, tech: Phone, tmp_path: Path
) -> None:
    wo = assigned_work_order(dispatcher, tech)
    phone = phone_for(tech)
    phone.set_network(Network.CELLULAR)
    video = phone.attach(wo, write_file(tmp_path / "leak.mp4", 2 * MiB, seed=2))
    photo = phone.attach(wo, write_file(tmp_path / "leak.jpg", MiB, seed=3))
    run_uploads(phone)  # idle: the video is held by policy, not stuck
    assert phone.store.upload(photo)["status"] == "uploaded"  # type: ignore[index]
    held = phone.store.upload(video)
    assert held is not None
    assert (held["status"], held["reason"], held["offset"]) == ("paused", "waiting_for_wifi", 0)
    phone.set_network(Network.WIFI)
    run_uploads(phone)
    assert phone.store.upload(video)["status"] == "uploaded"  # type: ignore[index]


def test_an_unreachable_server_backs_off_with_growing_waits(
    phone_for: PhoneFor, dispatcher: Phone, tech: Phone, tmp_path: Path, web: Any
) -> None:
    wo = assigned_work_order(dispatcher, tech)
    phone = phone_for(tech)
    item = phone.attach(wo, write_file(tmp_path / "a.jpg", 1000))
    # No server at that address any more (the phone's radio is on, the network is not)
    phone.store.put("server_url", "http://127.0.0.1:9")
    waits = []
    for _ in range(3):
        with phone.store.write() as db:
            db.execute("UPDATE uploads SET next_attempt_at = 0")
        uploader = phone._uploader(phone.api())
        uploader.step(lambda: False)
        row = phone.store.upload(item)
        assert row is not None
        assert (row["status"], row["reason"]) == ("paused", "retrying")
        waits.append(row["next_attempt_at"] - time.time())
    base = phone.settings.backoff.base
    for attempt, wait in enumerate(waits):
        assert base * 2**attempt * 0.75 <= wait <= base * 2**attempt * 1.25
    # And a usable network again restarts the timers: the file goes at once
    phone.store.put("server_url", web.url)
    phone.set_network(Network.CELLULAR)
    run_uploads(phone)
    assert phone.store.upload(item)["status"] == "uploaded"  # type: ignore[index]


def test_a_file_changed_after_saving_fails_with_the_servers_reason(
    phone_for: PhoneFor, dispatcher: Phone, tech: Phone, tmp_path: Path
) -> None:
    wo = assigned_work_order(dispatcher, tech)
    phone = phone_for(tech)
    path = write_file(tmp_path / "sig.png", 4000, seed=4)
    item = phone.attach(wo, path, kind="signature")
    path.write_bytes(os.urandom(4000))  # not what was saved: the server must refuse it
    run_uploads(phone)
    row = phone.store.upload(item)
    assert row is not None
    assert (row["status"], row["code"]) == ("failed", "sha256_mismatch")
    assert not Attachment.objects.filter(pk=item).exists()


def test_the_app_killed_mid_upload_resumes_from_the_servers_offset(
    phone_for: PhoneFor, dispatcher: Phone, tech: Phone, tmp_path: Path
) -> None:
    # Given the background agent (its own process) is sending a 12 MiB video in 1 MiB chunks
    wo = assigned_work_order(dispatcher, tech)
    phone = phone_for(tech)
    video = write_file(tmp_path / "walkthrough.mp4", 12 * MiB, seed=5)
    item = phone.attach(wo, video, note="roof", job="visit-2")
    phone.sync_once()
    phone.update("work_order", wo, status="on_site")
    command = [sys.executable, "-m", "fieldsync_client", "--data", str(phone.store.data_dir)]
    command += ["--backoff-base", "0.5", "--chunk-mib", "1", "--sync-interval", "1", "run"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "client")}
    agent = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (phone.store.upload(item) or {"offset": 0})["offset"] >= 4 * MiB, 60)
        # When the app is killed outright and opened again
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        agent = subprocess.Popen([*command, "--until-idle"], env=env, stderr=subprocess.DEVNULL)
        assert agent.wait(120) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
    # Then the file is attached whole, once, and at most one chunk went twice
    settled()
    row = phone.store.upload(item)
    assert row is not None
    assert row["status"] == "uploaded"
    assert row["size"] <= row["bytes_sent"] <= row["size"] + MiB
    assert Attachment.objects.get(pk=item).sha256 == hashlib.sha256(video.read_bytes()).hexdigest()
    assert phone.store.op_counts() == {"applied": 1}


def test_the_signed_out_phone_keeps_its_work_until_it_signs_in_again(
    phone_for: PhoneFor, dispatcher: Phone, tech: Phone
) -> None:
    wo = assigned_work_order(dispatcher, tech)
    phone = phone_for(tech)
    phone.sync_once()
    phone.store.put("token", "not-a-token")
    phone.update("work_order", wo, technician_notes="kept")
    stop = threading.Event()
    runner = threading.Thread(target=phone.run, args=(stop,))
    runner.start()
    try:
        wait_until(lambda: phone.status()["signed_out"], timeout=20)
        assert phone.store.op_counts() == {"sending": 1}
        phone.login(PASSWORD)
        wait_until(lambda: phone.store.op_counts() == {"applied": 1}, timeout=30)
    finally:
        stop.set()
        runner.join()
