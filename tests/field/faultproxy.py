"""A TCP proxy between one phone and the server that breaks the network on demand.

The proxy's asyncio loop runs in a daemon thread, so synchronous test code drives it: every
control method hops onto the loop, takes effect at once (on open connections too) and returns
when it has. Each fault change is logged and kept in `events`, for the field-day report.

Each direction of a connection is two stages joined by a bounded queue: one reads and stamps
each chunk with its due time, the other waits for that time, the stall and the bandwidth, then
writes. So latency delays every chunk without serializing them, order is kept, and a slow
receiver pushes back on the sender as a real network's buffers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, TypeVar

log = logging.getLogger("fieldsync.faultproxy")

T = TypeVar("T")

READ_SIZE = 256 * 1024
# Chunks in flight per direction of a connection: enough to keep a link busy through its
# latency (0.64 s of a shaped link, 8 MiB unshaped), few enough that a slow receiver soon
# pushes back on the sender.
QUEUE_CHUNKS = 32
# A shaped direction moves in pieces worth this many seconds, so a slow link trickles as a real
# one does instead of delivering a burst every few seconds.
SHAPING_QUANTUM = 0.02
MIN_PIECE = 1024
CONTROL_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
FLUSH_TIMEOUT = 1.0
DIRECTIONS = ("up", "down")
# name: (bytes per second or None, one-way latency in seconds)
PROFILES: dict[str, tuple[float | None, float]] = {
    "wifi": (None, 0.002),
    "cellular": (1.5e6, 0.06),
    "weak": (64 * 1024, 0.3),
}


@dataclass
class ProxyStats:
    connections: int = 0  # accepted and forwarded
    open: int = 0
    bytes_up: int = 0  # client → server, as forwarded
    bytes_down: int = 0
    cuts: int = 0  # connections reset by a fault (cut, offline, cut_after)
    refused: int = 0  # connections reset on arrival while offline
    upstream_failures: int = 0  # the server could not be reached; the client was reset


class _Bucket:
    """A token bucket for one direction, shared by every connection; rate None is unlimited."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self._tokens = 0.0
        self._stamp = 0.0

    def set_rate(self, rate: float | None, now: float) -> None:
        self.rate = rate
        self._tokens = 0.0
        self._stamp = now

    def piece(self) -> int:
        if self.rate is None:
            return READ_SIZE
        return int(min(READ_SIZE, max(MIN_PIECE, self.rate * SHAPING_QUANTUM)))

    def reserve(self, nbytes: int, now: float) -> float:
        """Take `nbytes` now; the seconds the caller must wait before sending them.

        Reserving (going into debt) rather than waiting for tokens queues concurrent senders
        in arrival order, with one sleep each.
        """
        if self.rate is None:
            return 0.0
        self._tokens = min(float(self.piece()), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= nbytes
        return max(0.0, -self._tokens / self.rate)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST, not FIN: what a peer sees when the path to it breaks."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _kernel_sent(writer: asyncio.StreamWriter) -> None:
    """Wait (bounded: the peer may not be reading) until the socket's send queue is empty."""
    sock = writer.get_extra_info("socket")
    outq = getattr(termios, "TIOCOUTQ", None)  # Linux; elsewhere the cut is less exact
    if sock is None or outq is None:
        return
    deadline = asyncio.get_running_loop().time() + FLUSH_TIMEOUT
    with contextlib.suppress(OSError):
        while struct.unpack("i", fcntl.ioctl(sock.fileno(), outq, b"\0" * 4))[0] > 0:
            if asyncio.get_running_loop().time() >= deadline:
                return
            await asyncio.sleep(0.002)


class _Link:
    """One client connection and, once connected, its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter, task: asyncio.Task[None]) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task = task
        self.aborted = False

    def abort(self) -> None:
        if self.aborted:
            return
        self.aborted = True
        _reset(self.client)
        if self.upstream is not None:
            _reset(self.upstream)
        self.task.cancel()


class FaultProxy:
    """Forwards 127.0.0.1:`port` to `upstream`, with faults switched on and off by the caller."""

    def __init__(self, upstream: tuple[str, int], name: str = "proxy") -> None:
        self.upstream = upstream
        self.name = name
        self.port = 0
        self.events: list[tuple[float, str]] = []
        self._stats = ProxyStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._offline = False
        self._latency = 0.0
        self._buckets = {direction: _Bucket() for direction in DIRECTIONS}
        self._budgets: dict[str, int | None] = dict.fromkeys(DIRECTIONS)
        self._flowing: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stats(self) -> ProxyStats:
        return replace(self._stats, open=len(self._links))

    # --- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"faultproxy-{self.name}", daemon=True
        )
        self._thread.start()
        self._server = self._call_async(self._listen())
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("%s: listening on %s, forwarding to %s:%s", self.name, self.url, *self.upstream)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._call_async(self._shutdown())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CONTROL_TIMEOUT)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    # --- faults ---------------------------------------------------------------------------
    def cut(self) -> int:
        """Reset every open connection now; how many there were."""
        return self._call(lambda: self._cut_all("cut"))

    def set_offline(self, offline: bool) -> None:
        """Airplane mode: open connections are reset, and new ones reset on arrival."""

        def apply() -> None:
            self._offline = offline
            if offline:
                self._cut_all("offline")
            else:
                self._record("online")

        self._call(apply)

    def set_stalled(self, stalled: bool) -> None:
        """A black hole: connections are accepted but nothing moves until un-stalled."""

        def apply() -> None:
            flowing = self._flowing_event()
            if stalled:
                flowing.clear()
            else:
                flowing.set()
            self._record("stalled" if stalled else "unstalled")

        self._call(apply)

    def cut_after(self, nbytes: int, direction: str = "up") -> None:
        """Arm a one-shot cut: after `nbytes` more are forwarded in `direction` (counted over
        all connections), the connection that carried the last of them is reset."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")

        def apply() -> None:
            self._budgets[direction] = nbytes
            self._record(f"cut_after {nbytes} bytes {direction} armed")

        self._call(apply)

    def set_bandwidth(self, bytes_per_second: float | None) -> None:
        """Limit each direction to `bytes_per_second` over all connections; None lifts it."""
        self._call(lambda: self._shape(bytes_per_second, self._latency))

    def set_latency(self, seconds: float) -> None:
        """Delay every forwarded chunk by `seconds`, each way."""
        self._call(lambda: self._shape(self._buckets["up"].rate, seconds))

    def profile(self, name: str) -> None:
        """A preset network: "wifi", "cellular" or "weak"."""
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
        bandwidth, latency = PROFILES[name]
        self._call(lambda: self._shape(bandwidth, latency, f"profile {name}: "))

    # --- inside the loop ------------------------------------------------------------------
    def _call(self, function: Callable[[], T]) -> T:
        async def run() -> T:
            return function()

        return self._call_async(run())

    def _call_async(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            raise RuntimeError(f"{self.name} is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(CONTROL_TIMEOUT)

    def _record(self, description: str) -> None:
        self.events.append((time.monotonic(), description))
        log.info("%s: %s", self.name, description)

    def _flowing_event(self) -> asyncio.Event:
        # Made on first use inside the loop: an asyncio.Event belongs to the loop it is used in.
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        return self._flowing

    def _cut_all(self, reason: str) -> int:
        links = [link for link in self._links if not link.aborted]
        for link in links:
            link.abort()
        self._stats.cuts += len(links)
        self._record(f"{reason}: reset {len(links)} open connection(s)")
        return len(links)

    def _shape(self, bandwidth: float | None, latency: float, label: str = "") -> None:
        now = asyncio.get_running_loop().time()
        for bucket in self._buckets.values():
            bucket.set_rate(bandwidth, now)
        self._latency = latency
        shown = "unlimited" if bandwidth is None else f"{bandwidth / 1024:.0f} KiB/s"
        self._record(f"{label}bandwidth {shown}, latency {latency * 1000:.0f} ms")

    async def _listen(self) -> asyncio.Server:
        self._flowing_event()
        return await asyncio.start_server(self._accept, "127.0.0.1", 0, limit=READ_SIZE)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback starting our own task: a coroutine callback's task is asyncio's,
        # and cancelling it (a cut) makes 3.11 log a spurious error.
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        if self._offline:
            _reset(client)
            self._stats.refused += 1
            return
        task = asyncio.current_task()
        assert task is not None
        link = _Link(client, task)
        self._links.add(link)
        try:
            await self._forward(link, client_reader)
        except asyncio.CancelledError:
            if not link.aborted:
                raise
        finally:
            self._links.discard(link)
            for writer in (link.client, link.upstream):
                if writer is not None:
                    writer.close()

    async def _forward(self, link: _Link, client_reader: asyncio.StreamReader) -> None:
        try:
            upstream_reader, upstream = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream, limit=READ_SIZE), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as error:
            log.debug("%s: upstream unreachable: %s", self.name, error)
            self._stats.upstream_failures += 1
            link.abort()
            return
        link.upstream = upstream
        self._stats.connections += 1
        queues: dict[str, asyncio.Queue[tuple[float, bytes]]] = {
            direction: asyncio.Queue(QUEUE_CHUNKS) for direction in DIRECTIONS
        }
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._receive("up", client_reader, queues["up"]))
                group.create_task(self._send(link, "up", upstream, queues["up"]))
                group.create_task(self._receive("down", upstream_reader, queues["down"]))
                group.create_task(self._send(link, "down", link.client, queues["down"]))
        except* OSError:
            # A reset on one side becomes a reset on the other, as it would end to end.
            link.abort()

    async def _receive(
        self,
        direction: str,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[float, bytes]],
    ) -> None:
        loop = asyncio.get_running_loop()
        bucket = self._buckets[direction]
        while True:
            data = await reader.read(bucket.piece())
            await queue.put((loop.time() + self._latency, data))
            if not data:
                return

    async def _send(
        self,
        link: _Link,
        direction: str,
        writer: asyncio.StreamWriter,
        queue: asyncio.Queue[tuple[float, bytes]],
    ) -> None:
        loop = asyncio.get_running_loop()
        bucket = self._buckets[direction]
        flowing = self._flowing_event()
        while True:
            due, data = await queue.get()
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)
            view = memoryview(data)
            while view:
                await flowing.wait()
                size = bucket.piece()
                piece, view = view[:size], view[size:]
                if (wait := bucket.reserve(len(piece), loop.time())) > 0:
                    await asyncio.sleep(wait)
                if await self._write(link, direction, writer, piece):
                    return

    async def _write(
        self, link: _Link, direction: str, writer: asyncio.StreamWriter, piece: memoryview
    ) -> bool:
        """Forward `piece`, or the part an armed cut_after allows; True if that cut fired."""
        budget = self._budgets[direction]
        fires = budget is not None and len(piece) >= budget
        if budget is not None:
            self._budgets[direction] = None if fires else budget - len(piece)
            piece = piece[:budget]
        writer.write(piece)
        if direction == "up":
            self._stats.bytes_up += len(piece)
        else:
            self._stats.bytes_down += len(piece)
        if not fires:
            await writer.drain()
            return False
        # The last bytes must reach the peer before the reset, which discards what is unsent.
        writer.transport.set_write_buffer_limits(high=0)
        await writer.drain()
        await _kernel_sent(writer)
        self._stats.cuts += 1
        self._record(f"cut_after fired: reset a connection after {budget} bytes {direction}")
        link.abort()
        return True

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
