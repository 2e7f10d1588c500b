"""Services that write: accept a pushed batch, apply a device's ops, sweep, compact."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Q
from django.utils import timezone

from accounts.models import Device, User
from accounts.services import admin_device_for, device_claim
from common.exceptions import DomainError
from common.logging import log_event, log_warning
from conflicts.models import DELETED_FIELD, Conflict
from operations.merge import merge_fields
from operations.models import (
    FINISHED,
    Event,
    FeedEntry,
    Operation,
    OpStatus,
    RetentionMark,
)
from operations.recording import Author, ChangeSet
from operations.validation import CheckedOp, OpRejection, check_op
from workorders.fields import Json, Username
from workorders.models import SyncedRecord
from workorders.registry import ENTITIES, WORK_ORDER, EntitySpec

RecordKey = tuple[str, uuid.UUID]


# ============================================================================================
# Push
# ============================================================================================
@dataclass
class PushResult:
    op_id: Json
    status: str  # accepted | duplicate | rejected
    code: str = ""
    detail: str = ""

    def as_dict(self) -> dict[str, Json]:
        out: dict[str, Json] = {"op_id": self.op_id, "status": self.status}
        if self.code:
            out["code"] = self.code
            out["detail"] = self.detail
        return out


def op_batch_accept(
    user: User, device_id: uuid.UUID, raw_ops: Sequence[Json], token: object = None
) -> list[PushResult]:
    """Store a pushed batch durably (one short transaction) and answer per op."""
    device = device_claim(user, device_id, token)
    checked = [check_op(raw, device.id, user) for raw in raw_ops]
    _screen_against_records(checked, user)
    for op in checked:
        if op.rejection is None and op.seq is not None and op.seq <= device.compacted_seq:
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
        _note_last_error(device, refused)
        if refused:
            changes = ChangeSet(device.organization_id)
            for row in refused:
                changes.outcome(row)
            changes.flush()
        _touch_device(device, "last_push_at", now)
        if any(r.op_id in inserted and not r.rejected_at_push for r in rows.values()):
            transaction.on_commit(lambda: ring_device(device.id))
    results = [_push_result(op, owners, rows, inserted, existing) for op in checked]
    # One structured line per batch that names every op's new state: formatting a line per
    # op was an eighth of the push's CPU.
    log_event(
        "ops.pushed",
        device_id=str(device.id),
        ops=[[r.op_id, op.seq, r.status, r.code] for r, op in zip(results, checked, strict=True)],
    )
    return results


def _screen_against_records(checked: list[CheckedOp], user: User) -> None:
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
        if row["organization_id"] != user.organization_id:
            return False
        if user.is_dispatcher:
            return True
        wo = (
            row if key[0] == WORK_ORDER.name else found.get((WORK_ORDER.name, row["work_order_id"]))
        )
        return wo is not None and wo["assigned_to_id"] == user.pk

    for op in checked:
        if op.rejection is not None or op.entity_id is None:
            continue
        key = (op.entity, op.entity_id)
        parent = _parent_id(op)
        if op.action == "create":
            if key in found:
                op.rejection = OpRejection("entity_exists", f"{op.entity} {op.entity_id} exists")
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


def _touch_device(device: Device, column: str, now: Any) -> None:
    # Throttled, and a row a running apply has locked is skipped (SKIP LOCKED), so pushes
    # and pulls don't queue behind the apply loop just to stamp a time.
    loaded = getattr(device, column)
    if loaded is not None and (now - loaded).total_seconds() < 5:
        return
    free = (
        Device.objects.filter(pk=device.pk)
        .filter(
            Q(**{f"{column}__isnull": True}) | Q(**{f"{column}__lt": now - timedelta(seconds=5)})
        )
        .select_for_update(skip_locked=True)
        .values("pk")
    )
    with transaction.atomic():
        Device.objects.filter(pk__in=free).update(**{column: now})


def ring_device(device_id: uuid.UUID) -> None:
    """Ask a worker to apply the device's ops. Best effort: Redis is only a doorbell; if the
    ring is lost, the periodic sweep finds the pending ops in Postgres."""
    from operations.tasks import apply_device_ops_task

    try:
        apply_device_ops_task.apply_async(args=(str(device_id),), retry=False)
    except Exception as exc:  # noqa: BLE001 - any broker failure is survivable here
        log_warning("worker.ring_failed", device_id=str(device_id), error=repr(exc))


# ============================================================================================
# Apply
# ============================================================================================
@dataclass
class _Batch:
    device: Device
    user: User
    ops: list[Operation]
    changes: ChangeSet
    records: dict[RecordKey, Any] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)


class _Rejected(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def device_apply_pending(device_id: uuid.UUID, max_batches: int = 100) -> int:
    """Apply a device's pending ops in seq order, in batches; returns how many finished.

    Safe to run in several workers at once: each batch holds the device's row lock, and an
    op can only be applied once (its status flips from pending in the same transaction that
    writes its event, which is unique per op).
    """
    finished = 0
    for _ in range(max_batches):
        try:
            done, more = _apply_batch(device_id, careful=False)
        except Exception as exc:  # noqa: BLE001 - an unexpected bug in one op
            # Retry the batch op by op in savepoints, so one poisoned op is rejected with
            # ``internal_error`` instead of blocking every op behind it.
            log_warning("apply.batch_failed", device_id=str(device_id), error=repr(exc))
            done, more = _apply_batch(device_id, careful=True)
        finished += done
        if not more:
            break
    return finished


def _apply_batch(device_id: uuid.UUID, careful: bool) -> tuple[int, bool]:
    logs: list[Operation] = []
    with transaction.atomic():
        device = (
            Device.objects.select_for_update(no_key=True, of=("self",))
            .select_related("user")
            .filter(pk=device_id)
            .first()
        )
        if device is None:
            return 0, False
        candidates = list(
            Operation.objects.filter(device_id=device.pk)
            .filter(Q(status=OpStatus.PENDING) | Q(rejected_at_push=True, seq__gt=device.done_seq))
            .order_by("seq", "received_at")[: settings.SYNC_APPLY_BATCH]
        )
        watermark = device.done_seq
        runnable = _runnable(device, candidates)
        progressed = bool(runnable) or device.done_seq > watermark
        device.save(update_fields=["done_seq", "gap_since", "gap_seq", "skipped_seqs"])
        if runnable:
            changes = ChangeSet(device.organization_id, immediate=careful)
            batch = _Batch(device, device.user, runnable, changes)
            _load_records(batch)
            for op in runnable:
                _apply_guarded(batch, op, careful)
            _note_last_error(device, runnable)
            Conflict.objects.bulk_create(batch.conflicts)
            _save_outcomes(runnable)
            for op in runnable:
                batch.changes.outcome(op)
            batch.changes.flush()
            logs = runnable
    if logs:
        log_event(
            "ops.finished",
            device_id=str(device_id),
            done_seq=device.done_seq,
            ops=[
                [str(op.op_id), op.seq, op.status, op.entity, str(op.entity_id), op.version,
                 op.code, op.overridden_fields, op.conflict_ids]
                for op in logs
            ],
        )  # fmt: skip
    return len(logs), len(candidates) >= settings.SYNC_APPLY_BATCH and progressed


def _save_outcomes(ops: list[Operation]) -> None:
    """One UPDATE for a batch's outcomes (Django's bulk_update builds a CASE per field per
    row, which was half of the apply loop's time)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE operations_operation AS o
            SET status = v.status, code = v.code, detail = v.detail, version = v.version,
                overridden_fields = v.overridden, conflict_ids = v.conflicts,
                finished_at = v.finished_at
            FROM unnest(%s::uuid[], %s::varchar[], %s::varchar[], %s::text[], %s::bigint[],
                        %s::jsonb[], %s::jsonb[], %s::timestamptz[])
                AS v(op_id, status, code, detail, version, overridden, conflicts, finished_at)
            WHERE o.op_id = v.op_id
            """,
            [
                [op.op_id for op in ops],
                [op.status for op in ops],
                [op.code for op in ops],
                [op.detail for op in ops],
                [op.version for op in ops],
                [json.dumps(op.overridden_fields) for op in ops],
                [json.dumps(op.conflict_ids) for op in ops],
                [op.finished_at for op in ops],
            ],
        )


def _note_last_error(device: Device, ops: Sequence[Operation]) -> None:
    """Keep the latest refusal on the device, for support (sync health in the admin)."""
    refused = [op for op in ops if op.status == OpStatus.REJECTED]
    if refused:
        last = refused[-1]
        error = f"{last.code}: {last.detail} (op {last.op_id}, seq {last.seq})"[:1000]
        Device.objects.filter(pk=device.pk).update(last_error=error)


def _runnable(device: Device, candidates: list[Operation]) -> list[Operation]:
    """Walk the device's ops in seq order and advance its ``done_seq`` watermark.

    An op waits for seq - 1; an op rejected at push counts as finished; a gap still open
    after SYNC_GAP_TIMEOUT_SECONDS is skipped (and remembered in ``skipped_seqs``).
    Ops at or below the watermark are late arrivals after a skip: they run, but never
    overwrite fields that the device's later ops wrote (see ``merge_fields``).
    """
    now = timezone.now()
    expected = device.done_seq + 1
    runnable: list[Operation] = []
    for op in candidates:
        assert op.seq is not None
        if op.seq > expected:
            if device.gap_seq != expected or device.gap_since is None:
                device.gap_seq, device.gap_since = expected, now
            waited = (now - device.gap_since).total_seconds()
            if waited < settings.SYNC_GAP_TIMEOUT_SECONDS:
                break
            device.skipped_seqs = [*device.skipped_seqs, [expected, op.seq - 1]][-100:]
            log_warning(
                "device.gap_skipped",
                device_id=str(device.pk),
                first=expected,
                last=op.seq - 1,
                waited_seconds=round(waited),
            )
            expected = op.seq
        if op.seq == expected:
            expected += 1
        if op.status == OpStatus.PENDING:
            runnable.append(op)
    else:
        device.gap_since = None
    if expected - 1 > device.done_seq:
        device.done_seq = expected - 1
        if device.gap_seq is not None and device.gap_seq < expected:
            device.gap_seq, device.gap_since = None, None
    return runnable


def _load_records(batch: _Batch) -> None:
    """Lock every record the batch touches, with the parent work orders, in global order."""
    keys: set[RecordKey] = set()
    for op in batch.ops:
        assert op.entity_id is not None
        keys.add((op.entity, op.entity_id))
        spec = ENTITIES[op.entity]
        if spec.parent_field is not None and op.action == "create":
            parent = op.fields.get(spec.parent_field)
            if isinstance(parent, str):
                keys.add((WORK_ORDER.name, uuid.UUID(parent)))
    # Parents of existing children are read first without a lock (a parent never changes),
    # so all row locks can then be taken in one global order.
    for name, spec in ENTITIES.items():
        if spec.parent_field is None:
            continue
        ids = [k[1] for k in keys if k[0] == name]
        if ids:
            attr = spec.fields[spec.parent_field].attr(spec.parent_field)
            parents = spec.model.objects.filter(pk__in=ids).values_list(attr, flat=True)
            keys.update((WORK_ORDER.name, p) for p in parents)
    batch.records = batch.changes.lock(keys)


def _apply_guarded(batch: _Batch, op: Operation, careful: bool) -> None:
    op.finished_at = timezone.now()
    try:
        if careful:
            _apply_isolated(batch, op)
        else:
            _apply_one(batch, op)
    except _Rejected as rejection:
        op.status = OpStatus.REJECTED
        op.code = rejection.code
        op.detail = rejection.detail
        assert op.entity_id is not None
        record = batch.records.get((op.entity, op.entity_id))
        op.version = record.version if record is not None and _visible(batch, record) else None


def _apply_isolated(batch: _Batch, op: Operation) -> None:
    """Apply one op in a savepoint; on an unexpected error undo its in-memory traces too."""
    events, conflicts = len(batch.changes.events), len(batch.conflicts)
    assert op.entity_id is not None
    key = (op.entity, op.entity_id)
    existed = key in batch.records
    try:
        with transaction.atomic():
            _apply_one(batch, op)
    except _Rejected:
        raise
    except Exception as exc:
        log_warning("op.internal_error", op_id=str(op.op_id), error=repr(exc))
        del batch.changes.events[events:]
        del batch.conflicts[conflicts:]
        if existed:
            batch.records[key].refresh_from_db()
        else:
            batch.records.pop(key, None)
        raise _Rejected("internal_error", "the server could not apply this op") from exc


def _apply_one(batch: _Batch, op: Operation) -> None:
    spec = ENTITIES[op.entity]
    assert op.entity_id is not None and op.seq is not None and op.base_version is not None
    record = batch.records.get((op.entity, op.entity_id))
    author = Author.for_op(op)
    if op.action == "create":
        if record is not None:
            raise _Rejected("entity_exists", f"{op.entity} {op.entity_id} already exists")
        _check_parent(batch, spec, op.fields)
        _check_usernames(batch, spec, op.fields)
        record = batch.changes.create(spec, op.entity_id, op.fields, author)
        batch.records[(op.entity, op.entity_id)] = record
        _finish(op, OpStatus.APPLIED, record)
        return
    if record is None or not _visible(batch, record):
        raise _Rejected("not_found", f"{op.entity} {op.entity_id} not found")
    if op.base_version > record.version:
        raise _Rejected(
            "invalid_base_version",
            f"base_version {op.base_version} is ahead of the record (version {record.version})",
        )
    if op.action == "delete":
        if not record.deleted:
            batch.changes.delete(spec, record, author)
        _finish(op, OpStatus.APPLIED, record)
        return
    current = spec.values(record)
    for name, value in op.fields.items():
        if spec.fields[name].immutable and value != current[name]:
            raise _Rejected("immutable_field", f"{name} cannot change after create")
    if record.deleted:
        if op.fields:
            # No edit is silently lost: an update of a deleted record waits for a person.
            conflict = _open_conflict(batch, op, spec, record, DELETED_FIELD, True, op.fields)
            _finish(op, OpStatus.CONFLICT, record, conflict_ids=[str(conflict.id)])
        else:
            _finish(op, OpStatus.APPLIED, record)
        return
    merged = merge_fields(
        spec,
        current,
        record.field_meta,
        op.fields,
        op.base_version,
        str(op.device_id),
        op.seq,
        batch.user.is_dispatcher,
    )
    _check_usernames(batch, spec, merged.changes)
    conflict_ids = [
        str(_open_conflict(batch, op, spec, record, name, server, client).id)
        for name, server, client in merged.conflicts
    ]
    if merged.changes:
        event = batch.changes.update(spec, record, merged.changes, author)
        event.overridden_fields = merged.overridden
        event.conflict_ids = conflict_ids
    status = OpStatus.CONFLICT if conflict_ids else OpStatus.APPLIED
    _finish(op, status, record, merged.overridden, conflict_ids)


def _finish(
    op: Operation,
    status: str,
    record: SyncedRecord,
    overridden: list[str] | None = None,
    conflict_ids: list[str] | None = None,
) -> None:
    op.status = status
    op.version = record.version
    op.overridden_fields = overridden or []
    op.conflict_ids = conflict_ids or []


def _visible(batch: _Batch, record: SyncedRecord) -> bool:
    """Scope: dispatchers see their organisation; technicians their work orders' records."""
    if record.organization_id != batch.device.organization_id:
        return False
    if batch.user.is_dispatcher:
        return True
    spec = next(s for s in ENTITIES.values() if isinstance(record, s.model))
    work_order = batch.records.get((WORK_ORDER.name, uuid.UUID(spec.work_order_id(record))))
    return work_order is not None and work_order.assigned_to_id == batch.user.pk


def _check_parent(batch: _Batch, spec: EntitySpec, fields: dict[str, Json]) -> None:
    if spec.parent_field is None:
        return
    parent_id = uuid.UUID(fields[spec.parent_field])
    parent = batch.records.get((WORK_ORDER.name, parent_id))
    # A child of a deleted work order is still kept: comments and evidence are never lost.
    if parent is None or not _visible(batch, parent):
        raise _Rejected("not_found", f"work order {parent_id} not found")


def _check_usernames(batch: _Batch, spec: EntitySpec, values: dict[str, Json]) -> None:
    for name, value in values.items():
        if not isinstance(spec.fields[name].kind, Username) or value is None:
            continue
        if batch.changes.users.user_for_username(value) is None:
            raise _Rejected("invalid_value", f"{name}: no user {value!r} in this organisation")


def _open_conflict(
    batch: _Batch,
    op: Operation,
    spec: EntitySpec,
    record: SyncedRecord,
    name: str,
    server_value: Json,
    client_value: Json,
) -> Conflict:
    conflict = Conflict(
        organization_id=record.organization_id,
        entity=spec.name,
        entity_id=record.pk,
        work_order_id=uuid.UUID(spec.work_order_id(record)),
        field=name,
        base_value=False if name == DELETED_FIELD else _value_at(spec, record, name, op),
        server_value=server_value,
        client_value=client_value,
        op_id=op.op_id,
        device_id=op.device_id,
        author_id=op.user_id,
    )
    batch.conflicts.append(conflict)
    log_event(
        "conflict.opened",
        conflict_id=str(conflict.id),
        op_id=str(op.op_id),
        entity=spec.name,
        entity_id=str(record.pk),
        field=name,
    )
    return conflict


def _value_at(spec: EntitySpec, record: SyncedRecord, name: str, op: Operation) -> Json:
    """The field's value at the op's base_version: what the client last saw."""
    event = (
        Event.objects.filter(
            entity=spec.name,
            entity_id=record.pk,
            bumped=True,
            version__lte=op.base_version,
            changes__has_key=name,
        )
        .order_by("-version")
        .first()
    )
    return None if event is None else event.changes[name][1]


# ============================================================================================
# Sweep and retention
# ============================================================================================
def ops_sweep() -> list[uuid.UUID]:
    """Ring every device whose ops wait longer than they should (a worker died mid-apply,
    a Celery message was lost, Redis was flushed, or a gap needs skipping)."""
    stale = timezone.now() - timedelta(seconds=settings.SYNC_STALE_PENDING_SECONDS)
    device_ids = list(
        Operation.objects.filter(status=OpStatus.PENDING, received_at__lt=stale)
        .values_list("device_id", flat=True)
        .distinct()
    )
    for device_id in device_ids:
        ring_device(device_id)
    if device_ids:
        log_event("sweep.rang", devices=len(device_ids))
    return device_ids


def history_compact(now: Any = None) -> int:
    """Drop what is older than the retention horizon and no longer needed: finished ops and
    feed entries superseded by a later entry for the same record. Cursors from before the
    horizon then get 410 ``cursor_expired`` (the client resyncs from scratch)."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.SYNC_RETENTION_DAYS)
    horizon = (
        FeedEntry.objects.filter(created_at__lt=cutoff)
        .order_by("-pos")
        .values_list("pos", flat=True)
        .first()
    )
    if horizon is None:
        return 0
    with transaction.atomic():
        mark, _ = RetentionMark.objects.select_for_update().get_or_create(id=1)
        with connection.cursor() as cursor:
            cursor.execute(
                """
                DELETE FROM operations_feedentry f
                WHERE f.pos <= %s AND (f.kind = 'outcome' OR EXISTS (
                    SELECT 1 FROM operations_feedentry later
                    WHERE later.entity_id = f.entity_id AND later.pos > f.pos))
                """,
                [horizon],
            )
            removed: int = cursor.rowcount
        compacted = Operation.objects.filter(status__in=FINISHED, finished_at__lt=cutoff)
        for device_id, seq in _max_seq_per_device(compacted):
            Device.objects.filter(pk=device_id, compacted_seq__lt=seq).update(compacted_seq=seq)
        compacted.delete()
        mark.horizon_pos = max(mark.horizon_pos, horizon)
        mark.compacted_at = now
        mark.save()
    log_event("history.compacted", horizon_pos=horizon, feed_entries_removed=removed)
    return removed


def _max_seq_per_device(ops: Any) -> list[tuple[uuid.UUID, int]]:
    return [
        (row["device_id"], row["top"])
        for row in ops.exclude(seq__isnull=True).values("device_id").annotate(top=Max("seq"))
    ]


# ============================================================================================
# Ops made on the server side (admin workspace, demo data)
# ============================================================================================
def op_submit_local(
    user: User,
    entity: str,
    entity_id: uuid.UUID,
    action: str,
    base_version: int,
    fields: dict[str, Json],
) -> Operation:
    """Make an op as the user's admin device and apply it now: exactly a phone's path, so a
    dispatcher's edit in the admin is an event with the same rules and the same trail."""
    device = admin_device_for(user)
    op_id = uuid.uuid4()
    with transaction.atomic():
        # Serialises seq numbering for this admin device (two browser tabs).
        Device.objects.select_for_update().filter(pk=device.pk).first()
        top = Operation.objects.filter(device_id=device.pk).aggregate(m=Max("seq"))["m"] or 0
        raw = {
            "op_id": str(op_id),
            "seq": top + 1,
            "entity": entity,
            "entity_id": str(entity_id),
            "action": action,
            "base_version": base_version,
            "fields": fields,
            "client_time": timezone.now().isoformat(),
        }
        result = op_batch_accept(user, device.pk, [raw])[0]
    if result.status == "rejected":
        raise DomainError(result.code, result.detail)
    device_apply_pending(device.pk)
    return Operation.objects.get(pk=op_id)
