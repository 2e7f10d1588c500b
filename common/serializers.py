"""Serializer fields shared by the apps' wire shapes."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers


class BlankAsNullCharField(serializers.CharField):
    """A text column that stores "" for none, shown as null on the wire."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_null=True, **kwargs)

    # The wire's null is the column's "": a narrower promise than CharField's str.
    def to_representation(self, value: Any) -> str | None:  # type: ignore[override]
        return str(value) if value else None


class ErrorSerializer(serializers.Serializer[Any]):
    """Every refusal's body (contract)."""

    code = serializers.CharField(help_text="stable snake_case code, e.g. not_found")
    detail = serializers.CharField(help_text="what went wrong, for a person")


# A response header of every 429 (list it in the endpoint's ``parameters``).
RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    OpenApiTypes.INT,
    location=OpenApiParameter.HEADER,
    response=[429],
    description="seconds to wait before trying again, unchanged",
)
_MEANINGS = {
    400: "the request is malformed or a value is invalid",
    401: "no token, or a wrong or revoked one",
    403: "not allowed (another user's device, a deactivated device, a decision that is not "
    "the caller's)",
    404: "no such thing in the caller's scope (existence never leaks)",
    408: "the request body did not arrive in time",
    409: "conflicts with the current state",
    410: "gone for good",
    413: "too large",
    415: "unsupported content type",
    429: "throttled: retry after Retry-After seconds",
}


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """The refusals an endpoint may answer, each with its ``{code, detail}`` body."""
    return {
        status: OpenApiResponse(ErrorSerializer, description=_MEANINGS[status])
        for status in statuses
    }
