"""The one way to change a synced record: every write, whoever makes it (a device's op, a
conflict resolution, the upload flow, the admin), goes through a ``ChangeSet`` and leaves
the same trail: the new record state, an ``Event`` with old → new values, and a feed entry.

A ``ChangeSet`` lives inside one transaction. Record rows are locked in a global order
(entity registry order, then id) so concurrent writers never deadlock, and the feed
positions are taken last, under the organisation's feed lock, right before commit.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from django.db import connection
from django.db.models import AutoField, Field, Model
from django.utils import timezone

from accounts.models import User
from common.db import fetch_prepared
from operations.models import Event, EventKind, FeedEntry, FeedKind, Operation
from workorders.fields import Json
from workorders.models import SyncedRecord, WorkOrder
from workorders.reading import records_locked
from workorders.registry import DELETED, ENTITIES, WORK_ORDER, EntitySpec

# Advisory lock class for the feed (the second key is the organisation id).
FEED_LOCK_CLASS = 0x46454544


class OpRef(Protocol):
    """What the feed needs of an op whose outcome it announces."""

    @property
    def op_id(self) -> uuid.UUID: ...
    @property
    def device_id(self) -> uuid.UUID: ...


@dataclass(frozen=True)
class Author:
    """Who makes a change: a device's op, or a person acting outside any op."""

    actor_id: int | None
    device_id: uuid.UUID | None = None
    op_id: uuid.UUID | None = None
    seq: int | None = None
    received_at: datetime | None = None

    @classmethod
    def for_op(cls, op: Operation) -> Author:
        return cls(op.user_id, op.device_id, op.op_id, op.seq, op.received_at)

    def meta(self, version: int) -> dict[str, Any]:
        return {
            "v": version,
            "d": None if self.device_id is None else str(self.device_id),
            "s": self.seq,
            "op": None if self.op_id is None else str(self.op_id),
        }


class UserDirectory:
    """Resolves usernames within one organisation, cached for the change set's lifetime."""

    def __init__(self, organization_id: int) -> None:
        self.organization_id = organization_id
        self._cache: dict[str, User | None] = {}

    def user_for_username(self, username: str) -> Model | None:
        if username not in self._cache:
            self._cache[username] = User.objects.filter(
                organization_id=self.organization_id, username=username, is_active=True
            ).first()
        return self._cache[username]


@dataclass
class _FeedRow:
    entity: str
    entity_id: uuid.UUID
    work_order_id: uuid.UUID
    op_id: uuid.UUID | None
    reassigned_from: int | None = None


@dataclass
class ChangeSet:
    organization_id: int
    # Write each changed record at once instead of once per change set in ``flush``. The
    # apply loop's op-by-op fallback needs it, to undo one op's in-memory changes exactly.
    immediate: bool = False
    events: list[Event] = field(default_factory=list)
    _created: dict[tuple[str, uuid.UUID], SyncedRecord] = field(default_factory=dict)
    _dirty: dict[tuple[str, uuid.UUID], SyncedRecord] = field(default_factory=dict)
    _feed: dict[tuple[str, uuid.UUID], _FeedRow] = field(default_factory=dict)
    _outcomes: list[OpRef] = field(default_factory=list)
    _reassigned: dict[uuid.UUID, int | None] = field(default_factory=dict)
    users: UserDirectory = field(init=False)

    def __post_init__(self) -> None:
        self.users = UserDirectory(self.organization_id)

    # --- reading ----------------------------------------------------------------------
    def lock(self, keys: Iterable[tuple[str, uuid.UUID]]) -> dict[tuple[str, uuid.UUID], Any]:
        """Lock and load existing records (any organisation; callers check scope)."""
        return lock_records(keys)

    # --- writing ----------------------------------------------------------------------
    def create(
        self, spec: EntitySpec, entity_id: uuid.UUID, values: dict[str, Json], author: Author
    ) -> SyncedRecord:
        obj = spec.model(id=entity_id, organization_id=self.organization_id, version=1)
        for name, value in values.items():
            field_spec = spec.fields[name]
            field_spec.kind.store(obj, field_spec.attr(name), value, self.users)
        obj.field_meta = {name: author.meta(1) for name in values}
        if self.immediate:
            obj.save(force_insert=True)
        else:  # inserted in ``flush``, with every other record this change set creates
            self._created[(spec.name, obj.pk)] = obj
        self._record_event(
            spec, obj, EventKind.CREATE, {k: [None, v] for k, v in values.items()}, author
        )
        return obj

    def update(
        self,
        spec: EntitySpec,
        obj: SyncedRecord,
        changes: dict[str, Json],
        author: Author,
        kind: EventKind = EventKind.UPDATE,
        undelete: bool = False,
    ) -> Event:
        """Apply changed values (callers pass only values that differ) and bump the version."""
        before = spec.values(obj)
        if spec is WORK_ORDER and "assigned_to" in changes:
            self._note_reassignment(obj)
        obj.version += 1
        for name, value in changes.items():
            field_spec = spec.fields[name]
            field_spec.kind.store(obj, field_spec.attr(name), value, self.users)
            obj.field_meta[name] = author.meta(obj.version)
        diff: dict[str, list[Json]] = {k: [before[k], v] for k, v in changes.items()}
        if undelete:
            obj.deleted = False
            diff[DELETED] = [True, False]
        self._write(spec, obj)
        return self._record_event(spec, obj, kind, diff, author)

    def delete(self, spec: EntitySpec, obj: SyncedRecord, author: Author) -> Event:
        obj.version += 1
        obj.deleted = True
        self._write(spec, obj)
        return self._record_event(spec, obj, EventKind.DELETE, {DELETED: [False, True]}, author)

    def note(self, spec: EntitySpec, obj: SyncedRecord, author: Author, kind: EventKind) -> Event:
        """Record an event that changes no value (the record keeps its version)."""
        event = self._new_event(spec, obj, kind, {}, author, bumped=False)
        self.events.append(event)
        self._touch(spec, obj, author.op_id)
        return event

    def outcome(self, op: OpRef) -> None:
        """Queue an op's outcome for its device's pull feed."""
        self._outcomes.append(op)

    # --- commit -----------------------------------------------------------------------
    def flush(self, work_orders: Mapping[uuid.UUID, Any] | None = None) -> None:
        """Write the changed records, the events and the feed entries. Call last in the
        transaction. ``work_orders``: work orders this transaction holds locked, current in
        memory, whose assignees need not be read again."""
        # Parents first (registry order): a new child may reference a new work order.
        for spec, records in _by_entity(self._created):
            insert_rows(spec.model, records)
        for spec, records in _by_entity(self._dirty):
            _update_records(spec, records)
        self._created.clear()
        self._dirty.clear()
        insert_rows(Event, self.events)
        rows = self._feed_rows(work_orders or {})
        # The organisation's feed lock, held until commit, is taken by the same statement
        # before its first position: positions become visible in the order they were taken.
        insert_rows(FeedEntry, rows, lock=(FEED_LOCK_CLASS, self.organization_id))

    # --- internals --------------------------------------------------------------------
    def _write(self, spec: EntitySpec, obj: SyncedRecord) -> None:
        if self.immediate:
            obj.save()
        elif (spec.name, obj.pk) not in self._created:  # an insert carries its last state
            self._dirty[(spec.name, obj.pk)] = obj

    def _record_event(
        self,
        spec: EntitySpec,
        obj: SyncedRecord,
        kind: EventKind,
        changes: dict[str, list[Json]],
        author: Author,
    ) -> Event:
        event = self._new_event(spec, obj, kind, changes, author, bumped=True)
        self.events.append(event)
        self._touch(spec, obj, author.op_id)
        return event

    def _new_event(
        self,
        spec: EntitySpec,
        obj: SyncedRecord,
        kind: EventKind,
        changes: dict[str, list[Json]],
        author: Author,
        bumped: bool,
    ) -> Event:
        return Event(
            organization_id=self.organization_id,
            entity=spec.name,
            entity_id=obj.pk,
            version=obj.version,
            bumped=bumped,
            kind=kind,
            op_id=author.op_id if bumped else None,
            device_id=author.device_id,
            seq=author.seq,
            actor_id=author.actor_id,
            changes=changes,
            received_at=author.received_at,
        )

    def _touch(self, spec: EntitySpec, obj: SyncedRecord, op_id: uuid.UUID | None) -> None:
        self._feed[(spec.name, obj.pk)] = _FeedRow(
            spec.name, obj.pk, uuid.UUID(spec.work_order_id(obj)), op_id
        )

    def _note_reassignment(self, work_order: SyncedRecord) -> None:
        assert isinstance(work_order, WorkOrder)
        # Remember the first assignee seen in this change set: the one who loses scope.
        self._reassigned.setdefault(work_order.pk, work_order.assigned_to_id)

    def _feed_rows(self, known: Mapping[uuid.UUID, Any]) -> list[FeedEntry]:
        self._fan_out_reassignments()
        wanted = {row.work_order_id for row in self._feed.values()}
        assignees = {i: known[i].assigned_to_id for i in wanted if i in known}
        assignees.update(self._assignees(wanted - assignees.keys()))
        rows = [
            FeedEntry(
                organization_id=self.organization_id,
                kind=FeedKind.RECORD,
                entity=row.entity,
                entity_id=row.entity_id,
                assignee_id=assignees.get(row.work_order_id),
                prev_assignee_id=self._lost_scope(row.work_order_id, assignees),
                op_id=row.op_id,
            )
            for row in self._feed.values()
        ]
        rows.extend(
            FeedEntry(
                organization_id=self.organization_id,
                kind=FeedKind.OUTCOME,
                device_id=op.device_id,
                op_id=op.op_id,
            )
            for op in self._outcomes
        )
        return rows

    def _lost_scope(
        self, work_order_id: uuid.UUID, assignees: dict[uuid.UUID, int | None]
    ) -> int | None:
        if work_order_id not in self._reassigned:
            return None
        before = self._reassigned[work_order_id]
        return before if before != assignees.get(work_order_id) else None

    def _fan_out_reassignments(self) -> None:
        """A reassigned work order's children change scope with it: give each a feed row."""
        if not self._reassigned:
            return
        wo_ids = list(self._reassigned)
        for spec in ENTITIES.values():
            if spec.parent_field is None:
                continue
            attr = spec.fields[spec.parent_field].attr(spec.parent_field)
            for child_id, wo_id in spec.model.objects.filter(**{f"{attr}__in": wo_ids}).values_list(
                "pk", attr
            ):
                self._feed.setdefault(
                    (spec.name, child_id), _FeedRow(spec.name, child_id, wo_id, None)
                )

    def _assignees(self, work_order_ids: set[uuid.UUID]) -> dict[uuid.UUID, int | None]:
        if not work_order_ids:
            return {}
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id, assigned_to_id FROM workorders_workorder WHERE id = ANY(%s::uuid[])",
                [list(work_order_ids)],
            )
            return dict(cursor.fetchall())


def lock_records(keys: Iterable[tuple[str, uuid.UUID]]) -> dict[tuple[str, uuid.UUID], Any]:
    """Lock (FOR NO KEY UPDATE) and load existing records of any organisation, one query per
    entity, in the global lock order (registry order, then id) every writer keeps."""
    by_entity: dict[str, set[uuid.UUID]] = {}
    for entity, entity_id in keys:
        by_entity.setdefault(entity, set()).add(entity_id)
    found: dict[tuple[str, uuid.UUID], Any] = {}
    for name in ENTITIES:  # registry order is the global lock order
        ids = by_entity.get(name)
        if ids:
            found.update(((name, obj.pk), obj) for obj in records_locked(name, list(ids)))
    return found


def _by_entity(
    records: dict[tuple[str, uuid.UUID], SyncedRecord],
) -> list[tuple[EntitySpec, list[SyncedRecord]]]:
    """Records grouped by entity, in registry order."""
    grouped: dict[str, list[SyncedRecord]] = {}
    for (entity, _), obj in records.items():
        grouped.setdefault(entity, []).append(obj)
    return [(spec, grouped[name]) for name, spec in ENTITIES.items() if name in grouped]


def insert_rows(
    model: type[Model], objs: Sequence[Model], lock: tuple[int, int] | None = None
) -> None:
    """One ``INSERT … SELECT FROM jsonb_to_recordset(…)`` for many rows of a model: the rows
    travel as one JSON document (Postgres parses it; adapting every value in Python cost
    more than the rest of a round), so the statement is the same (and built once) whatever
    the number of rows. An auto-increment primary key is left to the database. With
    ``lock``, the statement first takes that transaction-level advisory lock (one round trip
    instead of two)."""
    if not objs:
        return
    fields, sql = _insert_statement(model, lock is not None)
    for obj in objs:
        for f in fields:
            f.pre_save(obj, add=True)  # auto_now_add and friends
    params: list[Any] = [*(lock or ()), _rows_json(fields, objs)]
    fetch_prepared(sql, params)


def update_rows(model: type[Model], names: tuple[str, ...], objs: Sequence[Model]) -> None:
    """One ``UPDATE … FROM jsonb_to_recordset(…)`` setting these fields (attribute names) of
    many rows, found by primary key: a round trip per model and round, not per row."""
    if not objs:
        return
    fields, sql = _update_statement(model, names)
    fetch_prepared(sql, [_rows_json(fields, objs)])


def _rows_json(fields: Sequence[Field[Any, Any]], objs: Sequence[Model]) -> str:
    return json.dumps(
        [{f.column: getattr(obj, f.attname) for f in fields} for obj in objs], default=_plain
    )


def _plain(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _recordset(fields: Sequence[Field[Any, Any]]) -> str:
    quote = connection.ops.quote_name
    return ", ".join(f"{quote(str(f.column))} {f.db_type(connection)}" for f in fields)


@functools.lru_cache(maxsize=32)
def _insert_statement(model: type[Model], locked: bool) -> tuple[list[Field[Any, Any]], str]:
    fields = [
        f for f in model._meta.concrete_fields if not (f.primary_key and isinstance(f, AutoField))
    ]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(str(f.column)) for f in fields)
    source = f"jsonb_to_recordset(%s::jsonb) AS v({_recordset(fields)})"
    if locked:
        # The lock's one-row subquery is joined in, so it is taken before the first row (and
        # so the first position from the sequence) is produced.
        source = f"(SELECT pg_advisory_xact_lock(%s, %s)) AS l, {source}"
    table = quote(model._meta.db_table)
    # Table, columns and types come from the model; every value is a parameter.
    sql = f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {source}"  # noqa: S608
    return fields, sql


@functools.lru_cache(maxsize=32)
def _update_statement(
    model: type[Model], names: tuple[str, ...]
) -> tuple[list[Field[Any, Any]], str]:
    # A name may be a field's name or its attname (`assigned_to` / `assigned_to_id`).
    by_name = {f.name: f for f in model._meta.concrete_fields}
    by_name.update({f.attname: f for f in model._meta.concrete_fields})
    pk = model._meta.pk
    assert pk is not None
    fields = [pk, *(by_name[n] for n in names)]
    quote = connection.ops.quote_name
    key = quote(str(pk.column))
    assignments = ", ".join(
        f"{quote(str(f.column))} = v.{quote(str(f.column))}" for f in fields[1:]
    )
    # Table and column names come from the model; every value is a parameter.
    sql = (
        f"UPDATE {quote(model._meta.db_table)} AS t SET {assignments} "  # noqa: S608
        f"FROM jsonb_to_recordset(%s::jsonb) AS v({_recordset(fields)}) WHERE t.{key} = v.{key}"
    )
    return fields, sql


def _update_records(spec: EntitySpec, records: list[SyncedRecord]) -> None:
    """The changed records of one model, in one statement."""
    names = [s.attr(n) for n, s in spec.fields.items()] + ["version", "deleted", "field_meta"]
    now = timezone.now()
    for obj in records:
        obj.updated_at = now
    update_rows(spec.model, (*names, "updated_at"), records)
