"""The three-way, per-field merge of the contract. Pure: no database, easy to reason about.

A field in an op is *concurrent* when another device changed it after the op's
``base_version``; a device's own earlier ops never conflict with its later ones. A field
counts as changed only when its value changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workorders.fields import Json
from workorders.registry import EntitySpec, Rule


@dataclass
class MergeResult:
    changes: dict[str, Json] = field(default_factory=dict)
    overridden: list[str] = field(default_factory=list)
    # (field, server value, client value)
    conflicts: list[tuple[str, Json, Json]] = field(default_factory=list)


def merge_fields(
    spec: EntitySpec,
    current: dict[str, Json],
    meta: dict[str, Any],
    incoming: dict[str, Json],
    base_version: int,
    device_id: str,
    seq: int,
    by_dispatcher: bool,
) -> MergeResult:
    result = MergeResult()
    for name, value in incoming.items():
        server_value = current[name]
        if value == server_value:
            continue
        last = meta.get(name) or {}
        if last.get("d") == device_id and (last.get("s") or 0) > seq:
            # A later op of this same device already wrote the field (it arrived after a
            # skipped gap): the older op must not overwrite it.
            result.overridden.append(name)
            continue
        concurrent = last.get("v", 0) > base_version and last.get("d") != device_id
        rule = spec.fields[name].rule
        if not concurrent or rule is Rule.LAST_WRITER_WINS:
            result.changes[name] = value
        elif rule is Rule.SERVER_WINS:
            if by_dispatcher:
                result.changes[name] = value
            else:
                result.overridden.append(name)
        else:  # MANUAL: values differ, so a person decides
            result.conflicts.append((name, server_value, value))
    return result
