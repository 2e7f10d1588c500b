"""People, tokens and devices in the dispatchers' workspace: create technicians and
dispatchers, issue and revoke tokens, watch each device's sync health, deactivate a lost one.
Every write calls an ``accounts.services`` function, as the API and the CLI do."""

from __future__ import annotations

import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from accounts.models import ApiToken, Device, DeviceKind, Organization, Role, User
from accounts.services import device_deactivate, field_user_create, token_issue, token_revoke
from common.admin_site import DispatcherAdmin, dispatcher_of
from common.exceptions import DomainError
from common.paginator import EstimatedCountPaginator
from operations.models import Operation, OpStatus
from operations.selectors import device_health

REJECTED_OPS_SHOWN = 50


@admin.register(Organization)
class OrganizationAdmin(DispatcherAdmin):
    """Organisations come to be with their first user (``create_field_user``)."""

    organization_path = "id"
    list_display = ("name", "people", "created_at")
    fields = ("name", "created_at")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        annotated: QuerySet[Any] = super().get_queryset(request).annotate(people=Count("users"))
        return annotated

    @admin.display(description="people")
    def people(self, org: Any) -> int:
        return int(org.people)


# ============================================================================================
# People and tokens
# ============================================================================================
class FieldUserForm(forms.ModelForm):  # type: ignore[type-arg]
    """A new technician or dispatcher, created by ``field_user_create`` (not by the form)."""

    username = forms.RegexField(
        regex=r"^[\w.@+-]+\Z", max_length=150, help_text="Letters, digits and @/./+/-/_ only."
    )
    password = forms.CharField(
        widget=forms.PasswordInput(render_value=False), min_length=8, strip=False
    )
    role = forms.ChoiceField(choices=Role.choices, initial=Role.TECHNICIAN)
    organization_name = forms.CharField(
        max_length=100,
        required=False,
        label="Organisation",
        help_text="Superusers only; a dispatcher adds people to their own organisation.",
    )

    class Meta:
        model = User
        fields: tuple[str, ...] = ()

    def _post_clean(self) -> None:
        """The service creates the user; the form never builds one."""

    def clean_username(self) -> str:
        username = str(self.cleaned_data["username"])
        if User.objects.filter(username=username).exists():
            raise forms.ValidationError("This username is taken.")
        return username


class ApiTokenInline(admin.TabularInline):  # type: ignore[type-arg]
    model = ApiToken
    extra = 0
    can_delete = False
    fields = ("prefix", "device", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(User)
class FieldUserAdmin(DispatcherAdmin):
    offers_add = True
    add_form = FieldUserForm
    list_display = ("username", "role", "organization", "is_active", "last_login", "date_joined")
    list_filter = ("role", "is_active")
    list_select_related = ("organization",)
    search_fields = ("username", "first_name", "last_name", "email")
    ordering = ("username",)
    actions = ("issue_tokens", "revoke_tokens")
    inlines = (ApiTokenInline,)
    fields = (
        "username",
        "role",
        "organization",
        "is_active",
        "is_staff",
        "is_superuser",
        "last_login",
        "date_joined",
    )
    readonly_fields = fields

    def get_form(
        self, request: HttpRequest, obj: Any | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            return FieldUserForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any | None = None) -> Any:
        if obj is not None:
            return self.fields
        names = ["username", "password", "role"]
        return [*names, "organization_name"] if request.user.is_superuser else names

    def get_readonly_fields(self, request: HttpRequest, obj: Any | None = None) -> Any:
        return self.readonly_fields if obj is not None else ()

    def get_inlines(self, request: HttpRequest, obj: Any | None) -> Any:
        return self.inlines if obj is not None else ()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return dispatcher_of(request.user) is not None or request.user.is_superuser

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        data = form.cleaned_data
        dispatcher = dispatcher_of(request.user)
        org_name = data.get("organization_name") or (
            dispatcher.organization.name if dispatcher and dispatcher.organization else ""
        )
        if not org_name:
            raise DomainError("no_organization", "name the organisation of the new user")
        user = field_user_create(org_name, data["role"], data["username"], data["password"])
        obj.pk = user.pk
        obj.refresh_from_db()

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            return super().add_view(request, form_url, extra_context)
        except DomainError as exc:
            messages.error(request, exc.detail)
            return HttpResponseRedirect(request.get_full_path())

    @admin.action(description="Issue a new API token (shown once)")
    def issue_tokens(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse | None:
        if dispatcher_of(request.user) is None and not request.user.is_superuser:
            return None
        issued = [(user, token_issue(user)) for user in queryset.filter(is_active=True)]
        # Rendered, not redirected: the key must not travel through a cookie or the session.
        return TemplateResponse(
            request,
            "admin/accounts/user/tokens_issued.html",
            {**self.admin_site.each_context(request), "title": "Tokens issued", "issued": issued},
        )

    @admin.action(description="Revoke every token of the selected people")
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        tokens = ApiToken.objects.filter(user__in=queryset, revoked_at__isnull=True)
        revoked = 0
        for token_id in tokens.values_list("pk", flat=True):
            token_revoke(token_id)
            revoked += 1
        messages.success(request, f"{revoked} token(s) revoked.")


@admin.register(ApiToken)
class ApiTokenAdmin(DispatcherAdmin):
    organization_path = "user__organization_id"
    list_display = ("prefix", "user", "device", "created_at", "last_used_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    list_select_related = ("user",)
    search_fields = ("user__username", "prefix")
    ordering = ("-created_at",)
    actions = ("revoke",)
    fields = list_display
    readonly_fields = list_display

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        if dispatcher_of(request.user) is None:
            messages.error(request, "Only a dispatcher can revoke tokens.")
            return
        ids = list(queryset.filter(revoked_at__isnull=True).values_list("pk", flat=True))
        for token_id in ids:
            token_revoke(token_id)
        messages.success(request, f"{len(ids)} token(s) revoked.")


# ============================================================================================
# Devices and their sync health
# ============================================================================================
def _op_count(status: str) -> Coalesce:
    count = (
        Operation.objects.filter(device_id=OuterRef("pk"), status=status)
        .order_by()
        .values("device_id")
        .annotate(n=Count("*"))
        .values("n")
    )
    return Coalesce(Subquery(count, output_field=IntegerField()), Value(0))


@admin.register(Device)
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
    list_select_related = ("user",)
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
        return device.last_error[:80] or "—"

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
