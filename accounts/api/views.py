from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.serializers import CredentialsSerializer, TokenSerializer
from accounts.services import token_issue_for_credentials
from common.net import client_address
from common.serializers import RETRY_AFTER, error_responses


class TokenView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=CredentialsSerializer,
        responses={200: TokenSerializer, **error_responses(400, 401, 415, 429)},
        parameters=[RETRY_AFTER],
    )
    def post(self, request: Request) -> Response:
        data = CredentialsSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = token_issue_for_credentials(
            data.validated_data["username"],
            data.validated_data["password"],
            client_address(request._request),
        )
        return Response(TokenSerializer({"token": key}).data)
