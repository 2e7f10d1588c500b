"""The entity registry: every synced record type and the merge rule of each field.

This table is the one place where the contract's field rules live. Adding an entity means
adding its model and one ``EntitySpec`` here; the push, apply, pull and rebuild code is
generic over this registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from workorders.fields import (
    Boolean,
    Choice,
    DateTime,
    FieldKind,
    Json,
    Reference,
    Text,
    Username,
)
from workorders.models import ChecklistItem, Comment, Priority, Status, SyncedRecord, WorkOrder

# The pseudo-field of a record's tombstone: an event's ``changes`` carry a delete as
# {"__deleted__": [false, true]}, and an edit of a deleted record opens a conflict on it.
DELETED = "__deleted__"


class Rule(StrEnum):
    # Dispatcher-owned: a technician's concurrent edit is overridden (a dispatcher's applies).
    SERVER_WINS = "server_wins"
    LAST_WRITER_WINS = "last_writer_wins"
    # A concurrent different value opens a conflict for a person to resolve.
    MANUAL = "manual"
    # Create only; never conflicts, never lost; update/delete are rejected.
    APPEND = "append"


@dataclass(frozen=True)
class FieldSpec:
    rule: Rule
    kind: FieldKind
    required_on_create: bool = False
    # Cannot change after create (moving a child to another work order would move scope).
    immutable: bool = False
    # Only dispatchers may set it (technicians get ``forbidden``).
    dispatcher_only: bool = False
    # Model attribute when it differs from the wire name (foreign keys).
    attribute: str | None = None

    def attr(self, name: str) -> str:
        return self.attribute or name


@dataclass(frozen=True)
class EntitySpec:
    name: str
    model: type[SyncedRecord]
    fields: Mapping[str, FieldSpec]
    # Wire field naming the parent work order; None for the work order itself.
    parent_field: str | None = "work_order_id"
    technician_can_create: bool = True
    technician_can_delete: bool = True
    # Only the server (e.g. the upload flow) creates these; clients may only update them.
    client_can_create: bool = True
    append_only: bool = False
    # Models fetched alongside, to read fields such as usernames without extra queries.
    select_related: tuple[str, ...] = field(default_factory=tuple)

    def values(self, obj: SyncedRecord) -> dict[str, Json]:
        """The record's whole current state as canonical wire values."""
        return {name: spec.kind.load(obj, spec.attr(name)) for name, spec in self.fields.items()}

    def work_order_id(self, obj: SyncedRecord) -> str:
        if self.parent_field is None:
            return str(obj.pk)
        return str(getattr(obj, self.fields[self.parent_field].attr(self.parent_field)))


def _text(rule: Rule, max_length: int, required_on_create: bool = False) -> FieldSpec:
    return FieldSpec(rule, Text(max_length), required_on_create=required_on_create)


_SW, _LWW, _MANUAL, _APPEND = (
    Rule.SERVER_WINS,
    Rule.LAST_WRITER_WINS,
    Rule.MANUAL,
    Rule.APPEND,
)
_WORK_ORDER_REF = FieldSpec(
    _SW, Reference(), required_on_create=True, immutable=True, attribute="work_order_id"
)

WORK_ORDER = EntitySpec(
    name="work_order",
    model=WorkOrder,
    parent_field=None,
    technician_can_create=False,
    technician_can_delete=False,
    select_related=("assigned_to",),
    fields={
        "title": _text(_SW, 200, required_on_create=True),
        "description": _text(_SW, 10_000),
        "address": _text(_SW, 500),
        "customer_name": _text(_SW, 200),
        "customer_phone": _text(_SW, 50),
        "scheduled_start": FieldSpec(_SW, DateTime()),
        "scheduled_end": FieldSpec(_SW, DateTime()),
        "priority": FieldSpec(_SW, Choice(tuple(Priority.values))),
        "assigned_to": FieldSpec(_SW, Username(), dispatcher_only=True),
        "status": FieldSpec(_MANUAL, Choice(tuple(Status.values))),
        "technician_notes": _text(_LWW, 10_000),
        "arrived_at": FieldSpec(_LWW, DateTime()),
        "completed_at": FieldSpec(_LWW, DateTime()),
    },
)

CHECKLIST_ITEM = EntitySpec(
    name="checklist_item",
    model=ChecklistItem,
    fields={
        "work_order_id": _WORK_ORDER_REF,
        "label": _text(_SW, 500, required_on_create=True),
        "done": FieldSpec(_LWW, Boolean()),
    },
)

COMMENT = EntitySpec(
    name="comment",
    model=Comment,
    append_only=True,
    fields={
        "work_order_id": FieldSpec(
            _APPEND, Reference(), required_on_create=True, immutable=True, attribute="work_order_id"
        ),
        "body": _text(_APPEND, 10_000, required_on_create=True),
    },
)

ENTITIES: dict[str, EntitySpec] = {
    spec.name: spec for spec in (WORK_ORDER, CHECKLIST_ITEM, COMMENT)
}


def register(spec: EntitySpec) -> None:
    """Add an entity defined by another app (e.g. attachments from ``media``)."""
    ENTITIES[spec.name] = spec


def entity_for_model(model: type[SyncedRecord]) -> EntitySpec:
    return next(spec for spec in ENTITIES.values() if spec.model is model)
