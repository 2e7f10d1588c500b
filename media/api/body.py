"""Reading a tus request's body into the service's buffer, under gunicorn straight from the
socket, and draining what a refused request left unread."""

from __future__ import annotations

import io
import socket
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from django.conf import settings
from django.http import HttpRequest

from common.body import BODY_HANDLED, Deadline
from common.db import release_connection
from media.exceptions import BodyInterrupted

# Each read of a PATCH body asks for this much; pieces are joined into parts by the service.
_PIECE = 1024 * 1024


class RequestBody:
    """A request body, read into the service's buffer (``BodySource``), at most once.

    gunicorn drains at most 64 KiB of a body a request left unread, then closes the
    connection: a client still sending meets a reset instead of the answer. So a refused
    request drains its body within the refusals' budget (``common.body``); a phone sends
    the whole chunk before it reads the answer anyway.
    """

    def __init__(
        self,
        readinto: Callable[[memoryview], int],
        expected: int | None,
        deadline: Deadline,
        direct: SocketBody | None = None,
    ) -> None:
        self._readinto = readinto
        self.expected = expected  # None: chunked, ends when the stream does
        self.deadline = deadline
        self.received = 0
        self.direct = direct
        self.broken = False  # the client stopped sending: nothing more will come

    @classmethod
    def of(cls, request: HttpRequest) -> RequestBody:
        # The view reads (or drains) this body itself; the middleware leaves it alone.
        request.META[BODY_HANDLED] = True
        declared = request.META.get("CONTENT_LENGTH") or ""
        if declared.isascii() and declared.isdigit():  # the server refused malformed ones
            deadline = Deadline.for_body(request.META, int(declared))
            direct = SocketBody.of(request.META)
            if direct is not None:
                return cls(direct.readinto, int(declared), deadline, direct)
            return cls(_copying_into(request.read), int(declared), deadline)
        if "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
            # Django reads at most CONTENT_LENGTH bytes (none here): read the server's
            # de-chunked stream itself. The service bounds it by the bytes still missing,
            # the deadline by the largest upload there may be.
            largest = max(settings.UPLOADS_MAX_SIZE.values())
            deadline = Deadline.for_body(request.META, largest)
            return cls(_copying_into(request.META["wsgi.input"].read), None, deadline)
        return cls.empty()

    @classmethod
    def empty(cls) -> RequestBody:
        return cls(lambda buffer: 0, 0, Deadline(0, None))

    def readinto(self, buffer: memoryview) -> int:
        if self.expected is not None:
            buffer = buffer[: max(0, self.expected - self.received)]
        if not len(buffer):
            return 0
        try:
            # A phone that vanished without closing its connection must not hold a thread
            # and its upload's lock for long: a timeout per read, and the body's deadline.
            self.deadline.arm(settings.UPLOADS_READ_TIMEOUT_SECONDS)
            received = self._readinto(buffer)
        except Exception as exc:  # each WSGI server has its own errors for a broken body
            self.broken = True
            raise BodyInterrupted(repr(exc)) from exc
        if not received and self.expected is not None:
            self.broken = True
            raise BodyInterrupted(f"body ended after {self.received} of {self.expected} bytes")
        self.received += received
        return received

    def drain(self) -> None:
        """Read and drop what a refused request left, within the refusals' budget (past it
        gunicorn closes the connection)."""
        left = None if self.expected is None else self.expected - self.received
        # Nothing left (every accepted PATCH): no scratch buffer, no connection release.
        if self.broken or left is None or not 0 < left <= settings.REFUSED_BODY_DRAIN_BYTES:
            return
        self.deadline = Deadline(settings.REFUSED_BODY_DRAIN_SECONDS, self.deadline.sock)
        release_connection()  # the refusal is decided: nothing here needs the database
        scratch = memoryview(bytearray(_PIECE))
        with suppress(BodyInterrupted):
            while self.readinto(scratch):
                pass

    def close(self) -> None:
        self.deadline.disarm()
        if self.direct is not None:
            self.direct.give_back()


def _copying_into(read: Callable[[int], bytes]) -> Callable[[memoryview], int]:
    def readinto(buffer: memoryview) -> int:
        data = read(min(len(buffer), _PIECE))
        buffer[: len(data)] = data
        return len(data)

    return readinto


class SocketBody:
    """A gunicorn request body of known length, read straight from the socket.

    gunicorn's reader layers copy every byte four or five times through BytesIO buffers,
    and on this hardware each copy of a GiB costs most of a CPU-second. Here ``recv_into``
    lands each byte once, in the service's part buffer; what gunicorn had already buffered
    is taken first, its byte count is kept exact and unread bytes are handed back, so the
    connection stays usable for the next request. Anything but gunicorn's plain
    Content-Length body takes the portable path.
    """

    def __init__(self, body: Any, sock: socket.socket) -> None:
        self.body = body
        self.reader = body.reader
        self.sock = sock
        self.held = b""
        self.taken = False

    @classmethod
    def of(cls, environ: dict[str, Any]) -> SocketBody | None:
        try:
            from gunicorn.http.body import Body, LengthReader  # type: ignore[import-untyped]
            from gunicorn.http.unreader import SocketUnreader  # type: ignore[import-untyped]
        except ImportError:
            return None
        body, sock = environ.get("wsgi.input"), environ.get("gunicorn.socket")
        if (
            isinstance(body, Body)
            and isinstance(body.reader, LengthReader)
            and isinstance(body.reader.unreader, SocketUnreader)
            and isinstance(sock, socket.socket)
        ):
            return cls(body, sock)
        return None

    def _take_over(self) -> None:
        """Take the body bytes gunicorn already holds (only when reading starts, so a
        request refused before reading leaves gunicorn's state untouched)."""
        self.taken = True
        held = self.body.buf.getvalue()  # already counted off the reader, not yet returned
        self.body.buf = io.BytesIO()
        ahead = self.reader.unreader.take_buffered()
        mine = ahead[: self.reader.length]
        self.reader.unreader.unread(ahead[len(mine) :])  # a pipelined next request
        self.reader.length -= len(mine)
        self.held = held + mine

    def give_back(self) -> None:
        if self.held:
            self.reader.unreader.unread(self.held)
            self.reader.length += len(self.held)
            self.held = b""

    def readinto(self, buffer: memoryview) -> int:
        if not self.taken:
            self._take_over()
        if self.held:
            count = min(len(buffer), len(self.held))
            buffer[:count] = self.held[:count]
            self.held = self.held[count:]
            return count
        want = min(len(buffer), self.reader.length)
        if want <= 0:
            return 0
        try:
            received = self.sock.recv_into(buffer, want)
        except Exception:
            self.body.failed = True  # where the next request starts is now unknown
            raise
        self.reader.length -= received
        return received
