"""The one exception type for every client-facing rejection (mapped to HTTP in
``common.errors``). Every error body is ``{"code": "<snake_case>", "detail": "<text>"}``."""

from __future__ import annotations


class DomainError(Exception):
    """A refusal a client can cause; ``status`` is the HTTP status when it ends a request."""

    def __init__(self, code: str, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status
