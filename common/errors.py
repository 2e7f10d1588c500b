"""The one place where errors become HTTP responses: a domain's refusal (a ``DomainError``
subclass, whose ``refusal`` kind decides the status) and DRF's own errors all answer
``{"code": "<snake_case>", "detail": "<human text>"}`` (contract)."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from common.exceptions import DomainError, Refusal

HTTP_STATUS: dict[Refusal, int] = {
    Refusal.INVALID: 400,
    Refusal.NOT_AUTHENTICATED: 401,
    Refusal.FORBIDDEN: 403,
    Refusal.NOT_FOUND: 404,
    Refusal.METHOD_NOT_ALLOWED: 405,
    Refusal.TIMEOUT: 408,
    Refusal.CONFLICT: 409,
    Refusal.GONE: 410,
    Refusal.PRECONDITION_FAILED: 412,
    Refusal.TOO_LARGE: 413,
    Refusal.UNSUPPORTED_MEDIA_TYPE: 415,
    Refusal.LOCKED: 423,
    Refusal.THROTTLED: 429,
    # tus' checksum extension: "460 Checksum Mismatch".
    Refusal.CHECKSUM_MISMATCH: 460,
    Refusal.UNAVAILABLE: 503,
}


def http_status(exc: DomainError) -> int:
    return HTTP_STATUS[exc.refusal]


_DRF_CODES: dict[type[Exception], str] = {
    drf_exceptions.NotAuthenticated: "not_authenticated",
    drf_exceptions.AuthenticationFailed: "authentication_failed",
    drf_exceptions.PermissionDenied: "permission_denied",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.NotAcceptable: "not_acceptable",
    drf_exceptions.UnsupportedMediaType: "unsupported_media_type",
    drf_exceptions.ParseError: "malformed_json",
    drf_exceptions.Throttled: "throttled",
    drf_exceptions.ValidationError: "invalid_request",
}


def _flatten(detail: Any) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_flatten(value)}" for key, value in detail.items())
    if isinstance(detail, list):
        return "; ".join(_flatten(item) for item in detail)
    return str(detail)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF exception handler: DomainError and DRF's own errors become {code, detail}."""
    if isinstance(exc, DomainError):
        return Response(
            {"code": exc.code, "detail": exc.detail}, status=http_status(exc), headers=exc.headers
        )
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    response = exception_handler(exc, context)
    if response is None or not isinstance(exc, drf_exceptions.APIException):
        return response
    code = next((c for t, c in _DRF_CODES.items() if isinstance(exc, t)), "error")
    response.data = {"code": code, "detail": _flatten(exc.detail)}
    if isinstance(exc, drf_exceptions.NotAuthenticated | drf_exceptions.AuthenticationFailed):
        response.status_code = 401
    return response


# Django's own error pages, for whatever reaches them (an unknown path, a request Django
# refuses before any view, an exception no view caught), in the same {code, detail} shape.
def bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _json_error("bad_request", "the request could not be read", 400)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _json_error("permission_denied", "you may not do this", 403)


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return _json_error("not_found", "no such path", 404)


def server_error(request: HttpRequest) -> JsonResponse:
    return _json_error("internal_error", "the server failed; the error is logged", 500)


def _json_error(code: str, detail: str, status: int) -> JsonResponse:
    return JsonResponse({"code": code, "detail": detail}, status=status)
