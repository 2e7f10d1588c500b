"""The admin site and who may use it: active staff dispatchers of an organisation, and
superusers. What each may do on each page follows in ``workspace.base``."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.http import HttpRequest
from django.urls import URLPattern, URLResolver, path

from accounts.models import Role, User
from accounts.throttles import login_blocked, login_failed, login_succeeded
from common.logging import log_event
from common.net import client_address


def dispatcher_of(user: Any) -> User | None:
    """The user as an active staff dispatcher of an organisation, else None."""
    if (
        isinstance(user, User)
        and user.is_active
        and user.is_staff
        and user.role == Role.DISPATCHER
        and user.organization_id is not None
    ):
        return user
    return None


def organization_of(user: Any) -> int | None:
    """The organisation whose records the user works on in the admin (None: all or none)."""
    return getattr(user, "organization_id", None)


def may_use_admin(user: Any) -> bool:
    """Staff dispatchers and superusers; technicians never, whatever their flags say."""
    return bool(user.is_active and (user.is_superuser or dispatcher_of(user) is not None))


class FieldsyncAdminAuthenticationForm(AdminAuthenticationForm):
    """Refuses technicians at the login form, with the usual message, instead of logging
    them in and bouncing them back; and locks a username (or an address) out for a while
    after repeated failures, shared with the API's token endpoint."""

    def clean(self) -> dict[str, Any]:
        username = str(self.data.get("username") or "")
        address = client_address(self.request) if self.request is not None else ""
        wait = login_blocked(username, address)
        if wait is not None:
            minutes = max(1, round(wait / 60))
            raise forms.ValidationError(
                f"Too many failed sign-ins for this account or from your address. "
                f"Try again in {minutes} minute{'s' if minutes != 1 else ''}.",
                code="throttled",
            )
        try:
            cleaned: dict[str, Any] = super().clean()
        except forms.ValidationError:
            login_failed(username, address)
            log_event("login.failed", username=username, address=address, via="workspace")
            raise
        login_succeeded(username)
        return cleaned

    def confirm_login_allowed(self, user: Any) -> None:
        super().confirm_login_allowed(user)
        if not may_use_admin(user):
            raise forms.ValidationError(
                self.error_messages["invalid_login"],
                code="invalid_login",
                params={"username": self.username_field.verbose_name},
            )


class FieldsyncAdminSite(admin.AdminSite):
    site_header = "fieldsync dispatch"
    site_title = "fieldsync dispatch"
    index_title = "Dispatcher workspace"
    login_form = FieldsyncAdminAuthenticationForm
    # The stock index with the dispatch board on top.
    index_template = "admin/workspace_index.html"

    def has_permission(self, request: HttpRequest) -> bool:
        return may_use_admin(request.user)

    def get_urls(self) -> list[URLPattern | URLResolver]:
        # Imported here: this module is loaded with the app registry, before any model.
        from workspace.board import views

        board = [
            path("board/", self.admin_view(views.board_view), name="board"),
            path("board/move/", self.admin_view(views.move_view), name="board_move"),
            path("board/changes/", self.admin_view(views.changes_view), name="board_changes"),
        ]
        return [*board, *super().get_urls()]
