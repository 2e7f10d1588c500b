"""Against a real gunicorn: a refused request's answer reaches the client (never a reset
connection), and no refused or slow body holds a worker thread past its budget."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable

import pytest
import requests

from common.body import BodyTimeout, BoundedStream, Deadline
from tests.fixtures import Phone
from tests.media.conftest import TUS, WebServer

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_oversized_push_is_answered_413_not_reset(
    web: WebServer, tech: Phone, token_for: Callable[[Phone], str]
) -> None:
    # Given a push body half again over the limit, sent whole before the answer is read
    ops = [{"op_id": str(uuid.uuid4()), "pad": "x" * 1000} for _ in range(1500)]
    body = json.dumps({"device_id": tech.device_id, "ops": ops}).encode()
    assert 1024 * 1024 < len(body) < 2 * 1024 * 1024

    # When it is pushed, then the phone reads 413 batch_too_large and can split the batch
    with requests.Session() as session:
        response = session.post(
            f"{web.url}/api/v1/sync/push",
            data=body,
            headers={
                "Authorization": f"Token {token_for(tech)}",
                "Content-Type": "application/json",
            },
            timeout=30,
        )
        assert (response.status_code, response.json()["code"]) == (413, "batch_too_large")
        # And the same connection serves the next request
        assert session.get(f"{web.url}/healthz", timeout=5).status_code == 200


def test_an_unauthenticated_upload_chunk_is_answered_401_not_reset(web: WebServer) -> None:
    response = requests.patch(
        f"{web.url}/api/v1/uploads/{uuid.uuid4()}",
        data=b"\0" * (8 * 1024 * 1024),
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        timeout=60,
    )
    assert (response.status_code, response.json()["code"]) == (401, "not_authenticated")


def test_a_refused_request_trickling_its_body_is_answered_within_the_drain_budget(
    web: WebServer,
) -> None:
    # Given an unauthenticated push that announces 100 kB and then sends almost nothing
    with socket.create_connection(("127.0.0.1", web.port), timeout=30) as sock:
        sock.sendall(
            b"POST /api/v1/sync/push HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )
        started = time.monotonic()

        # When it keeps trickling, then the answer comes within the refusals' budget (5 s)
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert time.monotonic() - started < 15


def test_a_body_read_stops_at_its_deadline_however_the_bytes_trickle() -> None:
    server, client = socket.socketpair()
    with server, client:
        stop = threading.Event()

        def trickle() -> None:  # a byte every 0.1 s: no single read ever times out
            while not stop.wait(0.1):
                client.sendall(b"x")

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        stream = BoundedStream(server.makefile("rb"), 100_000, Deadline(0.5, server))
        started = time.monotonic()
        with pytest.raises(BodyTimeout):
            while stream.read(1):
                pass
        stop.set()
        sender.join()
        assert time.monotonic() - started < 2
        assert not stream.drain(1024 * 1024, 0.3)
