"""A work order's children on its page: checklist, comments, attachments."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Model, OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from media.models import Upload, UploadStatus
from media.storage import presigned_get
from operations.models import Event
from workorders.models import ChecklistItem, Comment
from workorders.registry import COMMENT
from workspace.site import dispatcher_of, organization_of
from workspace.workorders.forms import ChecklistItemForm, CommentForm


class SyncedInline(admin.TabularInline):  # type: ignore[type-arg]
    """Inline rows of a work order's children; writes go through ``WorkOrderAdmin``."""

    extra = 1
    show_change_link = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        rows: QuerySet[Any] = super().get_queryset(request)
        return rows.filter(deleted=False).order_by("created_at")

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return True  # the parent's admin decided who sees the work order

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return dispatcher_of(request.user) is not None

    def get_formset(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        formset = super().get_formset(request, obj, **kwargs)
        organization_id = obj.organization_id if obj is not None else None
        formset.form = type(
            formset.form.__name__,
            (formset.form,),
            {"organization_id": organization_id or organization_of(request.user)},
        )
        return formset


class ChecklistInline(SyncedInline):
    model = ChecklistItem
    form = ChecklistItemForm
    fields = ("label", "done", "base_version")
    verbose_name = "checklist item"

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return dispatcher_of(request.user) is not None

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return dispatcher_of(request.user) is not None


class CommentInline(SyncedInline):
    """Append-only: existing comments are read-only; a dispatcher may add one."""

    model = Comment
    form = CommentForm
    fields = ("body", "author", "written_at")
    readonly_fields = ("author", "written_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        created = Event.objects.filter(entity=COMMENT.name, entity_id=OuterRef("pk"), version=1)
        rows: QuerySet[Any] = super().get_queryset(request)
        annotated: QuerySet[Any] = rows.annotate(
            author_name=Subquery(created.values("actor__username")[:1])
        )
        return annotated

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    @admin.display(description="author")
    def author(self, obj: Comment) -> str:
        return getattr(obj, "author_name", None) or "—"

    @admin.display(description="written (UTC)")
    def written_at(self, obj: Comment) -> str:
        return obj.created_at.strftime("%Y-%m-%d %H:%M") if obj.pk else "—"


class AttachmentInline(admin.TabularInline):  # type: ignore[type-arg]
    """Files the field attached or is still uploading (read-only: the upload flow owns them)."""

    model = Upload
    fk_name = "work_order"
    extra = 0
    can_delete = False
    verbose_name = "attachment"
    fields = ("preview", "filename", "kind", "size", "progress", "note", "download")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).order_by("created_at")

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return True

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    @admin.display(description="preview")
    def preview(self, upload: Upload) -> SafeString | str:
        if not upload.thumbnail_key:
            return "—"
        return format_html(
            '<img class="fs-thumb" src="{}" alt="thumbnail of {}">',
            presigned_get(upload.thumbnail_key),
            upload.filename,
        )

    @admin.display(description="size")
    def size(self, upload: Upload) -> str:
        return _human_size(upload.length)

    @admin.display(description="status")
    def progress(self, upload: Upload) -> SafeString:
        if upload.status == UploadStatus.UPLOADING:
            percent = 100 * upload.offset // upload.length if upload.length else 0
            return format_html(
                '<progress max="100" value="{}" aria-label="uploaded">{} %</progress> '
                "uploading {} %",
                percent,
                percent,
                percent,
            )
        if upload.status == UploadStatus.FAILED:
            return format_html(
                '<span class="fs-failed">failed</span>: {} {}', upload.code, upload.detail
            )
        return format_html("{}", upload.status)

    @admin.display(description="download")
    def download(self, upload: Upload) -> SafeString | str:
        if upload.status != UploadStatus.ATTACHED:
            return "—"
        return format_html(
            '<a href="{}" download>download<span class="visually-hidden"> {}</span></a>',
            presigned_get(upload.object_key),
            upload.filename,
        )


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
