"""Refusals a client can cause. Each domain raises its own subclass of ``DomainError``
(``AccountError``, ``SyncError``, ``ConflictError``, ``UploadError``) and says what kind of
refusal it is; ``common.errors`` alone turns the kind into an HTTP status. Every error body
is ``{"code": "<snake_case>", "detail": "<text>"}``."""

from __future__ import annotations

import uuid
from enum import StrEnum


class Refusal(StrEnum):
    """What kind of refusal an error is, in the domain's words (not HTTP's)."""

    INVALID = "invalid"  # the request itself is wrong
    NOT_AUTHENTICATED = "not_authenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"  # also: exists, but out of the caller's scope
    METHOD_NOT_ALLOWED = "method_not_allowed"
    TIMEOUT = "timeout"  # the request did not arrive in time
    CONFLICT = "conflict"  # with the current state (already resolved, offset moved on)
    GONE = "gone"  # existed, never will again (expired cursor or upload)
    PRECONDITION_FAILED = "precondition_failed"  # a protocol version we do not speak
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    LOCKED = "locked"  # someone else is working on it right now; retry
    THROTTLED = "throttled"  # too many, too fast; retry after the time it names
    CHECKSUM_MISMATCH = "checksum_mismatch"
    UNAVAILABLE = "unavailable"  # a service behind us is down; retry


class DomainError(Exception):
    """A refusal a client can cause; ``refusal`` says which kind, ``headers`` what the
    answer must carry besides the body (``Retry-After``, tus' ``Upload-Offset``)."""

    def __init__(
        self,
        code: str,
        detail: str,
        refusal: Refusal = Refusal.INVALID,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.refusal = refusal
        self.headers = headers or {}


def throttled(what: str, retry_after: int) -> DomainError:
    return DomainError(
        "throttled",
        f"{what}; retry in {retry_after} s",
        Refusal.THROTTLED,
        {"Retry-After": str(retry_after)},
    )


def uuid_or_404(value: str, what: str) -> uuid.UUID:
    """A path id that is not a UUID names nothing: the same 404 as an unknown one."""
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise DomainError("not_found", f"no such {what}", Refusal.NOT_FOUND) from exc
