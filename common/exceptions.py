"""The one exception type for every client-facing rejection (mapped to HTTP in
``common.errors``). Every error body is ``{"code": "<snake_case>", "detail": "<text>"}``."""

from __future__ import annotations

import uuid


class DomainError(Exception):
    """A refusal a client can cause; ``status`` is the HTTP status when it ends a request."""

    def __init__(self, code: str, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status


def uuid_or_404(value: str, what: str) -> uuid.UUID:
    """A path id that is not a UUID names nothing: the same 404 as an unknown one."""
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise DomainError("not_found", f"no such {what}", status=404) from exc
