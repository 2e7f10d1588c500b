"""The media domain's refusals: an ``UploadError`` may carry protocol headers (tus answers a
409 with the true ``Upload-Offset``, a 412 with ``Tus-Version``)."""

from __future__ import annotations

from common.exceptions import DomainError, Refusal

__all__ = ["BodyInterrupted", "Refusal", "UploadError"]


class UploadError(DomainError):
    """An upload refusal; tus' protocol headers ride on it (``DomainError.headers``)."""


class BodyInterrupted(Exception):
    """The client stopped sending before the end of the request body."""
