"""The token endpoint's wire shapes; each renders its response and documents it."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class CredentialsSerializer(serializers.Serializer[dict[str, str]]):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=256, trim_whitespace=False)


class TokenSerializer(serializers.Serializer[Any]):
    token = serializers.CharField(help_text="shown once; send as `Authorization: Token <token>`")
