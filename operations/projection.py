"""Rebuild records from the event log alone, and compare with the live tables.

The live tables are a projection: replaying every record's bumping events in version
order must give exactly the same values, version, tombstone and per-field metadata.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from operations.models import Event
from operations.recording import Author, UserDirectory
from workorders.fields import Json
from workorders.registry import DELETED, ENTITIES, EntitySpec

BATCH = 1000


@dataclass
class RebuiltRecord:
    values: dict[str, Json]
    version: int = 0
    deleted: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Difference:
    entity: str
    entity_id: uuid.UUID
    what: str

    def __str__(self) -> str:
        return f"{self.entity} {self.entity_id}: {self.what}"


def replay(spec: EntitySpec, events: list[Event]) -> RebuiltRecord:
    record = RebuiltRecord(values=spec.values(spec.model()))
    for event in events:
        author = Author(event.actor_id, event.device_id, event.op_id, event.seq)
        record.version = event.version
        for name, (_, new) in event.changes.items():
            if name == DELETED:
                record.deleted = bool(new)
                continue
            record.values[name] = new
            record.meta[name] = author.meta(event.version)
    return record


def _events_by_record(spec: EntitySpec, ids: list[Any]) -> dict[uuid.UUID, list[Event]]:
    grouped: dict[uuid.UUID, list[Event]] = {}
    events = Event.objects.filter(entity=spec.name, entity_id__in=ids, bumped=True)
    for event in events.order_by("entity_id", "version"):
        grouped.setdefault(event.entity_id, []).append(event)
    return grouped


def _compare(spec: EntitySpec, obj: Any, rebuilt: RebuiltRecord) -> Iterator[str]:
    live = spec.values(obj)
    for name, value in rebuilt.values.items():
        if live[name] != value:
            yield f"{name}: live {live[name]!r} != events {value!r}"
    if obj.version != rebuilt.version:
        yield f"version: live {obj.version} != events {rebuilt.version}"
    if obj.deleted != rebuilt.deleted:
        yield f"deleted: live {obj.deleted} != events {rebuilt.deleted}"
    if obj.field_meta != rebuilt.meta:
        yield "field metadata differs"


def projection_check(fix: bool = False) -> list[Difference]:
    """Replay every record's events; report (and with ``fix`` overwrite) any difference."""
    differences: list[Difference] = []
    for spec in ENTITIES.values():
        seen: set[uuid.UUID] = set()
        live_ids = list(spec.model.objects.order_by("pk").values_list("pk", flat=True))
        for start in range(0, len(live_ids), BATCH):
            ids = live_ids[start : start + BATCH]
            events = _events_by_record(spec, ids)
            objects = spec.model.objects.select_related(*spec.select_related).in_bulk(ids)
            for pk, obj in objects.items():
                seen.add(pk)
                rebuilt = replay(spec, events.get(pk, []))
                found = list(_compare(spec, obj, rebuilt))
                differences += [Difference(spec.name, pk, what) for what in found]
                if found and fix:
                    _overwrite(spec, obj, rebuilt)
        orphans = (
            Event.objects.filter(entity=spec.name, bumped=True)
            .exclude(entity_id__in=seen)
            .values_list("entity_id", flat=True)
            .distinct()
        )
        differences += [Difference(spec.name, pk, "in the events, missing live") for pk in orphans]
    return differences


def _overwrite(spec: EntitySpec, obj: Any, rebuilt: RebuiltRecord) -> None:
    users = UserDirectory(obj.organization_id)
    with transaction.atomic():
        for name, value in rebuilt.values.items():
            field_spec = spec.fields[name]
            field_spec.kind.store(obj, field_spec.attr(name), value, users)
        obj.version, obj.deleted, obj.field_meta = rebuilt.version, rebuilt.deleted, rebuilt.meta
        obj.save()
