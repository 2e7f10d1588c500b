"""Push: store a batch of ops durably, in one short transaction, and answer per op.

Idempotent by constraint: the uniques on ``op_id`` and ``(device, seq)`` decide what is new,
so a retried batch can never store an op twice (the op log is partitioned by month, and the
insert checks the other months itself: ``operations.partitions``). Only after commit is a
worker rung to apply them (``operations.services.apply``).
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from accounts.models import Device, User
from accounts.services import device_claim, device_touch
from common.db import fetch_prepared
from common.doorbell import ring
from common.logging import log_event
from operations.models import Operation, OpStatus
from operations.partitions import month_of, near_edge, next_month
from operations.recording import ChangeSet
from operations.services.apply import ring_drain
from operations.services.state import note_last_error
from operations.validation import CheckedOp, OpRejection, check_op, id_taken
from workorders.fields import Json
from workorders.reading import parent_column
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
    """Store a pushed batch durably (one statement, or one short transaction) and answer per
    op."""
    device = device_claim(user, device_id, token)
    checked = [check_op(raw, device.id, user) for raw in raw_ops]
    found, horizon = _read_context(device.id, checked)
    _screen_against_records(checked, Scope.of(user), found)
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
    inserted, existing = _store(device, list(rows.values()))
    device_touch(device, "last_push_at", now)
    results = [_push_result(op, owners, rows, inserted, existing) for op in checked]
    # One structured line per batch that names every op's new state: formatting a line per
    # op was an eighth of the push's CPU.
    log_event(
        "ops.pushed",
        device_id=str(device.id),
        ops=[[r.op_id, op.seq, r.status, r.code] for r, op in zip(results, checked, strict=True)],
    )
    return results


def _store(device: Device, rows: list[_Row]) -> tuple[set[uuid.UUID], dict[uuid.UUID, Operation]]:
    """Insert the batch's rows; the op ids inserted and the rows already stored.

    The usual batch (new ops, none refused) is one INSERT statement, committed on its own:
    no transaction to open and close around it. Retries, seq clashes and refusals take the
    full path, which writes the refusals' outcomes to the feed in the same transaction.
    """
    inserted: set[uuid.UUID] = set()
    # Near a month's edge, two copies of one op could go to either side of it, where no
    # unique sees both: then the batch takes the full path, behind its device's lock.
    edge = bool(rows) and near_edge(rows[0].received_at)
    if (
        not edge
        and not any(r.rejected_at_push for r in rows)
        and not transaction.get_connection().in_atomic_block
    ):
        inserted = _insert_ops(rows)
        if len(inserted) == len(rows):
            ring_drain()
            return inserted, {}
    with transaction.atomic():
        if edge:
            keys = [f"push:{device.id}", *(f"op:{r.op_id}" for r in rows)]
            with connection.cursor() as cursor:
                cursor.execute(_EDGE_LOCK_SQL, [keys])
        inserted |= _insert_ops([r for r in rows if r.op_id not in inserted])
        existing = Operation.objects.in_bulk([r.op_id for r in rows if r.op_id not in inserted])
        seq_clashes = [r for r in rows if r.op_id not in inserted and r.op_id not in existing]
        for row in seq_clashes:
            _mark_rejected(row, "seq_reused", f"seq {row.seq} is already used by another op")
        inserted |= _insert_ops(seq_clashes)
        refused = [r for r in rows if r.op_id in inserted and r.rejected_at_push]
        if refused:
            # After commit: the device's sync state row may be held by a running apply, and
            # a push never waits for an apply inside its own transaction.
            transaction.on_commit(lambda: note_last_error(device.id, refused))
            changes = ChangeSet(device.organization_id)
            for row in refused:
                changes.outcome(row)
            changes.flush()
        if any(r.op_id in inserted and not r.rejected_at_push for r in rows):
            ring_drain()
    return inserted, existing


@dataclass(frozen=True)
class _Found:
    """An existing record an op names, with what scope and staleness checks need."""

    organization_id: int
    version: int
    # The assignee and organisation of the work order holding it (itself, for a work order);
    # None when that work order could not be read.
    holder: tuple[int, int | None] | None


def _read_context(
    device_id: uuid.UUID, checked: list[CheckedOp]
) -> tuple[dict[RecordKey, _Found], int]:
    """In one round trip: the existing records the ops name (and the work orders new
    children would go under), and the device's compaction horizon."""
    wanted: dict[str, set[uuid.UUID]] = {name: set() for name in ENTITIES}
    for op in checked:
        if op.rejection is None and op.entity_id is not None:
            wanted[op.entity].add(op.entity_id)
            parent = _parent_id(op)
            if parent is not None:
                wanted[WORK_ORDER.name].add(parent)
    params: dict[str, Any] = {"device": device_id}
    params.update({f"ids_{name}": list(ids) for name, ids in wanted.items()})
    rows, _, _ = fetch_prepared(_context_sql(tuple(ENTITIES)), params)
    horizon = 0
    found: dict[RecordKey, _Found] = {}
    for entity, pk, organization_id, version, holder_org, holder_assignee in rows:
        if entity == "":
            horizon = version or 0
        else:
            holder = None if holder_org is None else (holder_org, holder_assignee)
            found[(entity, pk)] = _Found(organization_id, version, holder)
    return found, horizon


@functools.lru_cache(maxsize=4)
def _context_sql(entities: tuple[str, ...]) -> str:
    """One statement for the registry's entities (built once per registry, so the push never
    composes SQL, and the same text lets Postgres reuse its plan): each entity's rows joined
    to the work order that holds them, then the device's compaction horizon."""
    parts = []
    work_orders = WORK_ORDER.model._meta.db_table
    for name in entities:
        spec = ENTITIES[name]
        table = spec.model._meta.db_table
        if spec.parent_field is None:
            parts.append(
                f"SELECT '{name}', r.id, r.organization_id, r.version, r.organization_id, "  # noqa: S608
                f"r.assigned_to_id FROM {table} r WHERE r.id = ANY(%(ids_{name})s::uuid[])"
            )
        else:
            column = parent_column(spec)
            parts.append(
                f"SELECT '{name}', r.id, r.organization_id, r.version, w.organization_id, "  # noqa: S608
                f"w.assigned_to_id FROM {table} r LEFT JOIN {work_orders} w ON w.id = r.{column} "
                f"WHERE r.id = ANY(%(ids_{name})s::uuid[])"
            )
    parts.append(
        "SELECT '', NULL::uuid, NULL::bigint, compacted_seq, NULL::bigint, NULL::bigint "
        "FROM operations_devicesyncstate WHERE device_id = %(device)s"
    )
    # Names, tables and columns come from the registry and the models; values are parameters.
    return " UNION ALL ".join(parts)


def _screen_against_records(
    checked: list[CheckedOp], scope: Scope, found: dict[RecordKey, _Found]
) -> None:
    """Refuse ops aimed at existing records out of the caller's scope (as ``not_found``),
    stale creates and future base versions. Records not there yet are left to the apply."""

    def visible(key: RecordKey) -> bool:
        row = found[key]
        return row.holder is not None and scope.holds(row.organization_id, row.holder[1])

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
            elif (op.base_version or 0) > found[key].version:
                op.rejection = OpRejection(
                    "invalid_base_version",
                    f"base_version {op.base_version} is ahead of the record "
                    f"(version {found[key].version})",
                )


def _parent_id(op: CheckedOp) -> uuid.UUID | None:
    spec = op.spec if op.entity else None
    if spec is None or spec.parent_field is None or op.action != "create":
        return None
    value = op.fields.get(spec.parent_field)
    return uuid.UUID(value) if isinstance(value, str) else None


@dataclass(slots=True)
class _Row:
    """An op as the push stores it (a model instance costs more to build than the rest of
    the push does with it)."""

    op_id: uuid.UUID
    device_id: uuid.UUID
    organization_id: int
    user_id: int
    seq: int | None
    entity: str
    entity_id: uuid.UUID | None
    action: str
    base_version: int | None
    fields: dict[str, Json]
    client_time: datetime | None
    content_hash: str
    received_at: datetime
    status: str = OpStatus.PENDING
    rejected_at_push: bool = False
    code: str = ""
    detail: str = ""
    finished_at: datetime | None = None

    def wire(self) -> dict[str, Any]:
        """The row as one element of the insert's JSON array."""
        return {
            "op_id": str(self.op_id), "device_id": str(self.device_id),
            "organization_id": self.organization_id, "user_id": self.user_id, "seq": self.seq,
            "entity": self.entity, "entity_id": None if self.entity_id is None else str(
                self.entity_id), "action": self.action, "base_version": self.base_version,
            "fields": self.fields, "client_time": _iso(self.client_time),
            "content_hash": self.content_hash, "received_at": _iso(self.received_at),
            "status": str(self.status), "rejected_at_push": self.rejected_at_push,
            "code": self.code, "detail": self.detail, "finished_at": _iso(self.finished_at),
        }  # fmt: skip


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _op_row(op_id: uuid.UUID, op: CheckedOp, device: Device, now: datetime) -> _Row:
    row = _Row(
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


def _mark_rejected(row: _Row, code: str, detail: str) -> None:
    row.status = OpStatus.REJECTED
    row.rejected_at_push = True
    row.code = code
    row.detail = detail[:2000]
    row.finished_at = row.received_at


# The batch travels as one JSON array (Postgres parses it; adapting an array per column in
# Python cost a third of a large push). The sync state row is made with a device's first
# ops (the apply claims devices by it); an existing one is left as it is.
_INSERT_SQL = """
    WITH state AS (
        INSERT INTO operations_devicesyncstate (device_id, done_seq, gap_since, gap_seq,
                                                skipped_seqs, compacted_seq, last_error)
        VALUES (%s, 0, NULL, NULL, '[]', 0, '') ON CONFLICT DO NOTHING
    )
    INSERT INTO operations_operation (
        op_id, device_id, organization_id, user_id, seq, entity, entity_id, action,
        base_version, fields, client_time, content_hash, received_at, status,
        rejected_at_push, code, detail, overridden_fields, conflict_ids, finished_at)
    SELECT op_id, device_id, organization_id, user_id, seq, entity, entity_id, action,
           base_version, fields, client_time, content_hash, received_at, status,
           rejected_at_push, code, detail, '[]', '[]', finished_at
    FROM jsonb_to_recordset(%s::jsonb) AS r(
        op_id uuid, device_id uuid, organization_id bigint, user_id bigint, seq bigint,
        entity varchar, entity_id uuid, action varchar, base_version bigint, fields jsonb,
        client_time timestamptz, content_hash varchar, received_at timestamptz,
        status varchar, rejected_at_push boolean, code varchar, detail text,
        finished_at timestamptz)
    -- The op log is partitioned by month (operations.partitions): ON CONFLICT sees the
    -- uniques of the partition the row goes to; these see the other months'.
    WHERE NOT EXISTS (
        SELECT 1 FROM operations_operation o
        WHERE o.op_id = r.op_id AND (o.received_at < %s OR o.received_at >= %s))
      AND (r.rejected_at_push OR r.seq IS NULL OR NOT EXISTS (
        SELECT 1 FROM operations_operation o
        WHERE o.device_id = r.device_id AND o.seq = r.seq AND NOT o.rejected_at_push
          AND (o.received_at < %s OR o.received_at >= %s)))
    ON CONFLICT DO NOTHING
    RETURNING op_id
"""
# Near a month's edge: every push of the device, and of each of the batch's op ids, one at a
# time (in key order, so two pushes never wait for each other's).
_EDGE_LOCK_SQL = """
    SELECT pg_advisory_xact_lock(k) FROM (
        SELECT DISTINCT hashtextextended(x, 0) AS k FROM unnest(%s::text[]) AS x ORDER BY 1
    ) AS keys
"""


def _insert_ops(rows: list[_Row]) -> set[uuid.UUID]:
    """INSERT … ON CONFLICT DO NOTHING; returns the op ids actually inserted. Idempotency is
    the uniques on op_id and (device, seq) of the month's partition, and the statement's own
    look at the other months (with no race there but near a month's edge, where ``_store``
    takes locks first). Rows are inserted in the batch's order, so of two with one seq the
    first is stored."""
    if not rows:
        return set()
    batch = json.dumps([r.wire() for r in rows])
    month = month_of(rows[0].received_at)
    other_months = [month, next_month(month)]
    params = [rows[0].device_id, batch, *other_months, *other_months]
    return {row[0] for row in fetch_prepared(_INSERT_SQL, params)[0]}


def _push_result(
    op: CheckedOp,
    owners: dict[uuid.UUID, CheckedOp],
    rows: dict[uuid.UUID, _Row],
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
    stored: Operation | _Row | None = existing.get(op.op_id) or (
        row if op.op_id in inserted else None
    )
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
