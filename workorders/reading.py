"""Read records by id on hot paths (pull, push, the apply) without composing SQL each time.

The ORM builds a query's SQL anew every time, which costs more than running it on the pull's
path. Each entity's statement here is built once from the registry and the model, then
reused: the record's columns, those of the models it names for display (``select_related``,
e.g. the assignee, so a username costs no query) and the organisation and assignee of the
work order that holds it, which decide who may see it.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import Field, ForeignKey, Model

from common.db import models_prepared
from workorders.models import SyncedRecord
from workorders.registry import ENTITIES, WORK_ORDER, EntitySpec


@dataclass(frozen=True)
class Held:
    """A record and the work order holding it (itself, for a work order)."""

    record: SyncedRecord
    holder_organization_id: int
    holder_assignee_id: int | None


@dataclass(frozen=True)
class _Related:
    name: str
    model: type[Model]
    attnames: list[str]


@dataclass(frozen=True)
class _Statement:
    sql: str
    related: list[_Related]


def records_held(entity: str, ids: list[uuid.UUID]) -> list[Held]:
    """The records of ``entity`` with these ids that exist, each with its holder."""
    return [
        Held(obj, obj._holder_org, obj._holder_assignee)
        for obj in _load(_statement(entity, lock=False), entity, ids)
    ]


def records_locked(entity: str, ids: list[uuid.UUID]) -> list[SyncedRecord]:
    """The records of ``entity`` with these ids that exist, locked ``FOR NO KEY UPDATE`` (in
    id order) until the transaction ends."""
    return _load(_statement(entity, lock=True), entity, sorted(ids))


def parents_of(entity: str, ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """The work orders holding these records of a child entity (those that exist)."""
    spec = ENTITIES[entity]
    quote = connection.ops.quote_name
    sql = (
        f"SELECT {quote(parent_column(spec))} FROM {quote(spec.model._meta.db_table)} "  # noqa: S608
        "WHERE id = ANY(%s::uuid[])"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [ids])
        return [row[0] for row in cursor.fetchall()]


def _load(statement: _Statement, entity: str, ids: list[uuid.UUID]) -> list[Any]:
    out = []
    for obj in models_prepared(ENTITIES[entity].model, statement.sql, [ids]):
        for related in statement.related:
            values = [getattr(obj, f"_rel_{related.name}_{a}") for a in related.attnames]
            instance = None if values[0] is None else related.model.from_db(
                connection.alias, related.attnames, values
            )  # fmt: skip
            setattr(obj, related.name, instance)
        out.append(obj)
    return out


@functools.lru_cache(maxsize=64)
def _statement(entity: str, lock: bool) -> _Statement:
    spec = ENTITIES[entity]
    meta = spec.model._meta
    quote = connection.ops.quote_name
    columns = [f"r.{quote(str(f.column))} AS {quote(f.attname)}" for f in meta.concrete_fields]
    joins: list[str] = []
    related: list[_Related] = []
    for n, name in enumerate(spec.select_related):
        fk = meta.get_field(name)
        assert isinstance(fk, ForeignKey)
        target: type[Model] = fk.related_model
        fields = [f for f in target._meta.concrete_fields if f.primary_key] + [
            f for f in target._meta.concrete_fields if not f.primary_key
        ]
        alias = f"j{n}"
        joins.append(
            f"LEFT JOIN {quote(target._meta.db_table)} {alias} "
            f"ON {alias}.{quote(str(fields[0].column))} = r.{quote(str(fk.column))}"
        )
        columns += [f"{alias}.{quote(str(f.column))} AS _rel_{name}_{f.attname}" for f in fields]
        related.append(_Related(name, target, [f.attname for f in fields]))
    if lock:
        holder = ""
    elif spec.parent_field is None:
        holder = ", r.organization_id AS _holder_org, r.assigned_to_id AS _holder_assignee"
    else:
        joins.append(
            f"LEFT JOIN {quote(WORK_ORDER.model._meta.db_table)} w "
            f"ON w.id = r.{quote(parent_column(spec))}"
        )
        holder = ", w.organization_id AS _holder_org, w.assigned_to_id AS _holder_assignee"
    # Tables and columns come from the models; the ids are the one parameter.
    sql = (
        f"SELECT {', '.join(columns)}{holder} FROM {quote(meta.db_table)} r "  # noqa: S608
        f"{' '.join(joins)} WHERE r.id = ANY(%s::uuid[])"
    )
    if lock:  # only the record's row: the user it names is read, not locked
        sql += " ORDER BY r.id FOR NO KEY UPDATE OF r"
    return _Statement(sql, related)


def parent_column(spec: EntitySpec) -> str:
    """The column of a child record that names its work order."""
    assert spec.parent_field is not None
    field = spec.model._meta.get_field(spec.fields[spec.parent_field].attr(spec.parent_field))
    assert isinstance(field, Field)
    return str(field.column)
