"""Validate one raw op on its own, at the edge. Pure and fast: no queries here.

A push answers per op; a bad op never stops the ops after it. What is decided here is the
op's shape, types, field names and the author's role; scope against existing records is
checked by the push service, and again, authoritatively, when the op is applied.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from accounts.models import User
from workorders.fields import FieldError, Json, parse_time
from workorders.registry import ENTITIES, EntitySpec

ACTIONS = ("create", "update", "delete")
MAX_SEQ = 2**62


@dataclass
class OpRejection(Exception):
    code: str
    detail: str


@dataclass
class CheckedOp:
    """An op as received, with what validation found. ``rejection`` None means valid."""

    raw_op_id: Json
    op_id: uuid.UUID | None
    content_hash: str
    seq: int | None = None
    entity: str = ""
    entity_id: uuid.UUID | None = None
    action: str = ""
    base_version: int | None = None
    fields: dict[str, Json] = field(default_factory=dict)
    client_time: datetime | None = None
    rejection: OpRejection | None = None

    @property
    def spec(self) -> EntitySpec:
        return ENTITIES[self.entity]


def content_hash(device_id: uuid.UUID, raw: Json) -> str:
    canonical = json.dumps([str(device_id), raw], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_op(raw: Json, device_id: uuid.UUID, user: User) -> CheckedOp:
    raw_op_id = raw.get("op_id") if isinstance(raw, dict) else None
    op = CheckedOp(raw_op_id=raw_op_id, op_id=_uuid_or_none(raw_op_id), content_hash="")
    try:
        op.content_hash = content_hash(device_id, raw)
        if not isinstance(raw, dict):
            raise OpRejection("invalid_op", "each op must be a JSON object")
        if op.op_id is None:
            raise OpRejection("invalid_op_id", "op_id must be a UUID")
        _check_envelope(op, raw)
        _check_fields(op, raw.get("fields", {}))
        _check_role(op, user)
    except OpRejection as rejection:
        op.rejection = rejection
    return op


def _uuid_or_none(value: Json) -> uuid.UUID | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _check_envelope(op: CheckedOp, raw: dict[str, Json]) -> None:
    seq = raw.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
        raise OpRejection("invalid_seq", "seq must be a positive integer")
    op.seq = seq
    entity = raw.get("entity")
    if not isinstance(entity, str) or entity not in ENTITIES:
        raise OpRejection("unknown_entity", f"entity must be one of {', '.join(ENTITIES)}")
    op.entity = entity
    op.entity_id = _uuid_or_none(raw.get("entity_id"))
    if op.entity_id is None:
        raise OpRejection("invalid_entity_id", "entity_id must be a UUID")
    action = raw.get("action")
    if action not in ACTIONS:
        raise OpRejection("invalid_action", "action must be create, update or delete")
    op.action = str(action)
    base = raw.get("base_version")
    if isinstance(base, bool) or not isinstance(base, int) or not 0 <= base <= MAX_SEQ:
        raise OpRejection("invalid_base_version", "base_version must be a non-negative integer")
    if (action == "create") != (base == 0):
        raise OpRejection(
            "invalid_base_version", "a create carries base_version 0, an update or delete > 0"
        )
    op.base_version = base
    client_time = raw.get("client_time")
    if client_time is not None:
        op.client_time = _parse_time(client_time)


def _parse_time(value: Json) -> datetime:
    try:
        return parse_time(value)
    except FieldError as exc:
        raise OpRejection("invalid_client_time", f"client_time: {exc.detail}") from exc


def _check_fields(op: CheckedOp, fields: Json) -> None:
    if not isinstance(fields, dict):
        raise OpRejection("invalid_fields", "fields must be a JSON object")
    spec = op.spec
    if op.action == "delete":
        if fields:
            raise OpRejection("invalid_fields", "a delete carries no fields")
        return
    for name, value in fields.items():
        field_spec = spec.fields.get(name)
        if field_spec is None:
            raise OpRejection("unknown_field", f"{op.entity} has no field {name!r}")
        try:
            op.fields[name] = field_spec.kind.parse(value)
        except FieldError as exc:
            raise OpRejection(exc.code, f"{name}: {exc.detail}") from exc
    if op.action == "create":
        missing = [n for n, f in spec.fields.items() if f.required_on_create and n not in fields]
        if missing:
            raise OpRejection("missing_field", f"a create needs {', '.join(missing)}")


def _check_role(op: CheckedOp, user: User) -> None:
    spec = op.spec
    if op.action == "create" and not spec.client_can_create:
        raise OpRejection("forbidden", f"{op.entity} records are created by the server only")
    if spec.append_only and op.action != "create":
        raise OpRejection("append_only", f"{op.entity} records can only be created")
    if user.is_dispatcher:
        return
    if op.action == "create" and not spec.technician_can_create:
        raise OpRejection("forbidden", f"technicians may not create {op.entity} records")
    if op.action == "delete" and not spec.technician_can_delete:
        raise OpRejection("forbidden", f"technicians may not delete {op.entity} records")
    for name in op.fields:
        if spec.fields[name].dispatcher_only:
            raise OpRejection("forbidden", f"technicians may not change {name}")


def id_taken(entity: str, entity_id: uuid.UUID, visible: bool) -> OpRejection:
    """A create of an id a record already holds. Out of the caller's scope (another
    organisation's record, or another technician's) the answer says only that this id cannot
    be used, never that a record holds it."""
    if visible:
        return OpRejection("entity_exists", f"{entity} {entity_id} already exists")
    return OpRejection("entity_id_unavailable", "this entity_id cannot be used; make a new UUID")
