"""The attachment status wire shape; it renders the response and documents it."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from media.models import Kind, UploadStatus


class AttachmentStatusSerializer(serializers.Serializer[Any]):
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
