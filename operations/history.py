"""Read side: a record's past, rebuilt from the event log (its values at an earlier version,
and the timeline of a work order and its children). Selectors only: nothing here writes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from accounts.models import Device
from conflicts.models import Conflict
from operations.models import Event, EventKind
from workorders.fields import Json, display_value
from workorders.models import SyncedRecord, WorkOrder
from workorders.registry import ENTITIES, EntitySpec

TIMELINE_LIMIT = 200


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
        changes=[
            (name, display_value(old), display_value(new))
            for name, (old, new) in event.changes.items()
        ],
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
