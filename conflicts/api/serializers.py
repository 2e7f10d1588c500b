"""The conflict wire shapes (contract: list and resolve). Each serializer both renders its
response and documents it in the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from common.serializers import BlankAsNullCharField
from conflicts.models import ConflictStatus, Resolution


class ConflictSerializer(serializers.Serializer[Any]):
    id = serializers.UUIDField()
    entity = serializers.CharField()
    entity_id = serializers.UUIDField()
    field = serializers.CharField()
    base_value = serializers.JSONField()
    server_value = serializers.JSONField()
    client_value = serializers.JSONField()
    op_id = serializers.UUIDField()
    device_id = serializers.UUIDField()
    status = serializers.ChoiceField(ConflictStatus.values)
    resolution = BlankAsNullCharField()
    resolved_by = serializers.CharField(source="resolved_by.username", allow_null=True)
    created_at = serializers.DateTimeField()
    resolved_at = serializers.DateTimeField(allow_null=True)


class ConflictListSerializer(serializers.Serializer[Any]):
    results = ConflictSerializer(many=True)


class ResolveSerializer(serializers.Serializer[dict[str, object]]):
    choice = serializers.ChoiceField(Resolution.values)
    # null is a value too (it clears a time or an assignee).
    value = serializers.JSONField(required=False, allow_null=True)


class ConflictResolvedSerializer(serializers.Serializer[Any]):
    conflict = ConflictSerializer()
    version = serializers.IntegerField()
