"""Stock tus clients (tuspy, tus-js-client) against a real gunicorn started from
gunicorn.conf.py, and what only a real server shows: chunked bodies, a web process killed
between chunks, a client killed mid-chunk, slow phones, and memory for a 1 GiB file."""

from __future__ import annotations

import hashlib
import json
import socket
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from tusclient.client import TusClient as TuspyClient

from media.models import Upload
from tests.conftest import CeleryWorker
from tests.fixtures import Phone
from tests.helpers import wait_until
from tests.media.conftest import (
    TUS,
    MiB,
    WebServer,
    encode_metadata,
    payload,
    sha256_hex,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("s3_server")]

Token = Callable[[Phone], str]


class Remote:
    """A phone talking tus to the real server over HTTP."""

    def __init__(self, web: WebServer, token: str) -> None:
        self.web = web
        self.headers = {**TUS, "Authorization": f"Token {token}"}

    @property
    def endpoint(self) -> str:
        return f"{self.web.url}/api/v1/uploads/"

    def url(self, attachment_id: str) -> str:
        return f"{self.endpoint}{attachment_id}"

    def create(self, work_order: str, length: int, **meta: str) -> str:
        attachment_id = str(uuid.uuid4())
        values = {**_metadata(work_order, attachment_id), **meta}
        response = requests.post(
            self.endpoint,
            headers={
                **self.headers,
                "Upload-Length": str(length),
                "Upload-Metadata": encode_metadata(values),
            },
            timeout=30,
        )
        assert response.status_code == 201, response.text
        assert response.headers["Location"] == self.url(attachment_id)
        return attachment_id

    def offset(self, attachment_id: str) -> int:
        response = requests.head(self.url(attachment_id), headers=self.headers, timeout=30)
        assert response.status_code == 200, response.status_code
        return int(response.headers["Upload-Offset"])

    def patch(
        self, attachment_id: str, offset: int, body: Any, session: Any = requests
    ) -> requests.Response:
        response: requests.Response = session.patch(
            self.url(attachment_id),
            data=body,
            headers={
                **self.headers,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            },
            timeout=120,
        )
        return response

    def status(self, attachment_id: str) -> dict[str, Any]:
        response = requests.get(
            f"{self.web.url}/api/v1/attachments/{attachment_id}",
            headers={"Authorization": self.headers["Authorization"]},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def attached(self, attachment_id: str, timeout: float = 60.0) -> dict[str, Any]:
        def settled() -> dict[str, Any]:
            status = self.status(attachment_id)
            return status if status["status"] in ("attached", "failed") else {}

        return wait_until(settled, timeout=timeout, message=f"{attachment_id} never settled")


def _metadata(work_order: str, attachment_id: str) -> dict[str, str]:
    return {
        "attachment_id": attachment_id,
        "work_order_id": work_order,
        "filename": "inspection.mp4",
        "content_type": "video/mp4",
        "kind": "video",
    }


@pytest.fixture
def remote(web: WebServer, tech: Phone, token_for: Token) -> Remote:
    return Remote(web, token_for(tech))


@pytest.fixture
def video(tmp_path: Path) -> Callable[[int], Path]:
    def make(size: int) -> Path:
        path = tmp_path / f"video-{size}.mp4"
        path.write_bytes(payload(size, seed=size))
        return path

    return make


def _tuspy(remote: Remote) -> TuspyClient:
    return TuspyClient(remote.endpoint, headers={"Authorization": remote.headers["Authorization"]})


# ============================================================================================
# tuspy
# ============================================================================================
def test_tuspy_uploads_a_file_with_checksums_and_it_is_attached(
    remote: Remote, work_order: str, video: Callable[[int], Path], worker: CeleryWorker
) -> None:
    path = video(12 * MiB + 7)
    attachment_id = str(uuid.uuid4())
    uploader = _tuspy(remote).uploader(
        file_path=str(path),
        chunk_size=4 * MiB,
        metadata=_metadata(work_order, attachment_id),
        upload_checksum=True,
    )

    uploader.upload()

    status = remote.attached(attachment_id)
    assert status["status"] == "attached", status
    assert status["sha256"] == sha256_hex(path.read_bytes())


def test_tuspy_resumes_after_the_client_is_thrown_away(
    remote: Remote, work_order: str, video: Callable[[int], Path], worker: CeleryWorker
) -> None:
    path = video(11 * MiB)
    attachment_id = str(uuid.uuid4())
    first = _tuspy(remote).uploader(
        file_path=str(path), chunk_size=3 * MiB, metadata=_metadata(work_order, attachment_id)
    )
    first.upload(stop_at=6 * MiB)
    url = first.url
    del first

    second = _tuspy(remote).uploader(file_path=str(path), url=url, chunk_size=3 * MiB)

    assert second.offset == 6 * MiB
    second.upload()
    assert remote.attached(attachment_id)["sha256"] == sha256_hex(path.read_bytes())


def test_tuspy_small_chunks_below_the_part_size(
    remote: Remote, work_order: str, video: Callable[[int], Path], worker: CeleryWorker
) -> None:
    path = video(6 * MiB + 100)
    attachment_id = str(uuid.uuid4())
    uploader = _tuspy(remote).uploader(
        file_path=str(path), chunk_size=256 * 1024, metadata=_metadata(work_order, attachment_id)
    )

    uploader.upload()

    assert remote.attached(attachment_id)["sha256"] == sha256_hex(path.read_bytes())


# ============================================================================================
# What needs a real server
# ============================================================================================
def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_chunked_transfer_encoding_bodies_are_stored(
    remote: Remote, work_order: str, worker: CeleryWorker
) -> None:
    data = payload(7 * MiB + 5)
    attachment_id = remote.create(work_order, len(data))

    # A generator body makes requests send Transfer-Encoding: chunked, no Content-Length.
    first = remote.patch(attachment_id, 0, _chunks(data[: 6 * MiB], 100_000))
    second = remote.patch(attachment_id, 6 * MiB, _chunks(data[6 * MiB :], 100_000))

    assert first.request.headers.get("Transfer-Encoding") == "chunked"
    assert (first.status_code, first.headers["Upload-Offset"]) == (204, str(6 * MiB))
    assert (second.status_code, second.headers["Upload-Offset"]) == (204, str(len(data)))
    assert remote.attached(attachment_id)["sha256"] == sha256_hex(data)


def test_a_chunked_body_past_the_upload_length_is_413(remote: Remote, work_order: str) -> None:
    attachment_id = remote.create(work_order, 1000)

    response = remote.patch(attachment_id, 0, _chunks(b"x" * 2000, 500))

    assert response.status_code == 413
    assert remote.offset(attachment_id) == 0


def test_one_kept_alive_connection_serves_patch_after_patch(
    remote: Remote, work_order: str
) -> None:
    data = payload(3 * MiB)
    attachment_id = remote.create(work_order, len(data))

    # The third PATCH is refused before its body is read: the connection must stay in step.
    with requests.Session() as session:
        statuses = [
            remote.patch(attachment_id, offset, data[offset : offset + MiB], session).status_code
            for offset in (0, MiB, 0, 2 * MiB)
        ]
        head = session.head(remote.url(attachment_id), headers=remote.headers, timeout=30)

    assert statuses == [204, 204, 409, 204]
    assert head.headers["Upload-Offset"] == str(len(data))


def test_method_override_on_a_real_server(remote: Remote, work_order: str) -> None:
    attachment_id = remote.create(work_order, 10)

    response = requests.post(
        remote.url(attachment_id),
        data=b"0123456789",
        headers={
            **remote.headers,
            "X-HTTP-Method-Override": "PATCH",
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
        timeout=30,
    )

    assert (response.status_code, response.headers["Upload-Offset"]) == (204, "10")


def test_the_web_process_killed_between_chunks_loses_nothing(
    remote: Remote, web: WebServer, work_order: str, worker: CeleryWorker
) -> None:
    data = payload(9 * MiB + 3)
    attachment_id = remote.create(work_order, len(data))
    assert remote.patch(attachment_id, 0, data[: 6 * MiB]).status_code == 204

    web.restart()  # SIGKILL, then a new process on another port

    assert remote.offset(attachment_id) == 6 * MiB
    assert remote.patch(attachment_id, 6 * MiB, data[6 * MiB :]).status_code == 204
    assert remote.attached(attachment_id)["sha256"] == sha256_hex(data)


def test_a_client_killed_mid_chunk_keeps_every_byte_that_arrived(
    remote: Remote, web: WebServer, work_order: str, worker: CeleryWorker
) -> None:
    data = payload(8 * MiB)
    attachment_id = remote.create(work_order, len(data))
    sent = 6 * MiB + 12_345

    # A PATCH announcing the whole file, cut off after `sent` bytes by a dying phone.
    with socket.create_connection(("127.0.0.1", web.port)) as sock:
        head = (
            f"PATCH /api/v1/uploads/{attachment_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: {remote.headers['Authorization']}\r\nTus-Resumable: 1.0.0\r\n"
            f"Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        sock.sendall(head.encode() + data[:sent])

    # The server notices the cut, stores what it got and lets go of the upload.
    wait_until(
        lambda: not _locked(attachment_id) and remote.offset(attachment_id),
        message="the cut PATCH kept nothing",
    )
    offset = remote.offset(attachment_id)
    assert offset == sent
    assert remote.patch(attachment_id, offset, data[offset:]).status_code == 204
    assert remote.attached(attachment_id)["sha256"] == sha256_hex(data)


# ============================================================================================
# tus-js-client (node)
# ============================================================================================
def _tus_js(workdir: Path, **args: Any) -> dict[str, Any]:
    done = subprocess.run(
        ["node", "upload.mjs", json.dumps(args)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_tus_js_client_resumes_after_it_is_thrown_away_mid_file(
    remote: Remote,
    work_order: str,
    video: Callable[[int], Path],
    tus_js: Path,
    worker: CeleryWorker,
) -> None:
    path = video(9 * MiB)
    attachment_id = str(uuid.uuid4())
    common = {
        "endpoint": remote.endpoint,
        "file": str(path),
        "token": remote.headers["Authorization"].split(" ", 1)[1],
        "chunkSize": MiB,
        "metadata": _metadata(work_order, attachment_id),
    }

    aborted = _tus_js(tus_js, **common, abortAfter=4 * MiB)
    finished = _tus_js(tus_js, **common, uploadUrl=aborted["url"])

    assert aborted["done"] is False and aborted["offset"] >= 4 * MiB
    assert finished["done"] is True
    assert finished["url"] == remote.url(attachment_id)
    assert remote.attached(attachment_id)["sha256"] == sha256_hex(path.read_bytes())


def test_tus_js_client_with_method_override(
    remote: Remote,
    work_order: str,
    video: Callable[[int], Path],
    tus_js: Path,
    worker: CeleryWorker,
) -> None:
    path = video(3 * MiB + 11)
    attachment_id = str(uuid.uuid4())

    result = _tus_js(
        tus_js,
        endpoint=remote.endpoint,
        file=str(path),
        token=remote.headers["Authorization"].split(" ", 1)[1],
        chunkSize=MiB,
        metadata=_metadata(work_order, attachment_id),
        overridePatchMethod=True,
    )

    assert result["done"] is True
    assert remote.attached(attachment_id)["sha256"] == sha256_hex(path.read_bytes())


# ============================================================================================
# Load and memory
# ============================================================================================
TRICKLERS = 50
TRICKLE_RATE = 64 * 1024  # bytes per second per phone
TRICKLE_BYTES = 192 * 1024  # three seconds' worth each


def _trickle(port: int, path: str, authorization: str, finished: list[int]) -> None:
    """Send a PATCH body at TRICKLE_RATE, as a phone on a weak signal does."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(
            (
                f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {authorization}\r\n"
                f"Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                f"Content-Type: application/offset+octet-stream\r\n"
                f"Content-Length: {TRICKLE_BYTES}\r\n\r\n"
            ).encode()
        )
        piece = TRICKLE_RATE // 8
        for _ in range(TRICKLE_BYTES // piece):
            sock.sendall(b"t" * piece)
            # The pacing is the load being simulated, not a wait for a condition.
            time.sleep(1 / 8)
        answer = sock.recv(4096)
    finished.append(int(answer.split(b" ", 2)[1]))


def test_fifty_trickling_uploads_do_not_delay_api_requests(remote: Remote, work_order: str) -> None:
    ids = [remote.create(work_order, TRICKLE_BYTES) for _ in range(TRICKLERS)]
    probe = ids[0]
    before = [_timed(lambda: remote.status(probe)) for _ in range(10)]
    finished: list[int] = []
    threads = [
        threading.Thread(
            target=_trickle,
            args=(
                remote.web.port,
                f"/api/v1/uploads/{i}",
                remote.headers["Authorization"],
                finished,
            ),
        )
        for i in ids
    ]
    for thread in threads:
        thread.start()
    wait_until(
        lambda: sum(_locked(i) for i in ids[:5]) == 5,
        message="the trickling uploads never started",
    )

    during: list[float] = []
    while any(thread.is_alive() for thread in threads) and len(during) < 200:
        during.append(_timed(lambda: remote.status(probe)))
    for thread in threads:
        thread.join(60)

    assert finished == [204] * TRICKLERS
    assert all(remote.offset(i) == TRICKLE_BYTES for i in ids)
    assert len(during) >= 20
    # API calls answer while every trickling upload holds a thread.
    assert statistics.median(during) < max(0.1, 5 * statistics.median(before)), during
    assert max(during) < 1.0, during


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _locked(attachment_id: str) -> bool:
    """Whether a PATCH of this upload is in flight (it holds the upload's lease)."""
    return Upload.objects.filter(pk=attachment_id, lease_token__isnull=False).exists()


GIB = 1024 * MiB


def test_a_1_gib_upload_grows_server_rss_by_less_than_64_mib(
    remote: Remote, web: WebServer, work_order: str, worker: CeleryWorker
) -> None:
    # Chunks of two whole parts keep this test quick (no tail segments); memory is bounded
    # per request either way. Warm the workers up first: imports and connection pools are
    # not per-upload memory.
    warm = remote.create(work_order, 6 * MiB)
    remote.patch(warm, 0, payload(6 * MiB))
    baseline = web.rss()
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            peak[0] = max(peak[0], web.rss())

    sampler = threading.Thread(target=sample)
    sampler.start()
    attachment_id = remote.create(work_order, GIB)
    digest = hashlib.sha256()
    block = payload(10 * MiB, seed=99)
    try:
        for offset in range(0, GIB, len(block)):
            piece = block[: GIB - offset]
            digest.update(piece)
            response = remote.patch(attachment_id, offset, piece)
            assert response.status_code == 204, response.text
    finally:
        stop.set()
        sampler.join()

    assert peak[0] - baseline < 64 * MiB, f"RSS grew by {(peak[0] - baseline) / MiB:.1f} MiB"
    status = remote.attached(attachment_id, timeout=180)
    assert (status["status"], status["sha256"]) == ("attached", digest.hexdigest())
