"""tus 1.0.0 at ``/api/v1/uploads/`` and the attachment status endpoint.

The tus views are plain Django views: the byte path needs no DRF parsing or negotiation,
and protocol errors must carry tus headers. They still authenticate with the API token
class and answer every refusal as ``{"code", "detail"}``.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from datetime import timedelta

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.http import http_date
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import ApiTokenAuthentication
from accounts.models import User
from common.errors import http_status
from common.exceptions import DomainError, uuid_or_404
from common.logging import log_warning
from common.serializers import error_responses
from media.api.body import RequestBody
from media.api.serializers import AttachmentStatusSerializer
from media.exceptions import Refusal, UploadError
from media.models import Upload, UploadStatus
from media.selectors import attachment_status, upload_for_user, upload_gone
from media.services import Checksum, UploadMeta, upload_append, upload_create, upload_terminate

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,creation-with-upload,termination,expiration,checksum"
CHECKSUM_ALGORITHMS = ("sha1", "sha256")
OFFSET_OCTET_STREAM = "application/offset+octet-stream"
_METHODS = "POST, HEAD, PATCH, DELETE, OPTIONS"
_TUS_HEADERS = (
    "Upload-Offset, Upload-Length, Upload-Metadata, Upload-Expires, Upload-Checksum, "
    "Upload-Defer-Length, Upload-Concat, Tus-Resumable, Tus-Version, Tus-Extension, "
    "Tus-Max-Size, Tus-Checksum-Algorithm"
)
_ALLOWED_HEADERS = (
    f"Authorization, Content-Type, Origin, X-Requested-With, X-Request-ID, "
    f"X-HTTP-Method-Override, {_TUS_HEADERS}"
)
_EXPOSED_HEADERS = f"Location, {_TUS_HEADERS}"
_MAX_TEXT = {"filename": 255, "content_type": 255, "note": 10_000}
_NOTE_CONTROLS = "\t\n\r"
_REQUIRED_METADATA = ("attachment_id", "work_order_id", "filename", "content_type", "kind")


# ============================================================================================
# Dispatch
# ============================================================================================
@csrf_exempt  # token authentication, never cookies
def upload_collection(request: HttpRequest) -> HttpResponse:
    return _serve(request, None)


@csrf_exempt
def upload_resource(request: HttpRequest, upload_id: str) -> HttpResponse:
    return _serve(request, upload_id)


def _serve(request: HttpRequest, upload_id: str | None) -> HttpResponse:
    # Browsers and some proxies only let POST through: tus clients then send the real
    # method in this header.
    method = request.headers.get("X-HTTP-Method-Override", request.method or "").upper()
    body = RequestBody.of(request)
    try:
        response = _route(request, method, upload_id, body)
    except DomainError as exc:
        response = _error(exc, method)
    except (BotoCoreError, ClientError) as exc:
        log_warning("upload.storage_error", error=repr(exc))
        unavailable = UploadError(
            "storage_unavailable", "the object store did not answer; retry", Refusal.UNAVAILABLE
        )
        response = _error(unavailable, method)
        response["Retry-After"] = "5"
    finally:
        # A refusal, or a repeated POST answered without its body: read what is left.
        body.drain()
        body.close()
    response["Tus-Resumable"] = TUS_VERSION
    response["Cache-Control"] = "no-store"
    origin = request.headers.get("Origin")
    if origin:
        response["Access-Control-Allow-Origin"] = origin
        response["Access-Control-Expose-Headers"] = _EXPOSED_HEADERS
        response["Vary"] = "Origin"
    return response


def _route(
    request: HttpRequest, method: str, upload_id: str | None, body: RequestBody
) -> HttpResponse:
    if method == "OPTIONS":  # discovery and CORS preflight: no token, no Tus-Resumable
        return _options()
    if request.headers.get("Tus-Resumable") != TUS_VERSION:
        raise UploadError(
            "unsupported_tus_version",
            f"send Tus-Resumable: {TUS_VERSION}",
            Refusal.PRECONDITION_FAILED,
            {"Tus-Version": TUS_VERSION},
        )
    user = _authenticate(request)
    if upload_id is None:
        if method != "POST":
            raise UploadError(
                "method_not_allowed", f"{method} is not allowed here", Refusal.METHOD_NOT_ALLOWED
            )
        return _create(request, user, body)
    handlers: dict[str, Callable[[HttpRequest, User, uuid.UUID, RequestBody], HttpResponse]] = {
        "HEAD": _head,
        "PATCH": _patch,
        "DELETE": _delete,
    }
    handler = handlers.get(method)
    if handler is None:
        raise UploadError(
            "method_not_allowed", f"{method} is not allowed here", Refusal.METHOD_NOT_ALLOWED
        )
    try:
        parsed = uuid.UUID(upload_id)
    except ValueError as exc:
        raise UploadError("not_found", "no such upload", Refusal.NOT_FOUND) from exc
    return handler(request, user, parsed, body)


def _authenticate(request: HttpRequest) -> User:
    challenge = {"WWW-Authenticate": "Token"}
    try:
        found = ApiTokenAuthentication().authenticate(Request(request))
    except AuthenticationFailed as exc:
        raise UploadError(
            "authentication_failed", str(exc.detail), Refusal.NOT_AUTHENTICATED, challenge
        ) from exc
    if found is None:
        raise UploadError(
            "not_authenticated",
            "send Authorization: Token <token>",
            Refusal.NOT_AUTHENTICATED,
            challenge,
        )
    user, _ = found
    return user


def _error(exc: DomainError, method: str) -> HttpResponse:
    body = {"code": exc.code, "detail": exc.detail}
    response = (
        HttpResponse(status=http_status(exc))
        if method == "HEAD"
        else JsonResponse(body, status=http_status(exc))
    )
    for name, value in exc.headers.items():
        response[name] = value
    return response


# ============================================================================================
# Handlers
# ============================================================================================
def _options() -> HttpResponse:
    response = HttpResponse(status=204)
    response["Tus-Version"] = TUS_VERSION
    response["Tus-Extension"] = TUS_EXTENSIONS
    response["Tus-Max-Size"] = str(max(settings.UPLOADS_MAX_SIZE.values()))
    response["Tus-Checksum-Algorithm"] = ",".join(CHECKSUM_ALGORITHMS)
    response["Access-Control-Allow-Methods"] = _METHODS
    response["Access-Control-Allow-Headers"] = _ALLOWED_HEADERS
    response["Access-Control-Max-Age"] = "86400"
    return response


def _create(request: HttpRequest, user: User, body: RequestBody) -> HttpResponse:
    if "Upload-Defer-Length" in request.headers:
        raise UploadError("defer_length_unsupported", "send Upload-Length when creating")
    length = _header_int(request, "Upload-Length")
    upload = upload_create(user, _metadata(request), length)
    with_body = request.content_type == OFFSET_OCTET_STREAM
    # creation-with-upload: the first bytes ride on the POST. A repeated POST of an upload
    # that already holds bytes is answered with its offset; the client goes on from there.
    if upload.status == UploadStatus.UPLOADING and upload.offset == 0 and (with_body or not length):
        source, declared = (body, body.expected) if with_body else (RequestBody.empty(), 0)
        upload = upload_append(user, upload.pk, 0, source, declared, _checksum(request))
    response = HttpResponse(status=201)
    response["Location"] = request.build_absolute_uri(f"/api/v1/uploads/{upload.pk}")
    _progress_headers(response, upload)
    return response


def _head(
    request: HttpRequest, user: User, upload_id: uuid.UUID, body: RequestBody
) -> HttpResponse:
    upload = upload_for_user(user, upload_id)
    gone = upload_gone(upload)
    if gone is not None:
        raise gone
    response = HttpResponse(status=200)
    _progress_headers(response, upload)
    response["Upload-Length"] = str(upload.length)
    response["Upload-Metadata"] = _encode_metadata(upload)
    return response


def _patch(
    request: HttpRequest, user: User, upload_id: uuid.UUID, body: RequestBody
) -> HttpResponse:
    if request.content_type != OFFSET_OCTET_STREAM:
        raise UploadError(
            "invalid_content_type",
            f"a PATCH body must be {OFFSET_OCTET_STREAM}",
            Refusal.UNSUPPORTED_MEDIA_TYPE,
        )
    offset = _header_int(request, "Upload-Offset")
    checksum = _checksum(request)
    upload = upload_append(user, upload_id, offset, body, body.expected, checksum)
    response = HttpResponse(status=204)
    _progress_headers(response, upload)
    return response


def _delete(
    request: HttpRequest, user: User, upload_id: uuid.UUID, body: RequestBody
) -> HttpResponse:
    upload_terminate(user, upload_id)
    return HttpResponse(status=204)


def _progress_headers(response: HttpResponse, upload: Upload) -> None:
    response["Upload-Offset"] = str(upload.offset)
    if upload.status == UploadStatus.UPLOADING:
        expires = upload.last_activity_at + timedelta(seconds=settings.UPLOADS_EXPIRY_SECONDS)
        response["Upload-Expires"] = http_date(expires.timestamp())


# ============================================================================================
# Parsing the edge
# ============================================================================================
def _header_int(request: HttpRequest, name: str) -> int:
    raw = request.headers.get(name, "")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise UploadError(
            f"invalid_{name.lower().replace('-', '_')}", f"{name} must be a non-negative integer"
        )
    return int(raw)


def _metadata(request: HttpRequest) -> UploadMeta:
    values: dict[str, str] = {}
    for item in request.headers.get("Upload-Metadata", "").split(","):
        key, _, encoded = item.strip().partition(" ")
        if not key:
            continue
        try:
            values[key] = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise UploadError(
                "invalid_metadata", f"Upload-Metadata {key} is not base64 of UTF-8"
            ) from exc
    missing = [key for key in _REQUIRED_METADATA if not values.get(key)]
    if missing:
        raise UploadError("invalid_metadata", f"Upload-Metadata needs {', '.join(missing)}")
    for key, limit in _MAX_TEXT.items():
        value = values.get(key, "")
        if len(value) > limit:
            raise UploadError("invalid_metadata", f"{key} must be at most {limit} characters")
        # filename and content_type travel into object store headers (Content-Type,
        # Content-Disposition), where a control character makes every later call fail; a
        # note is only stored, and may hold line breaks.
        allowed = _NOTE_CONTROLS if key == "note" else ""
        if any((c < " " or c == "\x7f") and c not in allowed for c in value):
            raise UploadError("invalid_metadata", f"{key} must not contain control characters")
    sha256 = values.get("sha256", "").lower()
    if sha256 and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256)):
        raise UploadError("invalid_metadata", "sha256 must be 64 hex digits")
    return UploadMeta(
        attachment_id=_metadata_uuid(values, "attachment_id"),
        work_order_id=_metadata_uuid(values, "work_order_id"),
        filename=values["filename"],
        content_type=values["content_type"],
        kind=values["kind"],
        sha256=sha256,
        note=values.get("note", ""),
    )


def _metadata_uuid(values: dict[str, str], key: str) -> uuid.UUID:
    try:
        return uuid.UUID(values[key])
    except ValueError as exc:
        raise UploadError("invalid_metadata", f"{key} must be a UUID") from exc


def _encode_metadata(upload: Upload) -> str:
    values = {
        "attachment_id": str(upload.pk),
        "work_order_id": str(upload.work_order_id),
        "filename": upload.filename,
        "content_type": upload.content_type,
        "kind": upload.kind,
    }
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def _checksum(request: HttpRequest) -> Checksum | None:
    raw = request.headers.get("Upload-Checksum")
    if raw is None:
        return None
    algorithm, _, encoded = raw.strip().partition(" ")
    if algorithm.lower() not in CHECKSUM_ALGORITHMS:
        raise UploadError(
            "unsupported_checksum_algorithm",
            f"Upload-Checksum algorithm must be one of {', '.join(CHECKSUM_ALGORITHMS)}",
        )
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error as exc:
        raise UploadError("invalid_upload_checksum", "Upload-Checksum is not base64") from exc
    return Checksum(algorithm.lower(), digest)


# ============================================================================================
# Attachment status (DRF, documented in the OpenAPI schema)
# ============================================================================================
class AttachmentView(APIView):
    @extend_schema(responses={200: AttachmentStatusSerializer, **error_responses(401, 403, 404)})
    def get(self, request: Request, attachment_id: str) -> Response:
        assert isinstance(request.user, User)
        status = attachment_status(request.user, uuid_or_404(attachment_id, "attachment"))
        return Response(AttachmentStatusSerializer(status).data)
