"""A database outage, or a process whose connections are all busy, answers 503 with a
`Retry-After`, never a 500.

Postgres restarting or failing over is something a phone can meet at any time and must
retry, not report as a server bug. Django raises `OperationalError`/`InterfaceError` from
whichever query first meets the dead connection; DRF's handler does not know them, so they
reach this middleware. The same for a request that waited DB_POOL_TIMEOUT for one of its
process's pooled connections in vain (psycopg_pool's `PoolTimeout` is an `OperationalError`):
the server is overloaded, and the phone should come back a little later. Nothing was
committed by the request that failed, so a retry is safe.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from psycopg_pool import PoolTimeout

from common.logging import log_warning

RETRY_AFTER_SECONDS = 5


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        busy = isinstance(exception.__cause__, PoolTimeout)
        log_warning(
            "db.busy" if busy else "db.unavailable", path=request.path, error=str(exception)[:200]
        )
        detail = (
            "no database connection came free in time; retry in a few seconds"
            if busy
            else "the database is not answering; retry in a few seconds"
        )
        response = JsonResponse({"code": "service_unavailable", "detail": detail}, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
