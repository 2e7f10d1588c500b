"""The conflict queue: each conflict side by side, resolved through the conflicts service
(an event every device pulls), one at a time or in bulk for the simple cases."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from common.exceptions import DomainError
from conflicts.models import Conflict, ConflictStatus, Resolution
from conflicts.services import conflict_resolve
from workorders.fields import Username, display_value
from workorders.models import WorkOrder
from workorders.registry import DELETED, ENTITIES
from workspace.base import DispatcherAdmin, UuidSearchMixin
from workspace.paginator import EstimatedCountPaginator
from workspace.site import dispatcher_of
from workspace.workorders.wire import form_field, org_usernames, to_wire


class StatusFilter(admin.SimpleListFilter):
    """The queue shows open conflicts unless asked otherwise; resolved ones stay visible."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("resolved", "Resolved"), ("all", "All")]

    def choices(self, changelist: Any) -> Any:
        for choice in super().choices(changelist):
            if choice["display"] == "All" and choice["query_string"].endswith("?"):
                choice["display"] = "Open"
            yield choice

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "all":
            return queryset
        if self.value() == "resolved":
            return queryset.filter(status=ConflictStatus.RESOLVED)
        return queryset.filter(status=ConflictStatus.OPEN)


class FieldFilter(admin.SimpleListFilter):
    title = "field"
    parameter_name = "field"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        manual = {
            name
            for spec in ENTITIES.values()
            for name, field in spec.fields.items()
            if field.rule == "manual"
        }
        return [(name, name) for name in sorted(manual)] + [(DELETED, "deleted record")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(field=self.value()) if self.value() else queryset


class CustomValueForm(forms.Form):
    """The dispatcher's own value for the conflicting field, as the field's kind asks."""

    def __init__(self, conflict: Conflict, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kind = ENTITIES[conflict.entity].fields[conflict.field].kind
        usernames = []
        if isinstance(self.kind, Username):
            usernames = org_usernames(conflict.organization_id)
        self.fields["value"] = form_field("Custom value", self.kind, usernames, required=False)

    def wire_value(self) -> Any:
        return to_wire(self.kind, self.cleaned_data.get("value"))


class ConflictAdmin(UuidSearchMixin, DispatcherAdmin):
    offers_change = True  # changing a conflict means resolving it
    list_display = (
        "conflict_link",
        "work_order_title",
        "field",
        "base_column",
        "server_column",
        "client_column",
        "author",
        "created_at",
        "status",
        "resolution",
        "resolved_by",
    )
    list_display_links = None
    list_filter = (StatusFilter, FieldFilter)
    list_select_related = ("author", "resolved_by")
    ordering = ("-created_at",)
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    actions = ("resolve_with_server", "resolve_with_client")
    search_fields = ("=work_order_id", "=entity_id")
    uuid_search_fields = ("id", "work_order_id")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        title = WorkOrder.objects.filter(pk=OuterRef("work_order_id")).values("title")[:1]
        annotated: QuerySet[Any] = (
            super().get_queryset(request).annotate(work_order_title=Subquery(title))
        )
        return annotated

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        # Links from a work order open its conflicts: ?work_order_id=…
        return lookup == "work_order_id" or super().lookup_allowed(lookup, value, request)

    # --- columns -----------------------------------------------------------------------
    @admin.display(description="conflict")
    def conflict_link(self, obj: Conflict) -> SafeString:
        url = reverse("admin:conflicts_conflict_change", args=[obj.pk])
        label = "Resolve" if obj.status == ConflictStatus.OPEN else "View"
        return format_html('<a href="{}">{}</a>', url, label)

    @admin.display(description="work order")
    def work_order_title(self, obj: Any) -> SafeString:
        url = reverse("admin:workorders_workorder_change", args=[obj.work_order_id])
        return format_html('<a href="{}">{}</a>', url, obj.work_order_title or obj.work_order_id)

    @admin.display(description="base")
    def base_column(self, obj: Conflict) -> str:
        return display_value(obj.base_value)

    @admin.display(description="server")
    def server_column(self, obj: Conflict) -> str:
        return display_value(obj.server_value)

    @admin.display(description="technician's")
    def client_column(self, obj: Conflict) -> str:
        return display_value(obj.client_value)

    # --- the side-by-side page ------------------------------------------------------------
    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        conflict = self.get_object(request, object_id)
        if conflict is None:
            messages.warning(request, "No such conflict in your organisation.")
            return HttpResponseRedirect(reverse("admin:conflicts_conflict_changelist"))
        custom = None
        if conflict.field != DELETED:  # a deleted record is kept or restored, no third way
            custom = CustomValueForm(conflict, request.POST or None)
        if request.method == "POST":
            done = self._resolve_from_form(request, conflict, custom)
            if done:
                url = reverse("admin:workorders_workorder_change", args=[conflict.work_order_id])
                return HttpResponseRedirect(url)
        spec = ENTITIES[conflict.entity]
        record = spec.model.objects.filter(pk=conflict.entity_id).first()
        context = {
            **self.admin_site.each_context(request),
            **(extra_context or {}),
            "title": f"Conflict on {conflict.entity.replace('_', ' ')} {conflict.field}",
            "subtitle": None,
            "opts": self.opts,
            "conflict": conflict,
            "entity_label": conflict.entity.replace("_", " "),
            "current": display_value(spec.values(record).get(conflict.field)) if record else "—",
            "deleted": conflict.field == DELETED,
            "custom": custom,
            "can_resolve": conflict.status == ConflictStatus.OPEN
            and self.has_change_permission(request, conflict),
            "work_order": WorkOrder.objects.filter(pk=conflict.work_order_id).first(),
            "values": {
                "base": display_value(conflict.base_value),
                "server": display_value(conflict.server_value),
                "client": display_value(conflict.client_value),
            },
        }
        return TemplateResponse(request, "admin/conflicts/conflict/resolve.html", context)

    def _resolve_from_form(
        self, request: HttpRequest, conflict: Conflict, custom: CustomValueForm | None
    ) -> bool:
        user = dispatcher_of(request.user)
        if user is None or not self.has_change_permission(request, conflict):
            messages.error(request, "Only a dispatcher of this organisation can resolve it.")
            return False
        choice = request.POST.get("choice", "")
        value: Any = None
        if choice == Resolution.CUSTOM:
            if custom is None or not custom.is_valid():
                messages.error(request, "Enter a valid custom value.")
                return False
            value = custom.wire_value()
        try:
            if choice == Resolution.CUSTOM:
                conflict_resolve(user, conflict.pk, choice, value)
            else:
                conflict_resolve(user, conflict.pk, choice)
        except DomainError as exc:
            messages.error(request, exc.detail)
            return False
        messages.success(request, f"Conflict on {conflict.field} resolved ({choice}).")
        return True

    # --- bulk -------------------------------------------------------------------------------
    @admin.action(description="Resolve selected: keep the server value")
    def resolve_with_server(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._bulk(request, queryset, Resolution.SERVER)

    @admin.action(description="Resolve selected: accept the technician's value")
    def resolve_with_client(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._bulk(request, queryset, Resolution.CLIENT)

    def _bulk(self, request: HttpRequest, queryset: QuerySet[Any], choice: str) -> None:
        user = dispatcher_of(request.user)
        if user is None:
            messages.error(request, "Only a dispatcher can resolve conflicts.")
            return
        resolved = 0
        for conflict in queryset.filter(status=ConflictStatus.OPEN):
            try:
                conflict_resolve(user, conflict.pk, choice)
            except DomainError as exc:
                messages.error(request, f"{conflict}: {exc.detail}")
            else:
                resolved += 1
        messages.success(request, f"{resolved} conflict(s) resolved ({choice}).")
