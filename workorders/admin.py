"""Work orders in the dispatchers' workspace: plan, edit, reassign, cancel, and read a
record's whole history.

Nothing here saves a model. Every change a dispatcher makes becomes an op of their admin
device (``operations.services.op_submit_local``), applied by the same code as a phone's op:
same version bump, same merge rules, same event, same feed entry for the phones to pull.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.core.exceptions import ValidationError
from django.db.models import (
    Count,
    DateTimeField,
    Exists,
    IntegerField,
    Max,
    Model,
    OuterRef,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.functions import Coalesce, Greatest
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from accounts.models import Device, DeviceKind, Role, User
from common.admin_site import DispatcherAdmin, dispatcher_of, organization_of
from common.exceptions import DomainError
from common.paginator import EstimatedCountPaginator
from conflicts.models import Conflict, ConflictStatus
from media.models import Upload, UploadStatus
from media.storage import presigned_get
from operations.models import Event, EventKind, Operation, OpStatus
from operations.services import op_submit_local
from workorders.fields import Boolean, Choice, DateTime, FieldKind, Json, Text, Username
from workorders.models import ChecklistItem, Comment, Status, SyncedRecord, WorkOrder
from workorders.registry import (
    CHECKLIST_ITEM,
    COMMENT,
    ENTITIES,
    WORK_ORDER,
    EntitySpec,
    entity_for_model,
)

# Seconds are kept (step=1) so an untouched time from a phone is not "changed" by the form.
FORM_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
TIMELINE_LIMIT = 200


# ============================================================================================
# Synced fields as form fields
# ============================================================================================
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


def display(value: Json) -> str:
    return "—" if value is None or value == "" else str(value)


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


def record_values_at(spec: EntitySpec, record: SyncedRecord, version: int) -> dict[str, Json]:
    """The record's values as they were at ``version``, rebuilt from the event log: the
    first change after ``version`` of each field remembers its old value."""
    values = spec.values(record)
    later = (
        Event.objects.filter(entity=spec.name, entity_id=record.pk, bumped=True)
        .filter(version__gt=version)
        .order_by("-version")
        .values_list("changes", flat=True)
    )
    for changes in later:
        for name, (old, _new) in changes.items():
            if name in values:
                values[name] = old
    return values


# ============================================================================================
# Forms that yield ops, with a stale-form check
# ============================================================================================
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
                display(loaded[name]),
                display(current[name]),
                display(submitted[name]) if name in self.op_fields else None,
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


# ============================================================================================
# Submitting ops
# ============================================================================================
class OpRefused(Exception):
    """An op the sync core rejected; the whole admin request is rolled back."""


def submit_op(
    request: HttpRequest,
    spec: EntitySpec,
    entity_id: uuid.UUID,
    action: str,
    base_version: int,
    fields: dict[str, Json],
) -> Operation:
    """Submit one op as the dispatcher's admin device and tell them how it ended."""
    user = dispatcher_of(request.user)
    if user is None:
        raise OpRefused("only a dispatcher of this organisation can change records")
    try:
        op = op_submit_local(user, spec.name, entity_id, action, base_version, fields)
    except DomainError as exc:
        raise OpRefused(f"{exc.code}: {exc.detail}") from exc
    if op.status == OpStatus.REJECTED:
        raise OpRefused(f"{op.code}: {op.detail}")
    label = spec.name.replace("_", " ")
    if op.status == OpStatus.CONFLICT:
        messages.warning(
            request,
            f"Part of your {label} edit conflicts with a change from the field: the current "
            f"value was kept and {len(op.conflict_ids)} conflict(s) opened for you to resolve.",
        )
    if op.overridden_fields:
        messages.warning(
            request, f"Kept the newer value of: {', '.join(op.overridden_fields)} ({label})."
        )
    return op


# ============================================================================================
# List filters
# ============================================================================================
class TechnicianFilter(admin.SimpleListFilter):
    title = "technician"
    parameter_name = "technician"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        users = technicians_for(request.user)
        named = [(str(pk), name) for pk, name in users.values_list("pk", "username")]
        return [("none", "Unassigned"), *named]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == "none":
            return queryset.filter(assigned_to__isnull=True)
        if value and value.isdigit():
            return queryset.filter(assigned_to_id=int(value))
        return queryset


class ScheduledDayFilter(admin.SimpleListFilter):
    title = "scheduled day"
    parameter_name = "scheduled_day"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        today = timezone.now().date()
        days = [today + timedelta(days=offset) for offset in range(-1, 7)]
        names = {-1: "Yesterday", 0: "Today", 1: "Tomorrow"}
        return [
            *[(d.isoformat(), names.get((d - today).days, d.strftime("%a %d %b"))) for d in days],
            ("none", "Unscheduled"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == "none":
            return queryset.filter(scheduled_start__isnull=True)
        if not value:
            return queryset
        try:
            day = date.fromisoformat(value)
        except ValueError:
            return queryset
        start = datetime.combine(day, time.min, tzinfo=UTC)
        return queryset.filter(
            scheduled_start__gte=start, scheduled_start__lt=start + timedelta(days=1)
        )


class YesFilter(admin.SimpleListFilter):
    """A yes/no filter on an ``Exists`` condition."""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def condition(self) -> Exists:
        raise NotImplementedError

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(self.condition())
        if self.value() == "no":
            return queryset.filter(~self.condition())
        return queryset


class OpenConflictsFilter(YesFilter):
    title = "open conflicts"
    parameter_name = "open_conflicts"

    def condition(self) -> Exists:
        return Exists(
            Conflict.objects.filter(work_order_id=OuterRef("pk"), status=ConflictStatus.OPEN)
        )


class UploadingFilter(YesFilter):
    title = "attachments still uploading"
    parameter_name = "uploading"

    def condition(self) -> Exists:
        return Exists(
            Upload.objects.filter(
                work_order_id=OuterRef("pk"),
                status__in=[UploadStatus.UPLOADING, UploadStatus.VERIFYING],
            )
        )


class RecordStateFilter(admin.SimpleListFilter):
    """Live records by default; deleted ones (tombstones) on request."""

    title = "record"
    parameter_name = "record"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("deleted", "Deleted")]

    def choices(self, changelist: Any) -> Any:
        for choice in super().choices(changelist):
            if choice["display"] == "All":
                choice["display"] = "Live"
            yield choice

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(deleted=self.value() == "deleted")


# ============================================================================================
# Inlines: checklist, comments, attachments
# ============================================================================================
class SyncedInline(admin.TabularInline):  # type: ignore[type-arg]
    """Inline rows of a work order's children; writes go through ``WorkOrderAdmin``."""

    extra = 1
    show_change_link = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        rows: QuerySet[Any] = super().get_queryset(request)
        return rows.filter(deleted=False).order_by("created_at")

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return True  # the parent's admin decided who sees the work order

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return dispatcher_of(request.user) is not None

    def get_formset(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        formset = super().get_formset(request, obj, **kwargs)
        organization_id = obj.organization_id if obj is not None else None
        formset.form = type(
            formset.form.__name__,
            (formset.form,),
            {"organization_id": organization_id or organization_of(request.user)},
        )
        return formset


class ChecklistInline(SyncedInline):
    model = ChecklistItem
    form = ChecklistItemForm
    fields = ("label", "done", "base_version")
    verbose_name = "checklist item"

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return dispatcher_of(request.user) is not None

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return dispatcher_of(request.user) is not None


class CommentInline(SyncedInline):
    """Append-only: existing comments are read-only; a dispatcher may add one."""

    model = Comment
    form = CommentForm
    fields = ("body", "author", "written_at")
    readonly_fields = ("author", "written_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        created = Event.objects.filter(entity=COMMENT.name, entity_id=OuterRef("pk"), version=1)
        rows: QuerySet[Any] = super().get_queryset(request)
        annotated: QuerySet[Any] = rows.annotate(
            author_name=Subquery(created.values("actor__username")[:1])
        )
        return annotated

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    @admin.display(description="author")
    def author(self, obj: Comment) -> str:
        return getattr(obj, "author_name", None) or "—"

    @admin.display(description="written (UTC)")
    def written_at(self, obj: Comment) -> str:
        return obj.created_at.strftime("%Y-%m-%d %H:%M") if obj.pk else "—"


class AttachmentInline(admin.TabularInline):  # type: ignore[type-arg]
    """Files the field attached or is still uploading (read-only: the upload flow owns them)."""

    model = Upload
    fk_name = "work_order"
    extra = 0
    can_delete = False
    verbose_name = "attachment"
    fields = ("preview", "filename", "kind", "size", "progress", "note", "download")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).order_by("created_at")

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return True

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    @admin.display(description="preview")
    def preview(self, upload: Upload) -> SafeString | str:
        if not upload.thumbnail_key:
            return "—"
        return format_html(
            '<img class="fs-thumb" src="{}" alt="thumbnail of {}">',
            presigned_get(upload.thumbnail_key),
            upload.filename,
        )

    @admin.display(description="size")
    def size(self, upload: Upload) -> str:
        return _human_size(upload.length)

    @admin.display(description="status")
    def progress(self, upload: Upload) -> SafeString:
        if upload.status == UploadStatus.UPLOADING:
            percent = 100 * upload.offset // upload.length if upload.length else 0
            return format_html(
                '<progress max="100" value="{}" aria-label="uploaded">{} %</progress> '
                "uploading {} %",
                percent,
                percent,
                percent,
            )
        if upload.status == UploadStatus.FAILED:
            return format_html(
                '<span class="fs-failed">failed</span>: {} {}', upload.code, upload.detail
            )
        return format_html("{}", upload.status)

    @admin.display(description="download")
    def download(self, upload: Upload) -> SafeString | str:
        if upload.status != UploadStatus.ATTACHED:
            return "—"
        return format_html(
            '<a href="{}" download>download<span class="visually-hidden"> {}</span></a>',
            presigned_get(upload.object_key),
            upload.filename,
        )


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


# ============================================================================================
# The timeline of a record
# ============================================================================================
@dataclass
class TimelineEntry:
    """One thing that happened to the work order or one of its children."""

    when: datetime
    kind: str
    subject: str
    who: str
    device: Device | None
    received_at: datetime | None = None
    version: int | None = None
    changes: list[tuple[str, str, str]] = field(default_factory=list)
    overridden: list[str] = field(default_factory=list)
    opened: list[Conflict] = field(default_factory=list)
    resolved: list[Conflict] = field(default_factory=list)


def work_order_timeline(work_order: WorkOrder) -> tuple[list[TimelineEntry], bool]:
    """Every event of the work order and its children, newest first (at most
    ``TIMELINE_LIMIT``), with the conflicts each opened or resolved."""
    subjects: dict[uuid.UUID, str] = {work_order.pk: "work order"}
    for spec in ENTITIES.values():
        if spec.parent_field is not None:
            children = spec.model.objects.filter(work_order_id=work_order.pk)
            subjects |= dict.fromkeys(
                children.values_list("pk", flat=True), spec.name.replace("_", " ")
            )
    events = list(
        Event.objects.filter(organization_id=work_order.organization_id, entity_id__in=subjects)
        .select_related("actor", "device")
        .order_by("-created_at", "-id")[: TIMELINE_LIMIT + 1]
    )
    conflicts = list(
        Conflict.objects.filter(work_order_id=work_order.pk)
        .select_related("author", "device", "resolved_by")
        .order_by("created_at")
    )
    entries = [_event_entry(event, subjects, conflicts) for event in events[:TIMELINE_LIMIT]]
    # An op whose only effect was to open a conflict wrote no event; show the conflict.
    shown = {c.id for entry in entries for c in entry.opened}
    entries += [
        TimelineEntry(
            when=c.created_at,
            kind="conflict",
            subject=subjects.get(c.entity_id, c.entity.replace("_", " ")),
            who=c.author.username,
            device=c.device,
            opened=[c],
        )
        for c in conflicts
        if c.id not in shown and (not events or c.created_at >= events[-1].created_at)
    ]
    entries.sort(key=lambda entry: entry.when, reverse=True)
    return entries, len(events) > TIMELINE_LIMIT


def _event_entry(
    event: Event, subjects: dict[uuid.UUID, str], conflicts: list[Conflict]
) -> TimelineEntry:
    opened = set(event.conflict_ids)
    return TimelineEntry(
        when=event.created_at,
        kind=event.kind,
        subject=subjects.get(event.entity_id, event.entity),
        who=event.actor.username if event.actor else "system",
        device=event.device,
        received_at=event.received_at,
        version=event.version,
        changes=[(name, display(old), display(new)) for name, (old, new) in event.changes.items()],
        overridden=list(event.overridden_fields),
        opened=[c for c in conflicts if str(c.id) in opened],
        resolved=[
            c
            for c in conflicts
            if event.kind == EventKind.RESOLVE
            and c.entity_id == event.entity_id
            and c.resolved_by_id == event.actor_id
            and c.version_after == event.version
        ],
    )


# ============================================================================================
# The work order admin
# ============================================================================================
class WorkOrderActionForm(ActionForm):
    assign_to = forms.CharField(
        required=False, label="Technician", widget=forms.Select(choices=[("", "—")])
    )


def _open_conflicts() -> Subquery:
    return Subquery(
        Conflict.objects.filter(work_order_id=OuterRef("pk"), status=ConflictStatus.OPEN)
        .order_by()
        .values("work_order_id")
        .annotate(n=Count("*"))
        .values("n"),
        output_field=IntegerField(),
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


@admin.register(WorkOrder)
class WorkOrderAdmin(DispatcherAdmin):
    offers_add = offers_change = offers_delete = True
    form = WorkOrderForm
    action_form = WorkOrderActionForm
    inlines = (ChecklistInline, CommentInline, AttachmentInline)
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

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        annotated: QuerySet[Any] = (
            super()
            .get_queryset(request)
            .annotate(open_conflicts=Coalesce(_open_conflicts(), Value(0)), last_sync=_last_sync())
        )
        return annotated

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

    # --- saving: ops, never model saves ---------------------------------------------------
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
