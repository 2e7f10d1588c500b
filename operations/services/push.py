"""Push: store a batch of ops durably, in one short transaction, and answer per op.

Idempotent by constraint: the primary key on ``op_id`` and the unique ``(device, seq)``
decide what is new, so a retried batch can never store an op twice. Only after commit is a
worker rung to apply them (``operations.services.apply``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from accounts.models import Device, User
from accounts.services import device_claim, device_touch
from common.doorbell import ring, ring_after_commit
from common.logging import log_event
from operations.models import Operation, OpStatus
from operations.recording import ChangeSet
from operations.services.state import compacted_seq, note_last_error
from operations.validation import CheckedOp, OpRejection, check_op, id_taken
from workorders.fields import Json
from workorders.registry import ENTITIES, WORK_ORDER
from workorders.scope import Scope

APPLY_TASK = "operations.tasks.apply_device_ops_task"
RecordKey = tuple[str, uuid.UUID]


@dataclass
class PushResult:
    op_id: Json
    status: str  # accepted | duplicate | rejected
    code: str = ""
    detail: str = ""


def op_batch_accept(
    user: User, device_id: uuid.UUID, raw_ops: Sequence[Json], token: object = None
) -> list[PushResult]:
    """Store a pushed batch durably (one short transaction) and answer per op."""
    device = device_claim(user, device_id, token)
    checked = [check_op(raw, device.id, user) for raw in raw_ops]
    _screen_against_records(checked, Scope.of(user))
    horizon = compacted_seq(device.id)
    for op in checked:
        if op.rejection is None and op.seq is not None and op.seq <= horizon:
            # Ops up to this seq were compacted: an unknown one may be a replay of an op that
            # was applied long ago, so it is refused rather than risk applying it twice.
            op.rejection = OpRejection("op_expired", "this op is older than the retention horizon")
    now = timezone.now()
    # The first op carrying an op_id owns its row; later copies in the batch are retries.
    owners: dict[uuid.UUID, CheckedOp] = {}
    for op in checked:
        if op.op_id is not None:
            owners.setdefault(op.op_id, op)
    rows = {op_id: _op_row(op_id, op, device, now) for op_id, op in owners.items()}
    with transaction.atomic():
        inserted = _insert_ops(list(rows.values()))
        existing = Operation.objects.in_bulk([op_id for op_id in rows if op_id not in inserted])
        seq_clashes = [
            row for op_id, row in rows.items() if op_id not in inserted and op_id not in existing
        ]
        for row in seq_clashes:
            _mark_rejected(row, "seq_reused", f"seq {row.seq} is already used by another op")
        inserted |= _insert_ops(seq_clashes)
        refused = [r for r in rows.values() if r.op_id in inserted and r.rejected_at_push]
        # After commit: the device's sync state row may be held by a running apply, and a
        # push never waits for an apply inside its own transaction.
        if refused:
            transaction.on_commit(lambda: note_last_error(device.id, refused))
        if refused:
            changes = ChangeSet(device.organization_id)
            for row in refused:
                changes.outcome(row)
            changes.flush()
        device_touch(device, "last_push_at", now)
        if any(r.op_id in inserted and not r.rejected_at_push for r in rows.values()):
            ring_after_commit(APPLY_TASK, str(device.id))
    results = [_push_result(op, owners, rows, inserted, existing) for op in checked]
    # One structured line per batch that names every op's new state: formatting a line per
    # op was an eighth of the push's CPU.
    log_event(
        "ops.pushed",
        device_id=str(device.id),
        ops=[[r.op_id, op.seq, r.status, r.code] for r, op in zip(results, checked, strict=True)],
    )
    return results


def _screen_against_records(checked: list[CheckedOp], scope: Scope) -> None:
    """Refuse ops aimed at existing records out of the caller's scope (as ``not_found``),
    stale creates and future base versions. Records not there yet are left to the apply."""
    wanted: dict[str, set[uuid.UUID]] = {}
    for op in checked:
        if op.rejection is None and op.entity_id is not None:
            wanted.setdefault(op.entity, set()).add(op.entity_id)
            parent = _parent_id(op)
            if parent is not None:
                wanted.setdefault(WORK_ORDER.name, set()).add(parent)
    found: dict[RecordKey, dict[str, Any]] = {}
    children_parents: set[uuid.UUID] = set()
    for name, ids in wanted.items():
        spec = ENTITIES[name]
        cols = ["pk", "organization_id", "version"]
        cols += ["assigned_to_id"] if spec is WORK_ORDER else ["work_order_id"]
        for row in spec.model.objects.filter(pk__in=ids).values(*cols):
            found[(name, row["pk"])] = row
            if spec is not WORK_ORDER:
                children_parents.add(row["work_order_id"])
    missing_parents = children_parents - wanted.get(WORK_ORDER.name, set())
    for row in WORK_ORDER.model.objects.filter(pk__in=missing_parents).values(
        "pk", "organization_id", "version", "assigned_to_id"
    ):
        found[(WORK_ORDER.name, row["pk"])] = row

    def visible(key: RecordKey) -> bool:
        row = found[key]
        wo = (
            row if key[0] == WORK_ORDER.name else found.get((WORK_ORDER.name, row["work_order_id"]))
        )
        return wo is not None and scope.holds(row["organization_id"], wo["assigned_to_id"])

    for op in checked:
        if op.rejection is not None or op.entity_id is None:
            continue
        key = (op.entity, op.entity_id)
        parent = _parent_id(op)
        if op.action == "create":
            if key in found:
                op.rejection = id_taken(op.entity, op.entity_id, visible(key))
            elif (
                parent is not None
                and (WORK_ORDER.name, parent) in found
                and not visible((WORK_ORDER.name, parent))
            ):
                op.rejection = OpRejection("not_found", f"work order {parent} not found")
        elif key in found:
            if not visible(key):
                op.rejection = OpRejection("not_found", f"{op.entity} {op.entity_id} not found")
            elif (op.base_version or 0) > found[key]["version"]:
                op.rejection = OpRejection(
                    "invalid_base_version",
                    f"base_version {op.base_version} is ahead of the record "
                    f"(version {found[key]['version']})",
                )


def _parent_id(op: CheckedOp) -> uuid.UUID | None:
    spec = op.spec if op.entity else None
    if spec is None or spec.parent_field is None or op.action != "create":
        return None
    value = op.fields.get(spec.parent_field)
    return uuid.UUID(value) if isinstance(value, str) else None


def _op_row(op_id: uuid.UUID, op: CheckedOp, device: Device, now: Any) -> Operation:
    row = Operation(
        op_id=op_id,
        device_id=device.id,
        organization_id=device.organization_id,
        user_id=device.user_id,
        seq=op.seq,
        entity=op.entity[:40],
        entity_id=op.entity_id,
        action=op.action,
        base_version=op.base_version,
        fields=op.fields,
        client_time=op.client_time,
        content_hash=op.content_hash,
        received_at=now,
    )
    if op.rejection is not None:
        _mark_rejected(row, op.rejection.code, op.rejection.detail)
    return row


def _mark_rejected(row: Operation, code: str, detail: str) -> None:
    row.status = OpStatus.REJECTED
    row.rejected_at_push = True
    row.code = code
    row.detail = detail[:2000]
    row.finished_at = row.received_at


# Column name and array type, in insert order.
_INSERT_COLUMNS = (
    ("op_id", "uuid"), ("device_id", "uuid"), ("organization_id", "bigint"),
    ("user_id", "bigint"), ("seq", "bigint"), ("entity", "varchar"), ("entity_id", "uuid"),
    ("action", "varchar"), ("base_version", "bigint"), ("fields", "jsonb"),
    ("client_time", "timestamptz"), ("content_hash", "varchar"), ("received_at", "timestamptz"),
    ("status", "varchar"), ("rejected_at_push", "boolean"), ("code", "varchar"),
    ("detail", "text"), ("overridden_fields", "jsonb"), ("conflict_ids", "jsonb"),
    ("finished_at", "timestamptz"),
)  # fmt: skip
_INSERT_SQL = (
    f"INSERT INTO operations_operation ({', '.join(c for c, _ in _INSERT_COLUMNS)}) "  # noqa: S608
    f"SELECT * FROM unnest({', '.join(f'%s::{t}[]' for _, t in _INSERT_COLUMNS)}) "
    "ON CONFLICT DO NOTHING RETURNING op_id"
)


def _insert_ops(rows: list[Operation]) -> set[uuid.UUID]:
    """INSERT … ON CONFLICT DO NOTHING; returns the op ids actually inserted. Idempotency is
    the primary key on op_id and the unique (device, seq): no check-then-act race. One array
    per column keeps the statement the same whatever the batch size."""
    if not rows:
        return set()
    columns: list[list[Any]] = [[] for _ in _INSERT_COLUMNS]
    for r in rows:
        values = (
            r.op_id, r.device_id, r.organization_id, r.user_id, r.seq, r.entity, r.entity_id,
            r.action, r.base_version, json.dumps(r.fields), r.client_time, r.content_hash,
            r.received_at, r.status, r.rejected_at_push, r.code, r.detail, "[]", "[]",
            r.finished_at,
        )  # fmt: skip
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_SQL, columns)
        return {row[0] for row in cursor.fetchall()}


def _push_result(
    op: CheckedOp,
    owners: dict[uuid.UUID, CheckedOp],
    rows: dict[uuid.UUID, Operation],
    inserted: set[uuid.UUID],
    existing: dict[Any, Operation],
) -> PushResult:
    if op.op_id is None:
        assert op.rejection is not None
        return PushResult(op.raw_op_id, "rejected", op.rejection.code, op.rejection.detail)
    row = rows[op.op_id]
    if op.op_id in inserted and owners[op.op_id] is op:
        if row.rejected_at_push:
            return PushResult(str(op.op_id), "rejected", row.code, row.detail)
        return PushResult(str(op.op_id), "accepted")
    stored = existing.get(op.op_id) or (row if op.op_id in inserted else None)
    if stored is None or stored.content_hash != op.content_hash:
        return PushResult(
            str(op.op_id), "rejected", "op_id_reused", "this op_id was used for another op"
        )
    if stored.rejected_at_push:
        return PushResult(str(op.op_id), "rejected", stored.code, stored.detail)
    return PushResult(str(op.op_id), "duplicate")


def ring_device(device_id: uuid.UUID) -> None:
    """Ask a worker to apply the device's ops now (the sweep's and tests' way in)."""
    ring(APPLY_TASK, str(device_id))
