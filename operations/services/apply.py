"""Apply: devices' pending ops, each device's in seq order, with the per-field merge rules.

Work is done in *rounds*. A round is one transaction that claims up to SYNC_APPLY_DEVICES
devices with work (their sync state rows, locked with SKIP LOCKED, so each device is walked
by one worker at a time while several workers share the rest), takes up to SYNC_APPLY_BATCH
ops of each, locks every record they touch in one global order, applies them in memory and
writes the new record states, events, conflicts, op outcomes and feed entries with a fixed
number of statements, however many ops the round holds.

Devices are claimed fairly: each organisation's devices take turns (first the device with
the oldest pending op of every organisation, then the second of each, ...), so a tenant
pushing tens of thousands of ops never holds back another tenant's next op by more than a
round. An op is applied at most once whatever the workers do: its status flips from pending
in the same transaction that writes its event, which is unique per op.
"""

from __future__ import annotations

import select
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import User
from common.db import models_prepared
from common.doorbell import answered, ring_coalesced
from common.logging import log_event, log_warning
from conflicts.models import Conflict
from operations.history import record_values_at
from operations.merge import merge_fields
from operations.models import DeviceSyncState, Operation, OpStatus
from operations.recording import Author, ChangeSet, lock_records, update_rows
from operations.services.state import (
    devices_waiting,
    locked_at,
    note_last_errors,
    sync_states_lock,
)
from operations.validation import OpRejection, id_taken
from workorders.fields import Json, Username
from workorders.models import SyncedRecord
from workorders.reading import parents_of
from workorders.registry import DELETED, ENTITIES, WORK_ORDER, EntitySpec
from workorders.scope import Scope

RecordKey = tuple[str, uuid.UUID]
DRAIN_TASK = "operations.tasks.apply_pending_ops_task"
# Set while a drain task waits for a worker, so a push rings only when none is waiting.
DRAIN_FLAG = "fieldsync:apply:rung"


@dataclass
class _Batch:
    """One device's share of a round. Records and conflicts are shared by the whole round,
    so two devices editing one record in a round see each other's changes in order."""

    user: User
    scope: Scope
    ops: list[Operation]
    changes: ChangeSet
    records: dict[RecordKey, Any] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)


@dataclass
class _Round:
    claimed: list[uuid.UUID] = field(default_factory=list)
    # Devices that had work when these were claimed (these included).
    waiting: int = 0
    finished: int = 0
    # Some device has more ops waiting than a round takes, and it moved forward.
    more: bool = False


def ring_drain() -> None:
    """Ask a worker to drain pending ops, unless a drain is already waiting for one; after
    the current transaction commits."""
    transaction.on_commit(lambda: ring_coalesced(DRAIN_TASK, DRAIN_FLAG))


def ops_apply_drain(budget_seconds: float = 10.0) -> int:
    """Apply pending ops of any devices, round after round, until none is left that this
    worker can claim; returns how many finished. Past the budget it rings for another drain
    and returns, so a long backlog is worked in tasks of bounded length."""
    # The flag stays up for a moment first: pushes arriving meanwhile ring nobody and are
    # applied in this drain's first round, so a steady trickle of pushes costs a task per
    # handful of them rather than one each.
    _pause(settings.SYNC_APPLY_GATHER_SECONDS)
    answered(DRAIN_FLAG)  # from here on, a new push rings again
    finished = 0
    deadline = time.monotonic() + budget_seconds
    while True:
        done = _round_or_carefully(None)
        finished += done.finished
        if not done.claimed or not (done.finished or done.more):
            return finished
        if done.waiting <= len(done.claimed) and not done.more:
            # Nothing else was waiting when this round claimed, and whatever was pushed
            # since rang again (the flag went down before the claim): no round to look.
            return finished
        if time.monotonic() > deadline:
            ring_coalesced(DRAIN_TASK, DRAIN_FLAG)
            return finished
        if done.waiting > len(done.claimed):
            # Devices were left for another worker: ask one to join in (it claims them;
            # when a third one finds none left, it stops at once).
            ring_coalesced(DRAIN_TASK, DRAIN_FLAG)


def _pause(seconds: float) -> None:
    """Sleep, with a relative timeout: Python's ``time.sleep`` sleeps to an absolute
    deadline, which a host whose clock is faked (libfaketime, as the many-hosts test runs a
    skewed worker) refuses with EINVAL."""
    select.select([], [], [], seconds)


def device_apply_pending(device_id: uuid.UUID, max_batches: int = 100, wait: bool = True) -> int:
    """Apply one device's pending ops in seq order, in rounds of that device alone (the
    sweep's way in, and the workspace's, which applies a dispatcher's edit at once);
    returns how many finished. Without ``wait`` a device another round holds is left to it
    (the sweep's task: a session lost with its host holds the row until Postgres drops it,
    and no worker process should wait that out)."""
    finished = 0
    for _ in range(max_batches):
        done = _round_or_carefully([device_id], wait)
        finished += done.finished
        if not done.more:
            break
    return finished


def _round_or_carefully(devices: list[uuid.UUID] | None, wait: bool = True) -> _Round:
    claimed: list[uuid.UUID] = []
    try:
        return _apply_round(devices, careful=False, claimed=claimed, wait=wait)
    except Exception as exc:  # an unexpected bug in one op
        if not claimed:
            raise  # nothing was claimed: the database itself failed, let the task retry
        # Retry device by device, op by op in savepoints, so one poisoned op is rejected
        # with ``internal_error`` instead of blocking every op behind it.
        log_warning("apply.batch_failed", devices=[str(d) for d in claimed], error=repr(exc))
        total = _Round()
        for device_id in claimed:
            done = _apply_round([device_id], careful=True, claimed=[], wait=wait)
            total.claimed += done.claimed
            total.finished += done.finished
            total.more = total.more or done.more
        return total


def _apply_round(
    devices: list[uuid.UUID] | None, careful: bool, claimed: list[uuid.UUID], wait: bool = True
) -> _Round:
    """One round: claim devices (these, or any with work), apply their next ops, write."""
    done = _Round()
    logs: list[tuple[DeviceSyncState, list[Operation]]] = []
    with transaction.atomic():
        states = sync_states_lock(devices, settings.SYNC_APPLY_DEVICES, wait)
        claimed.extend(s.pk for s in states)
        done.claimed = list(claimed)
        done.waiting = devices_waiting(states)
        if not states:
            return done
        # At most SYNC_APPLY_ROUND_OPS in all: a round's ops commit together, so a round
        # full of one tenant's backlog must stay short for the next tenant's op behind it.
        per_device = max(
            1, min(settings.SYNC_APPLY_BATCH, settings.SYNC_APPLY_ROUND_OPS // len(states))
        )
        candidates = _candidates(states, careful, per_device)
        changesets: dict[int, ChangeSet] = {}
        records: dict[RecordKey, Any] = {}
        conflicts: list[Conflict] = []
        batches: list[_Batch] = []
        for state in states:
            ops = candidates.get(state.pk, [])
            watermark = state.done_seq
            runnable = _runnable(state, ops)
            progressed = bool(runnable) or state.done_seq > watermark
            done.more = done.more or (len(ops) >= per_device and progressed)
            if runnable:
                org = state.device.organization_id
                changes = changesets.setdefault(org, ChangeSet(org, immediate=careful))
                user = state.device.user
                batches.append(_Batch(user, Scope.of(user), runnable, changes, records, conflicts))
                logs.append((state, runnable))
        _save_states(states)
        if batches:
            if not careful:  # careful: each op locks its own records, in its savepoint
                _load_records(records, [op for b in batches for op in b.ops])
            for batch in batches:
                for op in batch.ops:
                    if op.status == OpStatus.PENDING:
                        _apply_guarded(batch, op, careful)
            ops = [op for b in batches for op in b.ops]
            note_last_errors(ops)
            Conflict.objects.bulk_create(conflicts)
            _save_outcomes(ops)
            for batch in batches:
                for op in batch.ops:
                    batch.changes.outcome(op)
            # Organisations in one order: each flush takes its organisation's feed lock, held
            # to commit, and rounds must not wait for each other in a circle.
            # The round locked every work order its ops touch (and their parents): the feed
            # reads their assignees from memory, not Postgres.
            work_orders = {k[1]: r for k, r in records.items() if k[0] == WORK_ORDER.name}
            for org in sorted(changesets):
                changesets[org].flush(work_orders)
            done.finished = len(ops)
    for state, ops in logs:
        log_event(
            "ops.finished",
            device_id=str(state.pk),
            done_seq=state.done_seq,
            ops=[
                [str(op.op_id), op.seq, op.status, op.entity, str(op.entity_id), op.version,
                 op.code, op.overridden_fields, op.conflict_ids]
                for op in ops
            ],
        )  # fmt: skip
    return done


# Each claimed device's next ops in seq order (pending ones, and ops refused at push above
# the watermark, which the walk counts as finished). ``client_time`` is not read: the apply
# does not need it.
_CANDIDATES_SQL = """
    SELECT o.op_id, o.device_id, o.organization_id, o.user_id, o.seq, o.entity, o.entity_id,
           o.action, o.base_version, o.fields, o.content_hash, o.received_at, o.status,
           o.rejected_at_push, o.code, o.detail, o.version, o.overridden_fields,
           o.conflict_ids, o.finished_at
    FROM unnest(%(devices)s::uuid[], %(done)s::bigint[]) AS s(device_id, done_seq)
    CROSS JOIN LATERAL (
        SELECT * FROM operations_operation o
        WHERE o.device_id = s.device_id
          AND (o.status = 'pending' OR (o.rejected_at_push AND o.seq > s.done_seq))
        ORDER BY o.seq, o.received_at
        LIMIT %(limit)s
    ) AS o
"""


def _candidates(
    states: list[DeviceSyncState], careful: bool, limit: int
) -> dict[uuid.UUID, list[Operation]]:
    """The devices' next ops, in seq order, by device. Carefully (after a failed round, one
    device at a time), an op whose row cannot even be read is finished as ``internal_error``
    rather than blocking the ops behind it for ever."""
    if not careful:
        return _read_candidates(states, limit)
    try:
        with transaction.atomic():
            return _read_candidates(states, limit)
    except DatabaseError as exc:
        log_warning("apply.unreadable_ops", devices=[str(s.pk) for s in states], error=repr(exc))
    (state,) = states
    rows = (
        Operation.objects.filter(device_id=state.pk)
        .filter(Q(status=OpStatus.PENDING) | Q(rejected_at_push=True, seq__gt=state.done_seq))
        .order_by("seq", "received_at")[:limit]
    )
    return {
        state.pk: [
            _read_or_finish(state, op_id, seq) for op_id, seq in rows.values_list("op_id", "seq")
        ]
    }


def _read_candidates(states: list[DeviceSyncState], limit: int) -> dict[uuid.UUID, list[Operation]]:
    params = {
        "devices": [s.pk for s in states],
        "done": [s.done_seq for s in states],
        "limit": limit,
    }
    by_device: dict[uuid.UUID, list[Operation]] = {}
    for op in models_prepared(Operation, _CANDIDATES_SQL, params):
        by_device.setdefault(op.device_id, []).append(op)
    return by_device


def _read_or_finish(state: DeviceSyncState, op_id: uuid.UUID, seq: int | None) -> Operation:
    try:
        with transaction.atomic():
            return Operation.objects.defer("client_time").get(pk=op_id)
    except DatabaseError as exc:
        log_warning("op.internal_error", op_id=str(op_id), error=repr(exc))
    # Only the columns the outcome needs: the rest of the row is what could not be read.
    return Operation(
        op_id=op_id,
        device_id=state.pk,
        seq=seq,
        status=OpStatus.REJECTED,
        code="internal_error",
        detail="the server could not read this op",
        finished_at=timezone.now(),
    )


def _save_states(states: list[DeviceSyncState]) -> None:
    """One UPDATE for the round's watermarks and gap notes."""
    update_rows(DeviceSyncState, ("done_seq", "gap_since", "gap_seq", "skipped_seqs"), states)


def _save_outcomes(ops: list[Operation]) -> None:
    """One UPDATE for a round's outcomes (Django's bulk_update builds a CASE per field per
    row, which was half of the apply loop's time)."""
    fields = ("status", "code", "detail", "version", "overridden_fields", "conflict_ids")
    update_rows(Operation, (*fields, "finished_at"), ops)


def _runnable(state: DeviceSyncState, candidates: list[Operation]) -> list[Operation]:
    """Walk the device's ops in seq order and advance its ``done_seq`` watermark.

    An op waits for seq - 1; an op rejected at push counts as finished; a gap still open
    after SYNC_GAP_TIMEOUT_SECONDS is skipped (and remembered in ``skipped_seqs``).
    Ops at or below the watermark are late arrivals after a skip: they run, but never
    overwrite fields that the device's later ops wrote (see ``merge_fields``).

    The gap is timed by the database's clock (``locked_at``), not this worker's: the worker
    that opened it and the one that may skip it can run on hosts whose clocks disagree.
    """
    now = locked_at(state)
    expected = state.done_seq + 1
    runnable: list[Operation] = []
    for op in candidates:
        assert op.seq is not None
        if op.seq > expected:
            if state.gap_seq != expected or state.gap_since is None:
                state.gap_seq, state.gap_since = expected, now
            waited = (now - state.gap_since).total_seconds()
            if waited < settings.SYNC_GAP_TIMEOUT_SECONDS:
                break
            state.skipped_seqs = [*state.skipped_seqs, [expected, op.seq - 1]][-100:]
            log_warning(
                "device.gap_skipped",
                device_id=str(state.pk),
                first=expected,
                last=op.seq - 1,
                waited_seconds=round(waited),
            )
            expected = op.seq
        if op.seq == expected:
            expected += 1
        if not op.rejected_at_push:  # pending, or unreadable and finished by _candidates
            runnable.append(op)
    else:
        state.gap_since = None
    if expected - 1 > state.done_seq:
        state.done_seq = expected - 1
        if state.gap_seq is not None and state.gap_seq < expected:
            state.gap_seq, state.gap_since = None, None
    return runnable


def _load_records(records: dict[RecordKey, Any], ops: list[Operation]) -> None:
    """Lock every record the ops touch, with the parent work orders, in global order."""
    keys: set[RecordKey] = set()
    for op in ops:
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
        ids = [k[1] for k in keys if k[0] == name]
        if spec.parent_field is not None and ids:
            keys.update((WORK_ORDER.name, p) for p in parents_of(name, ids))
    records.update(lock_records(keys - records.keys()))


def _apply_guarded(batch: _Batch, op: Operation, careful: bool) -> None:
    op.finished_at = timezone.now()
    try:
        if careful:
            _apply_isolated(batch, op)
        else:
            _apply_one(batch, op)
    except OpRejection as rejection:
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
    loaded = set(batch.records)
    try:
        with transaction.atomic():  # released at once: the row locks it takes are kept
            _load_records(batch.records, [op])
        with transaction.atomic():
            _apply_one(batch, op)
    except OpRejection:
        raise
    except Exception as exc:
        log_warning("op.internal_error", op_id=str(op.op_id), error=repr(exc))
        del batch.changes.events[events:]
        del batch.conflicts[conflicts:]
        # A savepoint rolled back releases the row locks it took: forget those rows.
        for new in set(batch.records) - loaded:
            del batch.records[new]
        if key in batch.records:
            batch.records[key].refresh_from_db()
        raise OpRejection("internal_error", "the server could not apply this op") from exc


def _apply_one(batch: _Batch, op: Operation) -> None:
    spec = ENTITIES[op.entity]
    assert op.entity_id is not None and op.seq is not None and op.base_version is not None
    record = batch.records.get((op.entity, op.entity_id))
    author = Author.for_op(op)
    if op.action == "create":
        if record is not None:
            raise id_taken(op.entity, op.entity_id, _visible(batch, record))
        _check_parent(batch, spec, op.fields)
        _check_usernames(batch, spec, op.fields)
        record = batch.changes.create(spec, op.entity_id, op.fields, author)
        batch.records[(op.entity, op.entity_id)] = record
        _finish(op, OpStatus.APPLIED, record)
        return
    if record is None or not _visible(batch, record):
        raise OpRejection("not_found", f"{op.entity} {op.entity_id} not found")
    if op.base_version > record.version:
        raise OpRejection(
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
            raise OpRejection("immutable_field", f"{name} cannot change after create")
    if record.deleted:
        if op.fields:
            # No edit is silently lost: an update of a deleted record waits for a person.
            conflict = _open_conflict(batch, op, spec, record, DELETED, True, op.fields)
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
    """Whether the record is in the op author's scope (its work order is locked already)."""
    spec = next(s for s in ENTITIES.values() if isinstance(record, s.model))
    work_order = batch.records.get((WORK_ORDER.name, uuid.UUID(spec.work_order_id(record))))
    return work_order is not None and batch.scope.holds(
        record.organization_id, work_order.assigned_to_id
    )


def _check_parent(batch: _Batch, spec: EntitySpec, fields: dict[str, Json]) -> None:
    if spec.parent_field is None:
        return
    parent_id = uuid.UUID(fields[spec.parent_field])
    parent = batch.records.get((WORK_ORDER.name, parent_id))
    # A child of a deleted work order is still kept: comments and evidence are never lost.
    if parent is None or not _visible(batch, parent):
        raise OpRejection("not_found", f"work order {parent_id} not found")


def _check_usernames(batch: _Batch, spec: EntitySpec, values: dict[str, Json]) -> None:
    for name, value in values.items():
        if not isinstance(spec.fields[name].kind, Username) or value is None:
            continue
        if batch.changes.users.user_for_username(value) is None:
            raise OpRejection("invalid_value", f"{name}: no user {value!r} in this organisation")


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
        # What the client last saw: the field at the op's base version.
        base_value=(
            False if name == DELETED else record_values_at(spec, record, op.base_version or 0)[name]
        ),
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
