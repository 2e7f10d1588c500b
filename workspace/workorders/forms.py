"""Forms that yield ops instead of saving models, with a stale-form check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from django import forms
from django.core.exceptions import ValidationError
from django.http import QueryDict

from operations.history import record_values_at
from workorders.fields import Json, Text, Username, display_value
from workorders.models import ChecklistItem, Comment, WorkOrder
from workorders.registry import CHECKLIST_ITEM, WORK_ORDER, EntitySpec
from workspace.workorders.wire import as_form_value, form_field, org_usernames, same_value, to_wire


@dataclass(frozen=True)
class StaleField:
    name: str
    loaded: str
    current: str
    mine: str | None  # None when the dispatcher did not change this field


class SyncedRecordForm(forms.ModelForm):  # type: ignore[type-arg]
    """A form over a synced record that never writes the model; it works out an op.

    The form carries the version it was loaded at. On submit, the fields the dispatcher
    changed (against the record *at that version*, rebuilt from the event log) become the
    op's fields and that version its ``base_version``. If the record moved on meanwhile,
    the form is shown again instead: what changed, the dispatcher's values kept, the other
    fields refreshed and the new version carried, so one click re-applies their changes.
    """

    spec: ClassVar[EntitySpec]
    editable: ClassVar[tuple[str, ...]]
    organization_id: ClassVar[int | None] = None

    base_version = forms.IntegerField(widget=forms.HiddenInput, required=False, min_value=0)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        usernames = org_usernames(self.organization_id) if self._has_username_field() else []
        passed = kwargs.get("initial") or {}
        # A new record's values are the model's defaults (status "new", priority "normal").
        loaded = self.spec.values(self.instance)
        for name in self.editable:
            spec = self.spec.fields[name]
            choices = list(usernames)
            if isinstance(spec.kind, Username) and loaded.get(name) not in (None, *usernames):
                choices.append(loaded[name])  # keep a deactivated assignee selectable
            required = spec.required_on_create and not isinstance(spec.kind, Username)
            label = name.replace("_", " ").capitalize()
            self.fields[name] = form_field(label, spec.kind, choices, required)
            if name not in passed:  # the admin passes ?field=value of an add link
                self.initial[name] = as_form_value(spec.kind, loaded[name])
        if self.existing:
            self.initial["base_version"] = self.instance.version
        self.op_fields: dict[str, Json] = {}
        self.stale: list[StaleField] = []

    @property
    def existing(self) -> bool:
        return not self.instance._state.adding

    def _has_username_field(self) -> bool:
        return any(isinstance(self.spec.fields[n].kind, Username) for n in self.editable)

    def _post_clean(self) -> None:
        """Never build the model instance from the form: ops change records, not forms."""

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        if any(name in self.errors for name in self.editable):
            return cleaned
        submitted = {n: to_wire(self.spec.fields[n].kind, cleaned.get(n)) for n in self.editable}
        if not self.existing:
            self.op_fields = {n: v for n, v in submitted.items() if v not in (None, "")}
            return cleaned
        base = cleaned.get("base_version")
        if base is None or base > self.instance.version:
            raise ValidationError("This form lost track of its record; reload the page.")
        loaded = record_values_at(self.spec, self.instance, base)
        self.op_fields = {
            n: v
            for n, v in submitted.items()
            if not same_value(self.spec.fields[n].kind, v, loaded[n])
        }
        if base != self.instance.version and self.op_fields:
            self._stop_stale(base, loaded, submitted)
        return cleaned

    def _stop_stale(self, base: int, loaded: dict[str, Json], submitted: dict[str, Json]) -> None:
        current = self.spec.values(self.instance)
        self.stale = [
            StaleField(
                name,
                display_value(loaded[name]),
                display_value(current[name]),
                display_value(submitted[name]) if name in self.op_fields else None,
            )
            for name in self.editable
            if name in self.op_fields or loaded[name] != current[name]
        ]
        data = QueryDict(mutable=True)
        data.update(self.data)
        data[self.add_prefix("base_version")] = str(self.instance.version)
        for name in self.editable:
            if name not in self.op_fields:
                data[self.add_prefix(name)] = as_form_value(
                    self.spec.fields[name].kind, current[name]
                )
        self.data = data
        changed = "; ".join(
            f"{s.name}: {s.loaded} → {s.current}" for s in self.stale if s.loaded != s.current
        )
        raise ValidationError(
            "Someone changed this %(what)s since you opened it (version %(base)s → "
            "%(now)s): %(changed)s. Your changes are kept in the form and nothing was "
            "saved; check them and re-apply.",
            code="stale",
            params={
                "what": self.spec.name.replace("_", " "),
                "base": base,
                "now": self.instance.version,
                "changed": changed or "no field you see here",
            },
        )


class WorkOrderForm(SyncedRecordForm):
    spec = WORK_ORDER
    editable = tuple(WORK_ORDER.fields)

    class Meta:
        model = WorkOrder
        fields: tuple[str, ...] = ()


class ChecklistItemForm(SyncedRecordForm):
    spec = CHECKLIST_ITEM
    editable = ("label", "done")

    class Meta:
        model = ChecklistItem
        fields: tuple[str, ...] = ()


class CommentForm(forms.ModelForm):  # type: ignore[type-arg]
    """A new comment (comments are append-only: existing ones are shown read-only)."""

    body = forms.CharField(
        label="Comment", max_length=10_000, strip=False, widget=forms.Textarea(attrs={"rows": 2})
    )

    class Meta:
        model = Comment
        fields: tuple[str, ...] = ()

    def _post_clean(self) -> None:
        """Never build the model instance from the form: ops change records, not forms."""

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        self.op_fields = {"body": to_wire(Text(10_000), cleaned.get("body", ""))}
        return cleaned
