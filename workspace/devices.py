"""Devices and their sync health in the dispatchers' workspace: watch each device, deactivate
a lost one (through ``accounts.services``, as the API and the CLI do)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.contrib import admin, messages
from django.db.models import OuterRef, QuerySet
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from accounts.models import Device, DeviceKind
from accounts.services import device_deactivate
from operations.models import DeviceSyncState, Operation, OpStatus
from operations.selectors import device_health
from workspace.annotations import count_of
from workspace.base import DispatcherAdmin
from workspace.paginator import EstimatedCountPaginator

REJECTED_OPS_SHOWN = 50


def _sync_state(device: Device) -> DeviceSyncState:
    """The device's sync state, or a fresh one's defaults before its first apply."""
    state: DeviceSyncState | None = getattr(device, "sync_state", None)
    return state or DeviceSyncState(device=device)


def _op_count(status: str) -> Coalesce:
    return count_of(Operation.objects.filter(device_id=OuterRef("pk"), status=status), "device_id")


class DeviceAdmin(DispatcherAdmin):
    list_display = (
        "short_id",
        "user",
        "kind",
        "is_active",
        "last_push_at",
        "last_pull_at",
        "pending",
        "applied",
        "rejected",
        "in_conflict",
        "last_error_short",
    )
    list_filter = ("kind", "is_active")
    list_select_related = ("user", "sync_state")
    search_fields = ("user__username",)
    ordering = ("-last_push_at",)
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    actions = ("deactivate_devices",)
    change_form_template = "admin/accounts/device/change_form.html"
    fields = (
        "id",
        "user",
        "kind",
        "is_active",
        "created_at",
        "last_push_at",
        "last_pull_at",
        "done_seq",
        "gap_seq",
        "gap_since",
        "skipped_seqs",
        "compacted_seq",
        "last_error",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        annotated: QuerySet[Any] = (
            super()
            .get_queryset(request)
            .annotate(
                n_pending=_op_count(OpStatus.PENDING),
                n_applied=_op_count(OpStatus.APPLIED),
                n_rejected=_op_count(OpStatus.REJECTED),
                n_conflict=_op_count(OpStatus.CONFLICT),
            )
        )
        return annotated

    def get_urls(self) -> list[URLPattern]:
        deactivate = path(
            "<uuid:device_id>/deactivate/",
            self.admin_site.admin_view(self.deactivate_view),
            name="accounts_device_deactivate",
        )
        return [deactivate, *super().get_urls()]

    # --- columns -----------------------------------------------------------------------
    @admin.display(description="device", ordering="id")
    def short_id(self, device: Device) -> str:
        return str(device.id)[:8]

    @admin.display(description="pending")
    def pending(self, device: Any) -> int:
        return int(device.n_pending)

    @admin.display(description="applied")
    def applied(self, device: Any) -> int:
        return int(device.n_applied)

    @admin.display(description="rejected")
    def rejected(self, device: Any) -> SafeString | int:
        if not device.n_rejected:
            return 0
        url = reverse("admin:operations_operation_changelist")
        return format_html(
            '<a href="{}?device={}&amp;status__exact=rejected">{}</a>',
            url,
            device.pk,
            device.n_rejected,
        )

    @admin.display(description="in conflict")
    def in_conflict(self, device: Any) -> int:
        return int(device.n_conflict)

    @admin.display(description="last error")
    def last_error_short(self, device: Device) -> str:
        return self.last_error(device)[:80] or "—"

    # --- the sync engine's state of the device (operations.DeviceSyncState) ---------------
    @admin.display(description="last error")
    def last_error(self, device: Device) -> str:
        return _sync_state(device).last_error

    @admin.display(description="done seq")
    def done_seq(self, device: Device) -> int:
        return _sync_state(device).done_seq

    @admin.display(description="gap seq")
    def gap_seq(self, device: Device) -> int | None:
        return _sync_state(device).gap_seq

    @admin.display(description="gap since")
    def gap_since(self, device: Device) -> datetime | None:
        return _sync_state(device).gap_since

    @admin.display(description="skipped seqs")
    def skipped_seqs(self, device: Device) -> list[list[int]]:
        return list(_sync_state(device).skipped_seqs)

    @admin.display(description="compacted seq")
    def compacted_seq(self, device: Device) -> int:
        return _sync_state(device).compacted_seq

    # --- the health page -----------------------------------------------------------------
    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        device = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if device is not None:
            extra |= {
                "health": device_health(device),
                "rejected_ops": Operation.objects.filter(
                    device_id=device.pk, status=OpStatus.REJECTED
                ).order_by("-seq")[:REJECTED_OPS_SHOWN],
                "pending_ops": Operation.objects.filter(
                    device_id=device.pk, status=OpStatus.PENDING
                ).order_by("seq")[:REJECTED_OPS_SHOWN],
                "may_deactivate": self._may_deactivate(request, device),
            }
        return super().change_view(request, object_id, form_url, extra)

    def _may_deactivate(self, request: HttpRequest, device: Device) -> bool:
        # The admin device carries the dispatcher's own edits; it is not a phone to lose.
        return (
            device.is_active
            and device.kind == DeviceKind.CLIENT
            and self.may_write(request, device)
        )

    def deactivate_view(self, request: HttpRequest, device_id: uuid.UUID) -> HttpResponse:
        device = get_object_or_404(self.get_queryset(request), pk=device_id)
        if request.method != "POST" or not self._may_deactivate(request, device):
            messages.error(request, "This device cannot be deactivated from here.")
        else:
            revoked = device_deactivate(device.pk)
            messages.success(
                request, f"Device {str(device.pk)[:8]} deactivated; {revoked} token(s) revoked."
            )
        return HttpResponseRedirect(reverse("admin:accounts_device_change", args=[device.pk]))

    @admin.action(description="Deactivate selected devices (their tokens stop working)")
    def deactivate_devices(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        done = 0
        for device in queryset:
            if self._may_deactivate(request, device):
                device_deactivate(device.pk)
                done += 1
        messages.success(request, f"{done} device(s) deactivated.")
