"""The account domain's refusals (mapped to HTTP once, in ``common.errors``)."""

from __future__ import annotations

from common.exceptions import DomainError, Refusal

__all__ = ["AccountError", "Refusal"]


class AccountError(DomainError):
    """A account refusal a client can cause; ``refusal`` says which kind."""
