from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from common.exceptions import DomainError, uuid_or_404
from conflicts.models import ConflictStatus, Resolution
from conflicts.selectors import conflict_as_dict, conflicts_visible_to
from conflicts.services import conflict_resolve

_CONFLICT = inline_serializer(
    "Conflict",
    {
        "id": serializers.UUIDField(),
        "entity": serializers.CharField(),
        "entity_id": serializers.UUIDField(),
        "field": serializers.CharField(),
        "base_value": serializers.JSONField(),
        "server_value": serializers.JSONField(),
        "client_value": serializers.JSONField(),
        "op_id": serializers.UUIDField(),
        "device_id": serializers.UUIDField(),
        "status": serializers.ChoiceField(ConflictStatus.values),
        "resolution": serializers.CharField(allow_null=True),
        "resolved_by": serializers.CharField(allow_null=True),
        "created_at": serializers.DateTimeField(),
        "resolved_at": serializers.DateTimeField(allow_null=True),
    },
)
MAX_LISTED = 1000


class ConflictListView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("status", OpenApiTypes.STR, enum=ConflictStatus.values)],
        responses={200: inline_serializer("ConflictList", {"results": _CONFLICT})},
    )
    def get(self, request: Request) -> Response:
        assert isinstance(request.user, User)
        qs = conflicts_visible_to(request.user).select_related("resolved_by")
        status = request.query_params.get("status")
        if status is not None:
            if status not in ConflictStatus.values:
                raise DomainError("invalid_status", "status must be open or resolved")
            qs = qs.filter(status=status)
        rows = qs.order_by("-created_at")[:MAX_LISTED]
        return Response({"results": [conflict_as_dict(c) for c in rows]})


class ResolveSerializer(serializers.Serializer[dict[str, object]]):
    choice = serializers.ChoiceField(Resolution.values)
    value = serializers.JSONField(required=False)


class ConflictResolveView(APIView):
    @extend_schema(
        request=ResolveSerializer,
        responses={
            200: inline_serializer(
                "ConflictResolved", {"conflict": _CONFLICT, "version": serializers.IntegerField()}
            )
        },
    )
    def post(self, request: Request, conflict_id: str) -> Response:
        assert isinstance(request.user, User)
        data = ResolveSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        parsed = uuid_or_404(conflict_id, "conflict")
        extra = {"value": data.validated_data["value"]} if "value" in data.validated_data else {}
        conflict, version = conflict_resolve(
            request.user, parsed, data.validated_data["choice"], **extra
        )
        return Response({"conflict": conflict_as_dict(conflict), "version": version})
