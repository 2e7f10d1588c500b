from __future__ import annotations

import json
import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from common.body import BodyTimeout
from common.exceptions import throttled, uuid_or_404
from common.logging import bind_device
from common.ratelimit import Limit
from common.serializers import RETRY_AFTER, error_responses
from operations.api.schema import push_request
from operations.api.serializers import (
    OpOutcomeSerializer,
    PullResponseSerializer,
    PushResponseSerializer,
)
from operations.exceptions import Refusal, SyncError
from operations.selectors import op_get_for_user
from operations.services import op_batch_accept, sync_pull


def _batch_too_large(detail: str) -> SyncError:
    return SyncError("batch_too_large", detail, Refusal.TOO_LARGE)


def _read_push_body(request: Request) -> dict[str, Any]:
    """Parse the push envelope ourselves: size limits first, then JSON, then shape."""
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if declared.isascii() and declared.isdigit() and int(declared) > settings.SYNC_MAX_PUSH_BYTES:
        raise _batch_too_large("a push body may be at most 1 MiB")
    try:
        body = request._request.body  # raw bytes; DRF's parsers are bypassed on purpose
    except RequestDataTooBig as exc:
        raise _batch_too_large("a push body may be at most 1 MiB") from exc
    except BodyTimeout as exc:
        raise SyncError(
            "body_timeout", "the body did not arrive in time; send it again", Refusal.TIMEOUT
        ) from exc
    if len(body) > settings.SYNC_MAX_PUSH_BYTES:
        raise _batch_too_large("a push body may be at most 1 MiB")
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise SyncError("malformed_json", "the body is not valid JSON") from exc
    if not isinstance(envelope, dict):
        raise SyncError("invalid_envelope", "the body must be a JSON object")
    return envelope


def _device_id(value: object) -> uuid.UUID:
    try:
        return uuid.UUID(str(value)) if isinstance(value, str) else _no_device()
    except ValueError:
        return _no_device()


def _no_device() -> uuid.UUID:
    raise SyncError("invalid_device_id", "device_id must be a UUID")


class PushView(APIView):
    @extend_schema(
        request={"application/json": push_request()},
        responses={
            200: PushResponseSerializer,
            **error_responses(400, 401, 403, 408, 413, 415, 429),
        },
        parameters=[RETRY_AFTER],
        description="Store a batch of ops durably and answer per op (accepted, duplicate, "
        "rejected). Ops are applied asynchronously, per device in seq order.",
    )
    def post(self, request: Request) -> Response:
        envelope = _read_push_body(request)
        if "device_id" not in envelope:
            raise SyncError("invalid_envelope", "device_id is required")
        device_id = _device_id(envelope["device_id"])
        bind_device(device_id)
        ops = envelope.get("ops")
        if not isinstance(ops, list):
            raise SyncError("invalid_envelope", "ops must be a list")
        if len(ops) > settings.SYNC_MAX_OPS_PER_PUSH:
            raise _batch_too_large(f"at most {settings.SYNC_MAX_OPS_PER_PUSH} ops per push")
        assert isinstance(request.user, User)
        _throttle("push", device_id, settings.SYNC_PUSHES_PER_MINUTE)
        results = op_batch_accept(request.user, device_id, ops, request.auth)
        return Response(PushResponseSerializer.render(results))


class PullView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("device_id", OpenApiTypes.UUID, required=True),
            OpenApiParameter("cursor", OpenApiTypes.STR, required=False),
            OpenApiParameter(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": 1000},
                required=False,
                description="changes per page (default 500)",
            ),
            RETRY_AFTER,
        ],
        responses={200: PullResponseSerializer, **error_responses(400, 401, 403, 410, 429)},
        description="What changed in the caller's scope since the cursor, in commit order, "
        "and the outcomes of this device's ops. 410 cursor_expired: resync without cursor.",
    )
    def get(self, request: Request) -> Response:
        assert isinstance(request.user, User)
        device_id = _device_id(request.query_params.get("device_id"))
        bind_device(device_id)
        limit = _limit(request.query_params.get("limit"))
        cursor = request.query_params.get("cursor")
        _throttle("pull", device_id, settings.SYNC_PULLS_PER_MINUTE)
        page = sync_pull(request.user, device_id, cursor, limit, request.auth)
        return Response(PullResponseSerializer.render(page))


def _throttle(what: str, device_id: uuid.UUID, per_minute: int) -> None:
    wait = Limit(f"device-{what}", per_minute, 60).hit(str(device_id))
    if wait is not None:
        raise throttled(f"this device sent more than {per_minute} {what} requests a minute", wait)


def _limit(raw: str | None) -> int:
    if raw is None:
        return int(settings.SYNC_PULL_DEFAULT_LIMIT)
    # isdigit() alone admits "²", which int() refuses.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= settings.SYNC_PULL_MAX_LIMIT:
        raise SyncError(
            "invalid_limit", f"limit must be an integer from 1 to {settings.SYNC_PULL_MAX_LIMIT}"
        )
    return int(raw)


class OpOutcomeView(APIView):
    @extend_schema(responses={200: OpOutcomeSerializer, **error_responses(401, 403, 404)})
    def get(self, request: Request, op_id: str) -> Response:
        assert isinstance(request.user, User)
        parsed = uuid_or_404(op_id, "op")
        return Response(OpOutcomeSerializer(op_get_for_user(request.user, parsed)).data)
