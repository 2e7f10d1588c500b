"""Organisations, people and tokens in the dispatchers' workspace: create technicians and
dispatchers, issue and revoke tokens. Every write calls an ``accounts.services`` function, as
the API and the CLI do."""

from __future__ import annotations

import zoneinfo
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse

from accounts.exceptions import AccountError
from accounts.models import ApiToken, Organization, Role, User
from accounts.services import (
    field_user_create,
    organization_set_time_zone,
    token_issue,
    token_revoke,
)
from common.exceptions import DomainError
from workspace.base import DispatcherAdmin
from workspace.site import dispatcher_of


class OrganizationForm(forms.ModelForm):  # type: ignore[type-arg]
    time_zone = forms.ChoiceField(
        choices=[(zone, zone) for zone in sorted(zoneinfo.available_timezones())],
        help_text="Where the working day is: the dispatch board shows days in this zone.",
    )

    class Meta:
        model = Organization
        fields = ("time_zone",)


class OrganizationAdmin(DispatcherAdmin):
    """Organisations come to be with their first user (``create_field_user``); a dispatcher
    sets where their working day is."""

    offers_change = True
    organization_path = "id"
    form = OrganizationForm
    list_display = ("name", "time_zone", "people", "created_at")
    fields = ("name", "time_zone", "created_at")
    readonly_fields = ("name", "created_at")

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        organization_set_time_zone(obj.pk, form.cleaned_data["time_zone"])

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
            raise AccountError("no_organization", "name the organisation of the new user")
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
