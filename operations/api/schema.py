"""The op and record shapes of the OpenAPI document, written out from the entity registry:
one op shape per entity and action (its fields typed, the required ones required), and one
record shape per entity for pull. Built from the same field kinds the push validates with,
so a fuzzer generates ops the server must take or refuse one by one, never choke on."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from operations.validation import MAX_SEQ
from workorders.fields import (
    Boolean,
    Choice,
    DateTime,
    FieldKind,
    Integer,
    Reference,
    Text,
    Username,
)
from workorders.registry import ENTITIES, EntitySpec

Schema = dict[str, Any]


def kind_schema(kind: FieldKind) -> Schema:
    if isinstance(kind, Text):
        return {"type": "string", "maxLength": kind.max_length}
    if isinstance(kind, Choice):
        return {"type": "string", "enum": list(kind.choices)}
    if isinstance(kind, Boolean):
        return {"type": "boolean"}
    if isinstance(kind, DateTime):
        return {
            "type": "string",
            "format": "date-time",
            "nullable": True,
            "description": "RFC 3339 with an offset; held in UTC between 1900 and 9998",
        }
    if isinstance(kind, Reference):
        return {"type": "string", "format": "uuid"}
    if isinstance(kind, Username):
        return {"type": "string", "minLength": 1, "maxLength": 150, "nullable": True}
    if isinstance(kind, Integer):
        return {"type": "integer", "minimum": kind.minimum, "maximum": kind.maximum}
    raise TypeError(f"no schema for field kind {kind!r}")


def _fields(spec: EntitySpec, action: str) -> Schema:
    if action == "delete":
        return {"type": "object", "maxProperties": 0, "description": "a delete carries none"}
    schema: Schema = {
        "type": "object",
        "properties": {name: kind_schema(field.kind) for name, field in spec.fields.items()},
        "additionalProperties": False,
    }
    if action == "create":
        required = [name for name, field in spec.fields.items() if field.required_on_create]
        if required:
            schema["required"] = required
    return schema


def _actions(spec: EntitySpec) -> list[str]:
    actions = ["create"] if spec.client_can_create else []
    return actions + ([] if spec.append_only else ["update", "delete"])


def _op(spec: EntitySpec, action: str) -> Schema:
    base = {"type": "integer", "minimum": 0, "maximum": 0} if action == "create" else {
        "type": "integer", "minimum": 1, "maximum": MAX_SEQ,
    }  # fmt: skip
    return {
        "type": "object",
        "title": f"{spec.name} {action}",
        "required": ["op_id", "seq", "entity", "entity_id", "action", "base_version"],
        "properties": {
            "op_id": {"type": "string", "format": "uuid"},
            "seq": {"type": "integer", "minimum": 1, "maximum": MAX_SEQ},
            "entity": {"type": "string", "enum": [spec.name]},
            "entity_id": {"type": "string", "format": "uuid"},
            "action": {"type": "string", "enum": [action]},
            "base_version": base,
            "fields": _fields(spec, action),
            "client_time": {"type": "string", "format": "date-time"},
        },
    }


def _name(entity: str, suffix: str) -> str:
    return "".join(part.capitalize() for part in entity.split("_")) + suffix


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _op_components() -> dict[str, Schema]:
    return {
        _name(spec.name, f"{action.capitalize()}Op"): _op(spec, action)
        for spec in ENTITIES.values()
        for action in _actions(spec)
    }


def _record_components() -> dict[str, Schema]:
    records: dict[str, Schema] = {
        _name(spec.name, "Record"): {
            "type": "object",
            "title": spec.name,
            "required": list(spec.fields),
            "properties": {name: kind_schema(field.kind) for name, field in spec.fields.items()},
        }
        for spec in ENTITIES.values()
    }
    records["RevokedRecord"] = {"type": "object", "maxProperties": 0, "title": "revoked"}
    return records


def add_components(result: Schema, generator: Any, request: Any, public: bool) -> Schema:
    """drf-spectacular post-processing hook: the op and record shapes as named components,
    so a generated client has ``WorkOrderUpdateOp`` and ``WorkOrderRecord`` types."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(_op_components())
    schemas.update(_record_components())
    return result


@lru_cache(maxsize=1)
def push_request() -> Schema:
    ops = [_ref(name) for name in _op_components()]
    return {
        "type": "object",
        "required": ["device_id", "ops"],
        "properties": {
            "device_id": {"type": "string", "format": "uuid"},
            "ops": {
                "type": "array",
                "maxItems": 500,
                "items": {"oneOf": ops},
                "description": "at most 500 ops and 1 MiB; each op is answered on its own",
            },
        },
    }


@lru_cache(maxsize=1)
def record_fields() -> Schema:
    """A change's ``fields``: the whole record of its entity, or {} when revoked."""
    return {"oneOf": [_ref(name) for name in _record_components()]}
