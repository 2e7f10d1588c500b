"""The conflict domain's refusals (mapped to HTTP once, in ``common.errors``)."""

from __future__ import annotations

from common.exceptions import DomainError, Refusal

__all__ = ["ConflictError", "Refusal"]


class ConflictError(DomainError):
    """A conflict refusal a client can cause; ``refusal`` says which kind."""
