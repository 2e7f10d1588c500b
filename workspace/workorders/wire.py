"""Synced fields as form fields: a wire value into a form and a cleaned form value back.
The conflict page uses these for its custom value too."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from accounts.models import Role, User
from workorders.fields import (
    Boolean,
    Choice,
    DateTime,
    FieldError,
    FieldKind,
    Json,
    Text,
    Username,
    parse_time,
)
from workspace.site import organization_of

# Seconds are kept (step=1) so an untouched time from a phone is not "changed" by the form.
FORM_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


def form_field(label: str, kind: FieldKind, usernames: list[str], required: bool) -> forms.Field:
    """The form field for a synced field. Values round-trip through ``as_form_value`` and
    ``to_wire``, so a field the dispatcher did not touch compares equal to what was loaded."""
    if isinstance(kind, Text):
        widget = forms.Textarea(attrs={"rows": 3}) if kind.max_length > 500 else forms.TextInput
        return forms.CharField(
            label=label, max_length=kind.max_length, required=required, strip=False, widget=widget
        )
    if isinstance(kind, Choice):
        return forms.ChoiceField(
            label=label, choices=[(c, c.replace("_", " ")) for c in kind.choices]
        )
    if isinstance(kind, DateTime):
        return forms.DateTimeField(
            label=f"{label} (UTC)",
            required=False,
            input_formats=[FORM_TIME_FORMAT, "%Y-%m-%dT%H:%M"],
            widget=forms.DateTimeInput(
                attrs={"type": "datetime-local", "step": "1"}, format=FORM_TIME_FORMAT
            ),
            validators=[_storable_time],
        )
    if isinstance(kind, Username):
        return forms.ChoiceField(
            label=label,
            required=False,
            choices=[("", "— unassigned —"), *[(u, u) for u in usernames]],
        )
    if isinstance(kind, Boolean):
        return forms.BooleanField(label=label, required=False)
    raise TypeError(f"no admin form field for {kind!r}")


def _storable_time(value: datetime) -> None:
    """The same bounds an op's time meets (``workorders.fields.parse_time``)."""
    try:
        parse_time(value.isoformat())
    except FieldError as exc:
        raise ValidationError(exc.detail) from exc


def to_wire(kind: FieldKind, value: Any) -> Json:
    """A cleaned form value as the canonical wire value an op carries."""
    if isinstance(kind, DateTime):
        return None if value is None else DateTime().parse(value.astimezone(UTC).isoformat())
    if isinstance(kind, Username):
        return value or None
    if isinstance(kind, Text):
        return str(value).replace("\r\n", "\n")  # browsers send CRLF; phones send LF
    return value


def as_form_value(kind: FieldKind, value: Json) -> Any:
    """A wire value as a bound form's data (what the browser would send back)."""
    if isinstance(kind, DateTime):
        return "" if value is None else _parse_time(value).strftime(FORM_TIME_FORMAT)
    if isinstance(kind, Boolean):
        return "on" if value else ""
    return "" if value is None else str(value)


def same_value(kind: FieldKind, a: Json, b: Json) -> bool:
    """Equal as far as the form can tell (a form time has no fraction of a second)."""
    if isinstance(kind, DateTime) and a is not None and b is not None:
        return _parse_time(a).replace(microsecond=0) == _parse_time(b).replace(microsecond=0)
    return bool(a == b)


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


def org_usernames(organization_id: int | None) -> list[str]:
    if organization_id is None:
        return []
    return list(
        User.objects.filter(organization_id=organization_id, is_active=True)
        .order_by("role", "username")
        .values_list("username", flat=True)
    )


def technicians_for(user: Any) -> QuerySet[User]:
    """Active technicians of the user's organisation (of every one, for a superuser)."""
    rows = User.objects.filter(role=Role.TECHNICIAN, is_active=True).order_by("username")
    organization_id = organization_of(user)
    return rows if organization_id is None else rows.filter(organization_id=organization_id)
