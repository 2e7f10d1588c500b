"""A work order's own page: its form, inlines and timeline, and how a save or a delete
becomes ops."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

from conflicts.models import Conflict, ConflictStatus
from operations.history import work_order_timeline
from workorders.models import ChecklistItem, Comment, WorkOrder
from workorders.registry import WORK_ORDER, EntitySpec, entity_for_model
from workspace.base import DispatcherAdmin
from workspace.site import organization_of
from workspace.workorders.forms import WorkOrderForm
from workspace.workorders.inlines import AttachmentInline, ChecklistInline, CommentInline
from workspace.workorders.submit import OpRefused, submit_op


class WorkOrderRecord(DispatcherAdmin):
    """The record half of ``WorkOrderAdmin``: ops, never model saves."""

    form = WorkOrderForm
    inlines = (ChecklistInline, CommentInline, AttachmentInline)
    change_form_template = "admin/workorders/workorder/change_form.html"
    fieldsets = (
        (None, {"fields": ("title", "status", "priority", "assigned_to", "base_version")}),
        ("Schedule", {"fields": ("scheduled_start", "scheduled_end")}),
        (
            "Customer",
            {"fields": ("customer_name", "customer_phone", "address", "description")},
        ),
        (
            "From the field",
            {"fields": ("technician_notes", "arrived_at", "completed_at")},
        ),
    )

    def get_form(
        self, request: HttpRequest, obj: Any | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change, **kwargs)
        organization_id = obj.organization_id if obj is not None else None
        return type(
            "WorkOrderForm",
            (form,),
            {"organization_id": organization_id or organization_of(request.user)},
        )

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return super().has_delete_permission(request, obj) and not getattr(obj, "deleted", False)

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        extra_context = dict(extra_context or {})
        if object_id is not None:
            obj = self.get_object(request, object_id)
            if obj is not None:
                timeline, truncated = work_order_timeline(obj)
                extra_context |= {
                    "timeline": timeline,
                    "timeline_truncated": truncated,
                    "open_conflicts": Conflict.objects.filter(
                        work_order_id=obj.pk, status=ConflictStatus.OPEN
                    ).select_related("author"),
                }
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except OpRefused as refused:
            # The admin's transaction rolled back: nothing of this submit was applied.
            messages.error(request, f"Nothing was saved: {refused}")
            return HttpResponseRedirect(request.get_full_path())

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if not change:
            entity_id = uuid.uuid4()
            submit_op(request, WORK_ORDER, entity_id, "create", 0, form.op_fields)
            obj.pk = entity_id
        elif form.op_fields:
            base = form.cleaned_data["base_version"]
            submit_op(request, WORK_ORDER, obj.pk, "update", base, form.op_fields)
        obj.refresh_from_db()

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        for formset in formsets:
            self.save_formset(request, form, formset, change)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model not in (ChecklistItem, Comment):
            return  # attachments are read-only here: the upload flow makes them
        parent = form.instance
        spec = entity_for_model(formset.model)
        for child in formset.forms:
            if spec.append_only and child in formset.initial_forms:
                continue
            _submit_child(request, spec, parent, formset, child)

    def construct_change_message(
        self, request: HttpRequest, form: Any, formsets: Any, add: bool = False
    ) -> list[dict[str, Any]]:
        # The inline rows were ops, not saved model forms; the event log has their detail.
        message: list[dict[str, Any]] = super().construct_change_message(request, form, [], add)
        return message

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        submit_op(request, WORK_ORDER, obj.pk, "delete", obj.version, {})

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for obj in queryset:
            self.delete_model(request, obj)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        # A delete is a tombstone (an event); children stay, so nothing cascades.
        return [str(obj) for obj in objs], {"work orders": len(objs)}, set(), []


def _submit_child(
    request: HttpRequest, spec: EntitySpec, parent: WorkOrder, formset: Any, child: Any
) -> None:
    instance = child.instance
    if child in formset.initial_forms and formset._should_delete_form(child):
        submit_op(request, spec, instance.pk, "delete", instance.version, {})
        return
    if not child.has_changed() or formset._should_delete_form(child):
        return
    if child in formset.initial_forms:
        if child.op_fields:
            base = child.cleaned_data["base_version"]
            submit_op(request, spec, instance.pk, "update", base, child.op_fields)
        return
    fields = {**child.op_fields, "work_order_id": str(parent.pk)}
    submit_op(request, spec, uuid.uuid4(), "create", 0, fields)
