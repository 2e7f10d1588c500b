"""Build a POST the way a browser would submit an admin change form, from its GET."""

from __future__ import annotations

from typing import Any

from django import forms


def _field_data(form: forms.BaseForm, data: dict[str, Any]) -> None:
    for name, field in form.fields.items():
        value = form[name].value()
        key = form.add_prefix(name)
        if isinstance(field, forms.BooleanField):
            if value:
                data[key] = "on"
        elif value is None:
            data[key] = ""
        elif isinstance(field, forms.DateTimeField):
            data[key] = form[name].field.widget.format_value(value) or ""
        elif isinstance(field, forms.ModelChoiceField):
            data[key] = str(getattr(value, "pk", value))
        else:
            data[key] = str(value)


def change_form_data(response: Any, **overrides: Any) -> dict[str, Any]:
    """The data the page would post unchanged, with ``overrides`` applied (inline fields
    named with their prefix, e.g. ``checklist-0-label``)."""
    context = response.context
    data: dict[str, Any] = {}
    _field_data(context["adminform"].form, data)
    for inline in context["inline_admin_formsets"]:
        formset = inline.formset
        _field_data(formset.management_form, data)
        for form in formset.forms:
            _field_data(form, data)
    for key, value in overrides.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data
