"""The sync domain's refusals (mapped to HTTP once, in ``common.errors``)."""

from __future__ import annotations

from common.exceptions import DomainError, Refusal

__all__ = ["Refusal", "SyncError"]


class SyncError(DomainError):
    """A sync refusal a client can cause; ``refusal`` says which kind."""
