"""Reading request bodies under a deadline, and draining what a refused request left unread.

Every body read has an overall deadline (a grace period plus the time the body needs at a
minimum rate), not only a timeout per read: a client sending a byte every few seconds would
otherwise hold a worker thread for as long as it likes. A refused request's body is read
and dropped (within a small budget) before the answer goes out: a client that sends its
whole body before reading the answer (most do) otherwise meets a reset connection when the
server closes on unread bytes, and never sees the 413 or 401 that would tell it what to do.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any

from django.conf import settings
from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponse

# Set on a request whose view handled its body itself (tus): nothing is left for us to do.
BODY_HANDLED = "fieldsync.body_handled"
_CHUNK = 64 * 1024


class BodyTimeout(BadRequest):
    """The body did not arrive by its deadline."""


class Deadline:
    """An absolute deadline for reading one body, applied to the server's socket (when the
    server gives it to us: gunicorn does) before each read."""

    def __init__(self, seconds: float, sock: socket.socket | None) -> None:
        self.end = time.monotonic() + seconds
        self.sock = sock
        self._prior: float | None = sock.gettimeout() if sock is not None else None

    @classmethod
    def for_body(cls, environ: dict[str, Any], length: int) -> Deadline:
        seconds = settings.BODY_GRACE_SECONDS + length / settings.BODY_MIN_BYTES_PER_SECOND
        return cls(seconds, _socket(environ))

    def arm(self, per_read: float | None = None) -> None:
        """Bound the next read by what is left (and by ``per_read``); past it, BodyTimeout."""
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise BodyTimeout("the request body did not arrive in time")
        if self.sock is not None:
            self.sock.settimeout(remaining if per_read is None else min(remaining, per_read))

    def disarm(self) -> None:
        if self.sock is not None:
            with suppress(OSError):  # the connection is gone already
                self.sock.settimeout(self._prior)


def _socket(environ: dict[str, Any]) -> socket.socket | None:
    sock = environ.get("gunicorn.socket")
    return sock if isinstance(sock, socket.socket) else None


class BoundedStream:
    """Django's request stream (a ``LimitedStream``), read under a ``Deadline``; knows how
    much of the body is still unread."""

    def __init__(self, inner: Any, length: int, deadline: Deadline) -> None:
        self._inner = inner
        self.unread = length
        self.deadline = deadline

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes (all that is left without one), as ``LimitedStream`` gives
        them, in pieces so that each waits at most until the deadline."""
        wanted = self.unread if size is None or size < 0 else min(size, self.unread)
        pieces: list[bytes] = []
        while wanted > 0:
            data = self._take(partial(self._inner.read, min(wanted, _CHUNK)))
            if not data:
                break
            pieces.append(data)
            wanted -= len(data)
        return b"".join(pieces)

    def close(self) -> None:
        self._inner.close()

    def readline(self, size: int = -1, /) -> bytes:
        return self._take(lambda: self._inner.readline(size))

    def _take(self, read: Callable[[], bytes]) -> bytes:
        if self.unread <= 0:
            return b""
        self.deadline.arm()
        try:
            data = read()
        except TimeoutError as exc:
            raise BodyTimeout("the request body did not arrive in time") from exc
        self.unread -= len(data)
        if not data:
            self.unread = 0  # the client closed early: nothing more will come
        return data

    def drain(self, max_bytes: int, seconds: float) -> bool:
        """Read and drop what is left, within a budget; whether it all arrived."""
        if self.unread > max_bytes:
            return False
        self.deadline = Deadline(seconds, self.deadline.sock)
        try:
            while self.read(_CHUNK):
                pass
        except (BodyTimeout, OSError):
            return False
        return self.unread <= 0


class BodyDeadlineMiddleware:
    """Puts every request body under a deadline, and drains what a view left unread."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        declared = str(request.META.get("CONTENT_LENGTH") or "")
        length = int(declared) if declared.isascii() and declared.isdigit() else 0
        if not length:
            return self.get_response(request)
        # Django reads the body through this private stream (``HttpRequest.read``).
        deadline = Deadline.for_body(request.META, length)
        stream = BoundedStream(request._stream, length, deadline)
        request._stream = stream  # type: ignore[assignment]
        try:
            response = self.get_response(request)
            if stream.unread > 0 and not request.META.get(BODY_HANDLED):
                stream.drain(settings.REFUSED_BODY_DRAIN_BYTES, settings.REFUSED_BODY_DRAIN_SECONDS)
        finally:
            stream.deadline.disarm()
        return response
