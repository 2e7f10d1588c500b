from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.serializers import CredentialsSerializer, TokenSerializer
from accounts.services import token_issue_for_credentials


class TokenView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(request=CredentialsSerializer, responses={200: TokenSerializer})
    def post(self, request: Request) -> Response:
        data = CredentialsSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = token_issue_for_credentials(
            data.validated_data["username"], data.validated_data["password"]
        )
        return Response(TokenSerializer({"token": key}).data)
