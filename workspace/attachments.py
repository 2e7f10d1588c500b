"""Read-only views of attachments and uploads for dispatchers (changes go through sync)."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html
from django.utils.safestring import SafeString

from media.models import Upload
from media.storage import presigned_get
from workspace.base import ReadOnlyAdmin


class AttachmentAdmin(ReadOnlyAdmin):
    list_display = ("filename", "kind", "work_order", "size", "version", "created_at")
    list_filter = ("kind",)
    search_fields = ("filename", "sha256", "id")


class UploadAdmin(ReadOnlyAdmin):
    list_display = ("filename", "kind", "status", "code", "offset", "length", "thumbnail")
    list_filter = ("status", "kind")
    search_fields = ("filename", "id")

    @admin.display(description="thumbnail")
    def thumbnail(self, obj: Upload) -> SafeString | str:
        if not obj.thumbnail_key:
            return ""
        url = presigned_get(obj.thumbnail_key)
        return format_html('<img src="{}" alt="" style="max-height:80px">', url)
