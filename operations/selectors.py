"""Read side: the pull feed, op outcomes and device health."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Min, Q

from accounts.models import Device, User
from operations.exceptions import Refusal, SyncError
from operations.models import (
    DeviceSyncState,
    FeedEntry,
    FeedKind,
    Operation,
    OpStatus,
    RetentionMark,
)
from workorders.fields import Json
from workorders.models import WorkOrder
from workorders.registry import ENTITIES
from workorders.scope import Scope

_CURSOR_PREFIX = "fs1:"


def cursor_encode(pos: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{pos}".encode()).decode().rstrip("=")


def cursor_decode(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if text.startswith(_CURSOR_PREFIX):
            pos = int(text[len(_CURSOR_PREFIX) :])
            if pos >= 0:
                return pos
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise SyncError("invalid_cursor", "cursor is not one this server issued")


def op_get_for_user(user: User, op_id: uuid.UUID) -> Operation:
    """An op its author can read, or any op of the organisation for a dispatcher."""
    scope = Scope.of(user)
    # client_time is not part of an outcome; not reading it keeps a row stored before times
    # were checked readable.
    ops = Operation.objects.defer("client_time")
    op = ops.filter(pk=op_id, organization_id=scope.organization_id).first()
    if op is None or not (scope.whole_organization or op.user_id == user.pk):
        raise SyncError("not_found", "no such op", Refusal.NOT_FOUND)
    return op


@dataclass(frozen=True)
class Change:
    """The latest state of one record, as a device in this scope may see it."""

    entity: str
    entity_id: uuid.UUID
    version: int
    state: str  # live | deleted | revoked
    fields: dict[str, Json]
    op_id: uuid.UUID | None


@dataclass(frozen=True)
class PullPage:
    changes: list[Change]
    outcomes: list[Operation]
    last_done_seq: int
    cursor: str
    has_more: bool


def changes_since(user: User, device: Device, cursor: str | None, limit: int) -> PullPage:
    """One page of the commit-ordered feed for this user's scope and this device's outcomes.

    Positions become visible in commit order (see ``FeedEntry``), so following the cursor
    never skips an entry, even one written by a transaction that was slow to commit.
    """
    after = cursor_decode(cursor)
    horizon = RetentionMark.objects.filter(id=1).values_list("horizon_pos", flat=True).first()
    if after and horizon and after < horizon:
        raise SyncError(
            "cursor_expired",
            "this cursor is older than the retention horizon; resync from scratch (no cursor)",
            Refusal.GONE,
        )
    last_done = _last_done_seq(device)
    scope = Scope.of(user)
    in_scope = Q(kind=FeedKind.RECORD)
    if not scope.whole_organization:
        in_scope &= Q(assignee_id=scope.technician_id) | Q(prev_assignee_id=scope.technician_id)
    entries = list(
        FeedEntry.objects.filter(organization_id=scope.organization_id, pos__gt=after)
        .filter(in_scope | Q(kind=FeedKind.OUTCOME, device_id=device.pk))
        .order_by("pos")[: limit + 1]
    )
    has_more = len(entries) > limit
    entries = entries[:limit]
    return PullPage(
        changes=_changes(scope, [e for e in entries if e.kind == FeedKind.RECORD]),
        outcomes=_outcomes([e for e in entries if e.kind == FeedKind.OUTCOME]),
        last_done_seq=last_done,
        cursor=cursor_encode(entries[-1].pos if entries else after),
        has_more=has_more,
    )


def _last_done_seq(device: Device) -> int:
    """The watermark, lowered below any late op still pending under it (after a skip)."""
    state = DeviceSyncState.objects.filter(pk=device.pk).values_list("done_seq", flat=True)
    done = state.first() or 0
    late = Operation.objects.filter(
        device_id=device.pk, status=OpStatus.PENDING, seq__lte=done
    ).aggregate(first=Min("seq"))["first"]
    return done if late is None else late - 1


def _changes(scope: Scope, entries: list[FeedEntry]) -> list[Change]:
    latest: dict[tuple[str, Any], FeedEntry] = {}
    for entry in entries:  # only the latest state of a record is sent
        latest.pop((entry.entity, entry.entity_id), None)
        latest[(entry.entity, entry.entity_id)] = entry
    by_entity: dict[str, list[Any]] = {}
    for entity, entity_id in latest:
        by_entity.setdefault(entity, []).append(entity_id)
    records: dict[tuple[str, Any], Any] = {}
    for entity, ids in by_entity.items():
        spec = ENTITIES[entity]
        for obj in spec.model.objects.select_related(*spec.select_related).filter(pk__in=ids):
            records[(entity, obj.pk)] = obj
    assignees = _current_assignees(scope, records)
    out: list[Change] = []
    for key, entry in latest.items():
        obj = records.get(key)
        if obj is None:
            continue
        # Decided by where the record is now, not by the entry: an old entry still names the
        # technician the work order was assigned to then.
        work_order_id = uuid.UUID(ENTITIES[key[0]].work_order_id(obj))
        revoked = not scope.holds(obj.organization_id, assignees.get(work_order_id))
        state = "revoked" if revoked else ("deleted" if obj.deleted else "live")
        fields = {} if revoked else ENTITIES[key[0]].values(obj)
        out.append(Change(key[0], key[1], obj.version, state, fields, entry.op_id))
    return out


def _current_assignees(
    scope: Scope, records: dict[tuple[str, Any], Any]
) -> dict[uuid.UUID, int | None]:
    """The current assignee of each record's work order (none needed for a dispatcher)."""
    if scope.whole_organization:
        return {}
    wanted = {
        uuid.UUID(ENTITIES[entity].work_order_id(obj)) for (entity, _), obj in records.items()
    }
    return dict(WorkOrder.objects.filter(pk__in=wanted).values_list("pk", "assigned_to_id"))


def _outcomes(entries: list[FeedEntry]) -> list[Operation]:
    ids = list(dict.fromkeys(e.op_id for e in entries))
    ops = Operation.objects.defer("client_time").in_bulk(ids)
    return [ops[i] for i in ids if i in ops]


def device_health(device: Device) -> dict[str, Json]:
    state = DeviceSyncState.objects.filter(pk=device.pk).first() or DeviceSyncState(device=device)
    counts = dict(
        Operation.objects.filter(device_id=device.pk)
        .values_list("status")
        .annotate(n=Count("op_id"))
        .values_list("status", "n")
    )
    return {
        "device_id": str(device.pk),
        "done_seq": state.done_seq,
        "waiting_for_seq": state.gap_seq if state.gap_since else None,
        "skipped_seqs": state.skipped_seqs,
        "compacted_seq": state.compacted_seq,
        "last_error": state.last_error,
        "pending": counts.get(OpStatus.PENDING, 0),
        "applied": counts.get(OpStatus.APPLIED, 0),
        "conflict": counts.get(OpStatus.CONFLICT, 0),
        "rejected": counts.get(OpStatus.REJECTED, 0),
        "last_push_at": device.last_push_at.isoformat() if device.last_push_at else None,
        "last_pull_at": device.last_pull_at.isoformat() if device.last_pull_at else None,
    }
