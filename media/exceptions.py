"""The media domain's refusals: a ``DomainError`` that may carry protocol headers (tus
answers a 409 with the true ``Upload-Offset``, a 412 with ``Tus-Version``)."""

from __future__ import annotations

from common.exceptions import DomainError


class UploadError(DomainError):
    def __init__(
        self, code: str, detail: str, status: int = 400, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(code, detail, status)
        self.headers = headers or {}


class BodyInterrupted(Exception):
    """The client stopped sending before the end of the request body."""
