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
from common.exceptions import uuid_or_404
from operations.api.serializers import (
    OpOutcomeSerializer,
    PullResponseSerializer,
    PushRequestSerializer,
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
    if declared.isdigit() and int(declared) > settings.SYNC_MAX_PUSH_BYTES:
        raise _batch_too_large("a push body may be at most 1 MiB")
    try:
        body = request._request.body  # raw bytes; DRF's parsers are bypassed on purpose
    except RequestDataTooBig as exc:
        raise _batch_too_large("a push body may be at most 1 MiB") from exc
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
        request=PushRequestSerializer,
        responses={200: PushResponseSerializer},
        description="Store a batch of ops durably and answer per op (accepted, duplicate, "
        "rejected). Ops are applied asynchronously, per device in seq order.",
    )
    def post(self, request: Request) -> Response:
        envelope = _read_push_body(request)
        if "device_id" not in envelope:
            raise SyncError("invalid_envelope", "device_id is required")
        device_id = _device_id(envelope["device_id"])
        ops = envelope.get("ops")
        if not isinstance(ops, list):
            raise SyncError("invalid_envelope", "ops must be a list")
        if len(ops) > settings.SYNC_MAX_OPS_PER_PUSH:
            raise _batch_too_large(f"at most {settings.SYNC_MAX_OPS_PER_PUSH} ops per push")
        assert isinstance(request.user, User)
        results = op_batch_accept(request.user, device_id, ops, request.auth)
        return Response(PushResponseSerializer({"results": results}).data)


class PullView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("device_id", OpenApiTypes.UUID, required=True),
            OpenApiParameter("cursor", OpenApiTypes.STR, required=False),
            OpenApiParameter("limit", OpenApiTypes.INT, required=False),
        ],
        responses={200: PullResponseSerializer},
        description="What changed in the caller's scope since the cursor, in commit order, "
        "and the outcomes of this device's ops. 410 cursor_expired: resync without cursor.",
    )
    def get(self, request: Request) -> Response:
        assert isinstance(request.user, User)
        device_id = _device_id(request.query_params.get("device_id"))
        limit = _limit(request.query_params.get("limit"))
        cursor = request.query_params.get("cursor")
        page = sync_pull(request.user, device_id, cursor, limit, request.auth)
        return Response(PullResponseSerializer(page).data)


def _limit(raw: str | None) -> int:
    if raw is None:
        return int(settings.SYNC_PULL_DEFAULT_LIMIT)
    if not raw.isdigit() or not 1 <= int(raw) <= settings.SYNC_PULL_MAX_LIMIT:
        raise SyncError(
            "invalid_limit", f"limit must be an integer from 1 to {settings.SYNC_PULL_MAX_LIMIT}"
        )
    return int(raw)


class OpOutcomeView(APIView):
    @extend_schema(responses={200: OpOutcomeSerializer})
    def get(self, request: Request, op_id: str) -> Response:
        assert isinstance(request.user, User)
        parsed = uuid_or_404(op_id, "op")
        return Response(OpOutcomeSerializer(op_get_for_user(request.user, parsed)).data)
