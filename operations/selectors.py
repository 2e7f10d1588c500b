"""Read side: the pull feed, op outcomes and device health."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Min, Q

from accounts.models import Device, User
from common.exceptions import DomainError
from operations.models import FeedEntry, FeedKind, Operation, OpStatus, RetentionMark
from workorders.fields import Json
from workorders.registry import ENTITIES

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
    raise DomainError("invalid_cursor", "cursor is not one this server issued")


def op_outcome(op: Operation) -> dict[str, Json]:
    return {
        "op_id": str(op.op_id),
        "device_id": str(op.device_id),
        "seq": op.seq,
        "status": op.status,
        "version": op.version,
        "overridden_fields": op.overridden_fields,
        "conflict_ids": op.conflict_ids,
        "code": op.code or None,
        "detail": op.detail or None,
    }


def op_get_for_user(user: User, op_id: uuid.UUID) -> Operation:
    """An op its author can read, or any op of the organisation for a dispatcher."""
    op = Operation.objects.filter(pk=op_id, organization_id=user.org_id).first()
    if op is None or (op.user_id != user.pk and not user.is_dispatcher):
        raise DomainError("not_found", "no such op", status=404)
    return op


@dataclass
class PullPage:
    changes: list[dict[str, Json]]
    outcomes: list[dict[str, Json]]
    last_done_seq: int
    cursor: str
    has_more: bool

    def as_dict(self) -> dict[str, Json]:
        return {
            "changes": self.changes,
            "outcomes": self.outcomes,
            "last_done_seq": self.last_done_seq,
            "cursor": self.cursor,
            "has_more": self.has_more,
        }


def changes_since(user: User, device: Device, cursor: str | None, limit: int) -> PullPage:
    """One page of the commit-ordered feed for this user's scope and this device's outcomes.

    Positions become visible in commit order (see ``FeedEntry``), so following the cursor
    never skips an entry, even one written by a transaction that was slow to commit.
    """
    after = cursor_decode(cursor)
    horizon = RetentionMark.objects.filter(id=1).values_list("horizon_pos", flat=True).first()
    if after and horizon and after < horizon:
        raise DomainError(
            "cursor_expired",
            "this cursor is older than the retention horizon; resync from scratch (no cursor)",
            status=410,
        )
    last_done = _last_done_seq(device)
    in_scope = Q(kind=FeedKind.RECORD)
    if not user.is_dispatcher:
        in_scope &= Q(assignee_id=user.pk) | Q(prev_assignee_id=user.pk)
    entries = list(
        FeedEntry.objects.filter(organization_id=user.org_id, pos__gt=after)
        .filter(in_scope | Q(kind=FeedKind.OUTCOME, device_id=device.pk))
        .order_by("pos")[: limit + 1]
    )
    has_more = len(entries) > limit
    entries = entries[:limit]
    return PullPage(
        changes=_changes(user, [e for e in entries if e.kind == FeedKind.RECORD]),
        outcomes=_outcomes([e for e in entries if e.kind == FeedKind.OUTCOME]),
        last_done_seq=last_done,
        cursor=cursor_encode(entries[-1].pos if entries else after),
        has_more=has_more,
    )


def _last_done_seq(device: Device) -> int:
    """The watermark, lowered below any late op still pending under it (after a skip)."""
    done = Device.objects.filter(pk=device.pk).values_list("done_seq", flat=True).first() or 0
    late = Operation.objects.filter(
        device_id=device.pk, status=OpStatus.PENDING, seq__lte=done
    ).aggregate(first=Min("seq"))["first"]
    return done if late is None else late - 1


def _changes(user: User, entries: list[FeedEntry]) -> list[dict[str, Json]]:
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
    out: list[dict[str, Json]] = []
    for key, entry in latest.items():
        obj = records.get(key)
        if obj is None:
            continue
        revoked = not user.is_dispatcher and entry.assignee_id != user.pk
        state = "revoked" if revoked else ("deleted" if obj.deleted else "live")
        out.append(
            {
                "entity": key[0],
                "entity_id": str(key[1]),
                "version": obj.version,
                "state": state,
                "fields": {} if revoked else ENTITIES[key[0]].values(obj),
                "op_id": None if entry.op_id is None else str(entry.op_id),
            }
        )
    return out


def _outcomes(entries: list[FeedEntry]) -> list[dict[str, Json]]:
    ids = list(dict.fromkeys(e.op_id for e in entries))
    ops = Operation.objects.in_bulk(ids)
    return [op_outcome(ops[i]) for i in ids if i in ops]


def device_health(device: Device) -> dict[str, Json]:
    counts = dict(
        Operation.objects.filter(device_id=device.pk)
        .values_list("status")
        .annotate(n=Count("op_id"))
        .values_list("status", "n")
    )
    return {
        "device_id": str(device.pk),
        "done_seq": device.done_seq,
        "waiting_for_seq": device.gap_seq if device.gap_since else None,
        "skipped_seqs": device.skipped_seqs,
        "pending": counts.get(OpStatus.PENDING, 0),
        "applied": counts.get(OpStatus.APPLIED, 0),
        "conflict": counts.get(OpStatus.CONFLICT, 0),
        "rejected": counts.get(OpStatus.REJECTED, 0),
        "last_push_at": device.last_push_at.isoformat() if device.last_push_at else None,
        "last_pull_at": device.last_pull_at.isoformat() if device.last_pull_at else None,
    }
