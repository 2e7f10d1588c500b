from __future__ import annotations

import json
import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from accounts.services import device_claim
from common.exceptions import DomainError, uuid_or_404
from operations.selectors import changes_since, op_get_for_user, op_outcome
from operations.services import _touch_device, op_batch_accept


def _batch_too_large(detail: str) -> DomainError:
    return DomainError("batch_too_large", detail, status=413)


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
        raise DomainError("malformed_json", "the body is not valid JSON") from exc
    if not isinstance(envelope, dict):
        raise DomainError("invalid_envelope", "the body must be a JSON object")
    return envelope


def _device_id(value: object) -> uuid.UUID:
    try:
        return uuid.UUID(str(value)) if isinstance(value, str) else _no_device()
    except ValueError:
        return _no_device()


def _no_device() -> uuid.UUID:
    raise DomainError("invalid_device_id", "device_id must be a UUID")


_OP_RESULT = inline_serializer(
    "OpResult",
    {
        "op_id": serializers.CharField(),
        "status": serializers.ChoiceField(["accepted", "duplicate", "rejected"]),
        "code": serializers.CharField(required=False),
        "detail": serializers.CharField(required=False),
    },
)
_OUTCOME = inline_serializer(
    "OpOutcome",
    {
        "op_id": serializers.UUIDField(),
        "device_id": serializers.UUIDField(),
        "seq": serializers.IntegerField(),
        "status": serializers.ChoiceField(["pending", "applied", "conflict", "rejected"]),
        "version": serializers.IntegerField(allow_null=True),
        "overridden_fields": serializers.ListField(child=serializers.CharField()),
        "conflict_ids": serializers.ListField(child=serializers.UUIDField()),
        "code": serializers.CharField(allow_null=True),
        "detail": serializers.CharField(allow_null=True),
    },
)


class PushView(APIView):
    @extend_schema(
        request=inline_serializer(
            "PushRequest",
            {
                "device_id": serializers.UUIDField(),
                "ops": serializers.ListField(child=serializers.DictField()),
            },
        ),
        responses={200: inline_serializer("PushResponse", {"results": _OP_RESULT})},
        description="Store a batch of ops durably and answer per op (accepted, duplicate, "
        "rejected). Ops are applied asynchronously, per device in seq order.",
    )
    def post(self, request: Request) -> Response:
        envelope = _read_push_body(request)
        if "device_id" not in envelope:
            raise DomainError("invalid_envelope", "device_id is required")
        device_id = _device_id(envelope["device_id"])
        ops = envelope.get("ops")
        if not isinstance(ops, list):
            raise DomainError("invalid_envelope", "ops must be a list")
        if len(ops) > settings.SYNC_MAX_OPS_PER_PUSH:
            raise _batch_too_large(f"at most {settings.SYNC_MAX_OPS_PER_PUSH} ops per push")
        assert isinstance(request.user, User)
        results = op_batch_accept(request.user, device_id, ops, request.auth)
        return Response({"results": [r.as_dict() for r in results]})


class PullView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("device_id", OpenApiTypes.UUID, required=True),
            OpenApiParameter("cursor", OpenApiTypes.STR, required=False),
            OpenApiParameter("limit", OpenApiTypes.INT, required=False),
        ],
        responses={
            200: inline_serializer(
                "PullResponse",
                {
                    "changes": serializers.ListField(child=serializers.DictField()),
                    "outcomes": serializers.ListField(child=_OUTCOME),
                    "last_done_seq": serializers.IntegerField(),
                    "cursor": serializers.CharField(),
                    "has_more": serializers.BooleanField(),
                },
            )
        },
        description="What changed in the caller's scope since the cursor, in commit order, "
        "and the outcomes of this device's ops. 410 cursor_expired: resync without cursor.",
    )
    def get(self, request: Request) -> Response:
        assert isinstance(request.user, User)
        device = device_claim(
            request.user, _device_id(request.query_params.get("device_id")), request.auth
        )
        limit = _limit(request.query_params.get("limit"))
        page = changes_since(request.user, device, request.query_params.get("cursor"), limit)
        _touch_device(device, "last_pull_at", timezone.now())
        return Response(page.as_dict())


def _limit(raw: str | None) -> int:
    if raw is None:
        return int(settings.SYNC_PULL_DEFAULT_LIMIT)
    if not raw.isdigit() or not 1 <= int(raw) <= settings.SYNC_PULL_MAX_LIMIT:
        raise DomainError(
            "invalid_limit", f"limit must be an integer from 1 to {settings.SYNC_PULL_MAX_LIMIT}"
        )
    return int(raw)


class OpOutcomeView(APIView):
    @extend_schema(responses={200: _OUTCOME})
    def get(self, request: Request, op_id: str) -> Response:
        assert isinstance(request.user, User)
        parsed = uuid_or_404(op_id, "op")
        return Response(op_outcome(op_get_for_user(request.user, parsed)))
