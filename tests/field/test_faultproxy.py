"""The fault proxy against plain TCP servers started here: it forwards, and each fault does
what the field-day proof relies on."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from tests.field.faultproxy import FaultProxy
from tests.helpers import wait_until

KiB = 1024
MiB = 1024 * KiB
TIMEOUT = 5.0


class Server(socketserver.ThreadingTCPServer):
    """A TCP server on a free port running `handle` per connection; keeps what each returned."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handle: Callable[[socket.socket], object]) -> None:
        self.handle = handle
        self.results: list[Any] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.results.append(outer.handle(self.request))

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server_address[:2]
        return str(host), int(port)


def echo(conn: socket.socket) -> int:
    echoed = 0
    try:
        while data := conn.recv(256 * KiB):
            conn.sendall(data)
            echoed += len(data)
    except ConnectionError:
        pass
    return echoed


def sink(conn: socket.socket) -> tuple[int, str]:
    """Read until the peer goes; how many bytes came and whether it closed or reset."""
    received = 0
    try:
        while data := conn.recv(256 * KiB):
            received += len(data)
    except ConnectionResetError:
        return received, "reset"
    return received, "closed"


def source(conn: socket.socket) -> None:
    with contextlib.suppress(ConnectionError):
        for _ in range(64):
            conn.sendall(os.urandom(64 * KiB))


@pytest.fixture
def echo_server() -> Iterator[Server]:
    with Server(echo) as server:
        yield server
        server.shutdown()


@pytest.fixture
def sink_server() -> Iterator[Server]:
    with Server(sink) as server:
        yield server
        server.shutdown()


@pytest.fixture
def proxy_to() -> Iterator[Callable[[Server], FaultProxy]]:
    proxies: list[FaultProxy] = []

    def start(server: Server) -> FaultProxy:
        proxy = FaultProxy(server.address, name="test")
        proxy.start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()


def connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)


def recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def round_trip(conn: socket.socket, message: bytes) -> bytes:
    conn.sendall(message)
    return recv_exactly(conn, len(message))


def is_refused(proxy: FaultProxy) -> bool:
    """Whether a new connection through `proxy` fails as a dead network makes it fail."""
    try:
        with connect(proxy) as conn:
            conn.sendall(b"hello?")
            return conn.recv(16) == b""
    except (ConnectionResetError, ConnectionRefusedError, BrokenPipeError):
        return True


class Sender(threading.Thread):
    """Sends `data` on `conn` in the background; keeps the error that ended it, if any."""

    def __init__(self, conn: socket.socket, data: bytes) -> None:
        super().__init__(daemon=True)
        self.conn = conn
        self.data = data
        self.error: OSError | None = None
        self.start()

    def run(self) -> None:
        try:
            self.conn.sendall(self.data)
        except OSError as error:
            self.error = error


def assert_reset(conn: socket.socket, sender: Sender | None = None) -> None:
    """The client saw a reset. The kernel reports it to one call only: the sender's, if it was
    sending when it came, else the next recv."""
    if sender is not None:
        sender.join(TIMEOUT)
        if isinstance(sender.error, ConnectionResetError):
            return
    with pytest.raises(ConnectionResetError):
        conn.recv(16)


# --- forwarding -----------------------------------------------------------------------------
def test_bytes_are_forwarded_both_ways_and_counted(
    echo_server: Server, proxy_to: Callable[[Server], FaultProxy]
) -> None:
    proxy = proxy_to(echo_server)
    payload = os.urandom(3 * MiB)

    with connect(proxy) as conn:
        Sender(conn, payload)
        echoed = recv_exactly(conn, len(payload))

    assert echoed == payload
    stats = proxy.stats
    assert (stats.connections, stats.bytes_up, stats.bytes_down) == (1, len(payload), len(payload))
    assert stats.cuts == 0


def test_an_http_request_passes_through() -> None:
    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"hello {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        with FaultProxy(("127.0.0.1", server.server_address[1])) as proxy:
            response = requests.get(f"{proxy.url}/field", timeout=TIMEOUT)
    finally:
        server.shutdown()
        server.server_close()

    assert (response.status_code, response.text) == (200, "hello /field")


# --- faults ---------------------------------------------------------------------------------
def test_cut_resets_a_connection_in_flight(
    echo_server: Server, proxy_to: Callable[[Server], FaultProxy]
) -> None:
    proxy = proxy_to(echo_server)
    with connect(proxy) as conn:
        assert round_trip(conn, b"ping") == b"ping"

        assert proxy.cut() == 1

        assert_reset(conn)
    assert proxy.stats.cuts == 1
    wait_until(lambda: echo_server.results, timeout=TIMEOUT, message="the server side stayed open")


def test_offline_resets_open_connections_and_refuses_new_ones_until_back_online(
    echo_server: Server, proxy_to: Callable[[Server], FaultProxy]
) -> None:
    proxy = proxy_to(echo_server)
    with connect(proxy) as conn:
        assert round_trip(conn, b"ping") == b"ping"

        proxy.set_offline(True)

        assert_reset(conn)
    assert is_refused(proxy)
    with pytest.raises(requests.ConnectionError):
        requests.get(proxy.url, timeout=TIMEOUT)
    assert proxy.stats.refused == 2

    proxy.set_offline(False)

    with connect(proxy) as conn:
        assert round_trip(conn, b"back") == b"back"
    assert proxy.stats.cuts == 1


def test_cut_after_resets_the_connection_after_about_n_bytes_up_once(
    sink_server: Server, proxy_to: Callable[[Server], FaultProxy]
) -> None:
    proxy = proxy_to(sink_server)
    proxy.cut_after(300 * KiB, "up")

    with connect(proxy) as conn:
        assert_reset(conn, Sender(conn, os.urandom(4 * MiB)))
    received, end = wait_until(lambda: sink_server.results, timeout=TIMEOUT)[0]

    assert 280 * KiB <= received <= 300 * KiB
    assert end == "reset"
    with connect(proxy) as conn:
        conn.sendall(os.urandom(MiB))  # one-shot: the next connection carries more than N
    wait_until(lambda: len(sink_server.results) == 2, timeout=TIMEOUT)
    assert sink_server.results[1] == (MiB, "closed")
    assert proxy.stats.cuts == 1


def test_cut_after_down_resets_the_client_after_about_n_bytes(
    proxy_to: Callable[[Server], FaultProxy],
) -> None:
    with Server(source) as server:
        proxy = proxy_to(server)
        proxy.cut_after(200 * KiB, "down")
        received = 0
        with connect(proxy) as conn, pytest.raises(ConnectionResetError):
            while data := conn.recv(64 * KiB):
                received += len(data)
        server.shutdown()

    assert 180 * KiB <= received <= 200 * KiB


def test_stalled_holds_traffic_then_delivers_what_was_buffered(
    echo_server: Server, proxy_to: Callable[[Server], FaultProxy]
) -> None:
    proxy = proxy_to(echo_server)
    proxy.set_stalled(True)
    with connect(proxy) as conn:
        conn.sendall(b"ping")
        conn.settimeout(0.5)  # a bounded look for something that must not happen
        with pytest.raises(TimeoutError):
            conn.recv(16)
        assert proxy.stats.bytes_up == 0

        proxy.set_stalled(False)

        conn.settimeout(TIMEOUT)
        assert recv_exactly(conn, 4) == b"ping"


def test_bandwidth_is_shared_by_all_connections_and_roughly_respected(
    sink_server: Server, proxy_to: Callable[[Server], FaultProxy]
) -> None:
    proxy = proxy_to(sink_server)
    rate = 512 * KiB
    proxy.set_bandwidth(rate)
    each = 256 * KiB

    started = time.monotonic()
    with connect(proxy) as first, connect(proxy) as second:
        for conn in (first, second):
            Sender(conn, os.urandom(each))
        wait_until(lambda: proxy.stats.bytes_up == 2 * each, timeout=4, interval=0.01)
        elapsed = time.monotonic() - started

    expected = 2 * each / rate
    assert 0.6 * expected <= elapsed <= 1.4 * expected, f"{elapsed:.2f} s, expected {expected} s"


def test_latency_delays_each_chunk_without_serializing_a_stream(
    echo_server: Server, proxy_to: Callable[[Server], FaultProxy]
) -> None:
    proxy = proxy_to(echo_server)
    proxy.set_latency(0.1)
    with connect(proxy) as conn:
        started = time.monotonic()
        assert round_trip(conn, b"ping") == b"ping"
        rtt = time.monotonic() - started

        payload = os.urandom(16 * MiB)  # 64 reads of 256 KiB each way
        started = time.monotonic()
        Sender(conn, payload)
        assert recv_exactly(conn, len(payload)) == payload
        bulk = time.monotonic() - started

    assert 0.2 <= rtt < 0.5
    # Serialized chunk by chunk it would take 64 x 0.2 s.
    assert bulk < 3.0, f"{bulk:.2f} s for 16 MiB at 100 ms latency"


def test_unshaped_throughput_is_far_above_any_phone(
    sink_server: Server, proxy_to: Callable[[Server], FaultProxy]
) -> None:
    proxy = proxy_to(sink_server)
    size = 256 * MiB
    block = os.urandom(MiB)

    with connect(proxy) as conn:
        started = time.monotonic()
        for _ in range(size // MiB):
            conn.sendall(block)
        conn.shutdown(socket.SHUT_WR)
        wait_until(lambda: sink_server.results, timeout=30, interval=0.01)
        elapsed = time.monotonic() - started

    assert sink_server.results == [(size, "closed")]
    rate = size / MiB / elapsed
    # Loose: only a pathology (per-byte work, tiny reads) falls this low.
    print(f"unshaped: {rate:.0f} MiB/s")
    assert rate >= 50, f"{rate:.0f} MiB/s"


# --- bookkeeping ----------------------------------------------------------------------------
def test_every_fault_change_is_logged_and_recorded(
    echo_server: Server, proxy_to: Callable[[Server], FaultProxy], caplog: pytest.LogCaptureFixture
) -> None:
    proxy = proxy_to(echo_server)
    caplog.set_level(logging.INFO, logger="fieldsync.faultproxy")
    caplog.clear()

    proxy.profile("weak")
    proxy.set_offline(True)
    proxy.set_offline(False)
    proxy.set_stalled(True)
    proxy.set_stalled(False)
    proxy.cut_after(10, "down")
    proxy.cut()
    proxy.profile("wifi")

    descriptions = [description for _, description in proxy.events]
    assert len(descriptions) == 8
    assert descriptions[0] == "profile weak: bandwidth 64 KiB/s, latency 300 ms"
    assert [record.getMessage() for record in caplog.records] == [
        f"test: {description}" for description in descriptions
    ]
    times = [at for at, _ in proxy.events]
    assert times == sorted(times)
    with pytest.raises(ValueError, match="unknown profile"):
        proxy.profile("satellite")
