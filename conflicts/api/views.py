from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import User
from common.exceptions import uuid_or_404
from common.serializers import error_responses
from conflicts.api.serializers import (
    ConflictListSerializer,
    ConflictResolvedSerializer,
    ResolveSerializer,
)
from conflicts.exceptions import ConflictError
from conflicts.models import ConflictStatus
from conflicts.selectors import conflicts_visible_to
from conflicts.services import conflict_resolve

MAX_LISTED = 1000


class ConflictListView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("status", OpenApiTypes.STR, enum=ConflictStatus.values)],
        responses={200: ConflictListSerializer, **error_responses(400, 401, 403)},
    )
    def get(self, request: Request) -> Response:
        assert isinstance(request.user, User)
        qs = conflicts_visible_to(request.user).select_related("resolved_by")
        status = request.query_params.get("status")
        if status is not None:
            if status not in ConflictStatus.values:
                raise ConflictError("invalid_status", "status must be open or resolved")
            qs = qs.filter(status=status)
        rows = qs.order_by("-created_at")[:MAX_LISTED]
        return Response(ConflictListSerializer({"results": rows}).data)


class ConflictResolveView(APIView):
    @extend_schema(
        request=ResolveSerializer,
        responses={
            200: ConflictResolvedSerializer,
            **error_responses(400, 401, 403, 404, 409, 415),
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
        return Response(ConflictResolvedSerializer({"conflict": conflict, "version": version}).data)
