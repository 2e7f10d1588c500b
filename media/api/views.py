"""tus 1.0.0 at ``/api/v1/uploads/`` and the attachment status endpoint.

The tus views are plain Django views: the byte path needs no DRF parsing or negotiation,
and protocol errors must carry tus headers. They still authenticate with the API token
class and answer every refusal as ``{"code", "detail"}``.
"""

from __future__ import annotations

import base64
import binascii
import io
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.http import http_date
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import ApiTokenAuthentication
from accounts.models import User
from common.exceptions import DomainError, uuid_or_404
from common.logging import log_warning
from media.exceptions import BodyInterrupted, UploadError
from media.models import Kind, Upload, UploadStatus
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
# Each read of a PATCH body asks for this much; pieces are joined into parts by the service.
_PIECE = 1024 * 1024
# A refused request's unread body is read and dropped up to this size (see RequestBody).
_DRAIN_LIMIT = 16 * 1024 * 1024
_MAX_TEXT = {"filename": 255, "content_type": 255, "note": 10_000}
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
        with _read_timeout(request):
            response = _route(request, method, upload_id, body)
    except DomainError as exc:
        response = _error(exc, method)
    except (BotoCoreError, ClientError) as exc:
        log_warning("upload.storage_error", error=repr(exc))
        unavailable = UploadError(
            "storage_unavailable", "the object store did not answer; retry", 503
        )
        response = _error(unavailable, method)
        response["Retry-After"] = "5"
    finally:
        # A refusal, or a repeated POST answered without its body: read what is left.
        with _read_timeout(request):
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
            412,
            {"Tus-Version": TUS_VERSION},
        )
    user = _authenticate(request)
    if upload_id is None:
        if method != "POST":
            raise UploadError("method_not_allowed", f"{method} is not allowed here", 405)
        return _create(request, user, body)
    handlers: dict[str, Callable[[HttpRequest, User, uuid.UUID, RequestBody], HttpResponse]] = {
        "HEAD": _head,
        "PATCH": _patch,
        "DELETE": _delete,
    }
    handler = handlers.get(method)
    if handler is None:
        raise UploadError("method_not_allowed", f"{method} is not allowed here", 405)
    try:
        parsed = uuid.UUID(upload_id)
    except ValueError as exc:
        raise UploadError("not_found", "no such upload", 404) from exc
    return handler(request, user, parsed, body)


def _authenticate(request: HttpRequest) -> User:
    challenge = {"WWW-Authenticate": "Token"}
    try:
        found = ApiTokenAuthentication().authenticate(Request(request))
    except AuthenticationFailed as exc:
        raise UploadError("authentication_failed", str(exc.detail), 401, challenge) from exc
    if found is None:
        raise UploadError("not_authenticated", "send Authorization: Token <token>", 401, challenge)
    user, _ = found
    user.org_id  # noqa: B018 - raises 403 for an account without an organisation
    return user


def _error(exc: DomainError, method: str) -> HttpResponse:
    body = {"code": exc.code, "detail": exc.detail}
    response = (
        HttpResponse(status=exc.status)
        if method == "HEAD"
        else JsonResponse(body, status=exc.status)
    )
    for name, value in getattr(exc, "headers", {}).items():
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
            "invalid_content_type", f"a PATCH body must be {OFFSET_OCTET_STREAM}", 415
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
        if len(values.get(key, "")) > limit or "\x00" in values.get(key, ""):
            raise UploadError(
                "invalid_metadata", f"{key} must be at most {limit} characters, no NUL"
            )
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


class RequestBody:
    """A request body, read into the service's buffer (``BodySource``), at most once.

    gunicorn answers a request whose body was left unread with ``Connection: keep-alive``
    and then closes the connection when more than 64 KiB are left: the client's next
    request on it fails. So a refused request drains a body of up to ``_DRAIN_LIMIT``
    (a phone sends the whole chunk before it reads the answer anyway).
    """

    def __init__(
        self,
        readinto: Callable[[memoryview], int],
        expected: int | None,
        direct: SocketBody | None = None,
    ) -> None:
        self._readinto = readinto
        self.expected = expected  # None: chunked, ends when the stream does
        self.received = 0
        self.direct = direct
        self.broken = False  # the client stopped sending: nothing more will come

    @classmethod
    def of(cls, request: HttpRequest) -> RequestBody:
        declared = request.META.get("CONTENT_LENGTH") or ""
        if declared.isdigit():  # the server has refused a malformed one already
            direct = SocketBody.of(request.META)
            if direct is not None:
                return cls(direct.readinto, int(declared), direct)
            return cls(_copying_into(request.read), int(declared))
        if "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
            # Django reads at most CONTENT_LENGTH bytes (none here): read the server's
            # de-chunked stream itself. The service bounds it by the bytes still missing.
            return cls(_copying_into(request.META["wsgi.input"].read), None)
        return cls.empty()

    @classmethod
    def empty(cls) -> RequestBody:
        return cls(lambda buffer: 0, 0)

    def readinto(self, buffer: memoryview) -> int:
        if self.expected is not None:
            buffer = buffer[: max(0, self.expected - self.received)]
        if not len(buffer):
            return 0
        try:
            received = self._readinto(buffer)
        except Exception as exc:  # each WSGI server has its own errors for a broken body
            self.broken = True
            raise BodyInterrupted(repr(exc)) from exc
        if not received and self.expected is not None:
            self.broken = True
            raise BodyInterrupted(f"body ended after {self.received} of {self.expected} bytes")
        self.received += received
        return received

    def drain(self) -> None:
        if self.broken or self.expected is None or self.expected - self.received > _DRAIN_LIMIT:
            return  # gunicorn closes the connection; cheaper than reading it all
        scratch = memoryview(bytearray(_PIECE))
        with suppress(BodyInterrupted):
            while self.readinto(scratch):
                pass

    def close(self) -> None:
        if self.direct is not None:
            self.direct.give_back()


def _copying_into(read: Callable[[int], bytes]) -> Callable[[memoryview], int]:
    def readinto(buffer: memoryview) -> int:
        data = read(min(len(buffer), _PIECE))
        buffer[: len(data)] = data
        return len(data)

    return readinto


class SocketBody:
    """A gunicorn request body of known length, read straight from the socket.

    gunicorn's reader layers copy every byte four or five times through BytesIO buffers,
    and on this hardware each copy of a GiB costs most of a CPU-second. Here ``recv_into``
    lands each byte once, in the service's part buffer; what gunicorn had already buffered
    is taken first, its byte count is kept exact and unread bytes are handed back, so the
    connection stays usable for the next request. Anything but gunicorn's plain
    Content-Length body takes the portable path.
    """

    def __init__(self, body: Any, sock: socket.socket) -> None:
        self.body = body
        self.reader = body.reader
        self.sock = sock
        self.held = b""
        self.taken = False

    @classmethod
    def of(cls, environ: dict[str, Any]) -> SocketBody | None:
        try:
            from gunicorn.http.body import Body, LengthReader  # type: ignore[import-untyped]
            from gunicorn.http.unreader import SocketUnreader  # type: ignore[import-untyped]
        except ImportError:
            return None
        body, sock = environ.get("wsgi.input"), environ.get("gunicorn.socket")
        if (
            isinstance(body, Body)
            and isinstance(body.reader, LengthReader)
            and isinstance(body.reader.unreader, SocketUnreader)
            and isinstance(sock, socket.socket)
        ):
            return cls(body, sock)
        return None

    def _take_over(self) -> None:
        """Take the body bytes gunicorn already holds (only when reading starts, so a
        request refused before reading leaves gunicorn's state untouched)."""
        self.taken = True
        held = self.body.buf.getvalue()  # already counted off the reader, not yet returned
        self.body.buf = io.BytesIO()
        ahead = self.reader.unreader.take_buffered()
        mine = ahead[: self.reader.length]
        self.reader.unreader.unread(ahead[len(mine) :])  # a pipelined next request
        self.reader.length -= len(mine)
        self.held = held + mine

    def give_back(self) -> None:
        if self.held:
            self.reader.unreader.unread(self.held)
            self.reader.length += len(self.held)
            self.held = b""

    def readinto(self, buffer: memoryview) -> int:
        if not self.taken:
            self._take_over()
        if self.held:
            count = min(len(buffer), len(self.held))
            buffer[:count] = self.held[:count]
            self.held = self.held[count:]
            return count
        want = min(len(buffer), self.reader.length)
        if want <= 0:
            return 0
        try:
            received = self.sock.recv_into(buffer, want)
        except Exception:
            self.body.failed = True  # where the next request starts is now unknown
            raise
        self.reader.length -= received
        return received


@contextmanager
def _read_timeout(request: HttpRequest) -> Iterator[None]:
    """Under gunicorn, bound how long a read may wait: a phone that vanished without closing
    its connection must not hold a thread and its upload's lock for hours."""
    sock = request.META.get("gunicorn.socket")
    if sock is None:
        yield
        return
    previous = sock.gettimeout()
    sock.settimeout(settings.UPLOADS_READ_TIMEOUT_SECONDS)
    try:
        yield
    finally:
        with suppress(OSError):  # the connection may already be gone
            sock.settimeout(previous)


# ============================================================================================
# Attachment status (DRF, documented in the OpenAPI schema)
# ============================================================================================
class AttachmentStatusSerializer(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.UUIDField()
    work_order_id = serializers.UUIDField()
    filename = serializers.CharField()
    content_type = serializers.CharField()
    kind = serializers.ChoiceField(choices=Kind.choices)
    size = serializers.IntegerField()
    offset = serializers.IntegerField()
    sha256 = serializers.CharField(allow_null=True)
    note = serializers.CharField(allow_blank=True)
    status = serializers.ChoiceField(choices=UploadStatus.choices)
    code = serializers.CharField(allow_null=True)
    detail = serializers.CharField(allow_null=True)
    download_url = serializers.URLField(allow_null=True)


class AttachmentView(APIView):
    @extend_schema(responses={200: AttachmentStatusSerializer})
    def get(self, request: Request, attachment_id: str) -> Response:
        assert isinstance(request.user, User)
        return Response(attachment_status(request.user, uuid_or_404(attachment_id, "attachment")))
