"""The work order list: its columns, filters and the bulk actions (cancel, reassign)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.db.models import (
    DateTimeField,
    Max,
    OuterRef,
    QuerySet,
    Subquery,
)
from django.db.models.functions import Greatest
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from accounts.models import Device, DeviceKind
from operations.models import OpStatus
from workorders.fields import Json
from workorders.models import Status
from workorders.registry import WORK_ORDER
from workspace.annotations import count_of, open_conflicts_here
from workspace.base import DispatcherAdmin
from workspace.paginator import EstimatedCountPaginator
from workspace.workorders.filters import (
    OpenConflictsFilter,
    RecordStateFilter,
    ScheduledDayFilter,
    TechnicianFilter,
    UploadingFilter,
)
from workspace.workorders.submit import OpRefused, submit_op
from workspace.workorders.wire import technicians_for


class WorkOrderActionForm(ActionForm):
    assign_to = forms.CharField(
        required=False, label="Technician", widget=forms.Select(choices=[("", "—")])
    )


def _last_sync() -> Subquery:
    return Subquery(
        Device.objects.filter(user_id=OuterRef("assigned_to_id"), kind=DeviceKind.CLIENT)
        .order_by()
        .values("user_id")
        .annotate(last=Max(Greatest("last_push_at", "last_pull_at")))
        .values("last"),
        output_field=DateTimeField(),
    )


class WorkOrderChangelist(DispatcherAdmin):
    """The list half of ``WorkOrderAdmin``."""

    action_form = WorkOrderActionForm
    list_display = (
        "title",
        "customer_name",
        "status",
        "priority",
        "assigned_to",
        "scheduled_start",
        "conflicts_column",
        "last_sync_column",
    )
    list_display_links = ("title",)
    list_filter = (
        "status",
        TechnicianFilter,
        "priority",
        ScheduledDayFilter,
        OpenConflictsFilter,
        UploadingFilter,
        RecordStateFilter,
    )
    search_fields = ("title", "customer_name", "address")
    list_select_related = ("assigned_to",)
    ordering = ("-scheduled_start",)
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 50
    actions = ("cancel_work_orders", "reassign_work_orders")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        annotated: QuerySet[Any] = (
            super()
            .get_queryset(request)
            .annotate(
                open_conflicts=count_of(open_conflicts_here(), "work_order_id"),
                last_sync=_last_sync(),
            )
        )
        return annotated

    # --- list columns ------------------------------------------------------------------
    @admin.display(description="open conflicts")
    def conflicts_column(self, obj: Any) -> SafeString | str:
        if not obj.open_conflicts:
            return "—"
        url = reverse("admin:conflicts_conflict_changelist")
        return format_html(
            '<a class="fs-badge" href="{}?work_order_id={}&amp;status=open">{} open</a>',
            url,
            obj.pk,
            obj.open_conflicts,
        )

    @admin.display(description="technician last sync")
    def last_sync_column(self, obj: Any) -> Any:
        if obj.assigned_to_id is None:
            return "—"
        return obj.last_sync or "never"

    # --- actions ---------------------------------------------------------------------------
    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            response = super().changelist_view(request, extra_context)
        except OpRefused as refused:
            messages.error(request, f"Nothing was saved: {refused}")
            return HttpResponseRedirect(request.get_full_path())
        if isinstance(response, TemplateResponse) and response.context_data:
            action_form = response.context_data.get("action_form")
            if action_form is not None:
                technicians = technicians_for(request.user)
                action_form.fields["assign_to"].widget.choices = [
                    ("", "— choose a technician —"),
                    *[(u, u) for u in technicians.values_list("username", flat=True)],
                ]
        return response

    @admin.action(description="Cancel selected work orders")
    def cancel_work_orders(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._bulk_update(request, queryset, {"status": Status.CANCELLED}, "cancelled")

    @admin.action(description="Reassign selected work orders to the chosen technician")
    def reassign_work_orders(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        username = request.POST.get("assign_to", "")
        technician = technicians_for(request.user).filter(username=username).first()
        if technician is None:
            messages.error(request, "Choose a technician to reassign to.")
            return
        self._bulk_update(request, queryset, {"assigned_to": username}, f"reassigned to {username}")

    def _bulk_update(
        self, request: HttpRequest, queryset: QuerySet[Any], fields: dict[str, Json], done: str
    ) -> None:
        if not self.has_change_permission(request):
            messages.error(request, "Only a dispatcher can change work orders.")
            return
        outcomes: dict[str, int] = {}
        for obj in queryset.filter(deleted=False):
            try:
                op = submit_op(request, WORK_ORDER, obj.pk, "update", obj.version, fields)
            except OpRefused as refused:
                messages.error(request, f"{obj}: {refused}")
                continue
            outcomes[op.status] = outcomes.get(op.status, 0) + 1
        if outcomes.get(OpStatus.APPLIED):
            messages.success(request, f"{outcomes[OpStatus.APPLIED]} work order(s) {done}.")
