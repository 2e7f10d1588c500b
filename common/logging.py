"""Structured logging: every state change is one JSON line with its facts as fields.

Every line also carries the ``request_id`` of the HTTP request (or of the request that rang
the task) and the ``device_id`` of the phone being served, when they are known, so support
can follow one phone's op from its push through the worker's apply (docs/observability.md).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from django.core.signals import request_finished

if TYPE_CHECKING:  # imported lazily: settings import this module (LOGGING's filter)
    from django.http import HttpRequest, HttpResponse

_logger = logging.getLogger("fieldsync")

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_device_id: ContextVar[str | None] = ContextVar("device_id", default=None)
_CONTEXT = {"request_id": _request_id, "device_id": _device_id}
# What a proxy or a phone may send us as a request id: short and safe to log and grep.
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def log_event(event: str, **fields: Any) -> None:
    """Log one state change; ``event`` is a stable dotted name such as ``op.applied``."""
    _logger.info(event, extra={"event": event, **fields})


def log_warning(event: str, **fields: Any) -> None:
    _logger.warning(event, extra={"event": event, **fields})


def log_error(event: str, **fields: Any) -> None:
    _logger.error(event, extra={"event": event, **fields})


def current_request_id() -> str | None:
    return _request_id.get()


def bind_device(device_id: object) -> None:
    """Name the device being served in every log line from here to the end of the request
    (or task)."""
    _device_id.set(str(device_id))


def bind(request_id: str | None, device_id: str | None) -> None:
    """Set the log context: a task's (the request that rang it, and its device when it has
    one), or none (``bind(None, None)``) once it is done."""
    _request_id.set(request_id)
    _device_id.set(device_id)


def _forget_request(**kwargs: Any) -> None:
    # gthread runs request after request on a thread: no id may outlive its request.
    bind(None, None)


# Sent once the server has closed the response (a streamed body sent, Django's own log line
# for a 5xx answer written), which is later than the middleware could clear it.
request_finished.connect(_forget_request, dispatch_uid="common.logging.forget_request")


class ContextFilter(logging.Filter):
    """Adds the current request and device ids to every record (configured on the handler
    in LOGGING, so Django's and Celery's own records get them too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT.items():
            value = var.get()
            if value is not None and not hasattr(record, name):
                setattr(record, name, value)
        return True


class RequestIdMiddleware:
    """Gives each request an id (the caller's ``X-Request-ID`` when it is sane, so a proxy's
    id carries through) and answers with it, so a phone's bug report can name it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        sent = str(request.headers.get("X-Request-ID") or "")
        request_id = sent if _SANE_ID.fullmatch(sent) else uuid.uuid4().hex
        bind(request_id, None)
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response
