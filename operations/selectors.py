"""Read side: the pull feed, op outcomes and device health."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Count

from accounts.models import Device, User
from common.db import fetch_prepared, models_prepared
from operations.exceptions import Refusal, SyncError
from operations.models import (
    DeviceSyncState,
    FeedKind,
    Operation,
    OpStatus,
)
from workorders.fields import Json
from workorders.reading import Held, records_held
from workorders.registry import ENTITIES
from workorders.scope import Scope

_CURSOR_PREFIX = "fs1:"
# The feed is partitioned by month of created_at (operations.partitions). A cursor also
# carries a moment no entry after its position can be older than (an entry's created_at is
# its writer's clock when it was written; a later position of the same organisation can be
# older only by the time its transaction waited for the organisation's feed lock and the
# clock skew between hosts), so a pull plans and reads only the months from there on.
# ``SINCE_MARGIN`` covers both many times over.
SINCE_MARGIN = timedelta(hours=1)
# No bound: every partition, the feed's base (entries kept past retention) included.
_EVER = datetime(1900, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Cursor:
    pos: int
    since: datetime = _EVER  # no entry after pos was written before this

    def encode(self) -> str:
        text = f"{_CURSOR_PREFIX}{self.pos}"
        if self.since != _EVER:
            text += f":{int(self.since.timestamp())}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def cursor_read(cursor: str | None) -> Cursor:
    """A cursor this server issued (``fs1:<pos>``, or ``fs1:<pos>:<since, epoch seconds>``);
    no cursor is the start of the feed."""
    if not cursor:
        return Cursor(0)
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if text.startswith(_CURSOR_PREFIX):
            pos, _, since = text[len(_CURSOR_PREFIX) :].partition(":")
            if int(pos) >= 0:
                if not since:
                    return Cursor(int(pos))
                return Cursor(int(pos), datetime.fromtimestamp(int(since), tz=UTC))
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError, OSError):
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
    read = cursor_read(cursor)
    after = read.pos
    scope = Scope.of(user)
    head, entries = _read_feed(scope, device.pk, read, limit + 1)
    if after and head.horizon and after < head.horizon:
        raise SyncError(
            "cursor_expired",
            "this cursor is older than the retention horizon; resync from scratch (no cursor)",
            Refusal.GONE,
        )
    has_more = len(entries) > limit
    entries = entries[:limit]
    return PullPage(
        changes=_changes(scope, [e for e in entries if e.kind == FeedKind.RECORD]),
        outcomes=_outcomes([e for e in entries if e.kind == FeedKind.OUTCOME]),
        last_done_seq=head.last_done_seq,
        cursor=_next_cursor(read, entries),
        has_more=has_more,
    )


def _next_cursor(read: Cursor, entries: list[_FeedRow]) -> str:
    if not entries:
        return read.encode()
    last = entries[-1]
    if last.created_at is None or last.created_at < _EVER + SINCE_MARGIN:
        return Cursor(last.pos).encode()  # an entry of the base: no bound yet
    return Cursor(last.pos, max(read.since, last.created_at - SINCE_MARGIN)).encode()


@dataclass(frozen=True)
class _FeedHead:
    horizon: int
    # The apply watermark, lowered below any late op still pending under it (after a skip).
    last_done_seq: int


@dataclass(frozen=True)
class _FeedRow:
    pos: int
    kind: str
    entity: str
    entity_id: uuid.UUID | None
    op_id: uuid.UUID | None
    created_at: datetime | None = None


# What a pull reads, in one round trip of one fixed statement (built once, so a pull spends
# no time composing SQL): the retention horizon, the device's watermark and the page of the
# feed. A technician's page is the union of three index range scans (records they hold,
# records they just lost, their device's outcomes), so it reads only their own rows however
# busy the rest of the organisation is; a dispatcher's is the organisation's.
_HEAD_SQL = """
    SELECT 0 AS part, NULL::bigint AS pos, NULL::varchar AS kind, NULL::varchar AS entity,
           NULL::uuid AS entity_id, NULL::uuid AS op_id,
           (SELECT horizon_pos FROM operations_retentionmark WHERE id = 1) AS horizon,
           s.done_seq,
           (SELECT min(o.seq) FROM operations_operation o
             WHERE o.device_id = %(device)s AND o.status = 'pending' AND o.seq <= s.done_seq),
           NULL::timestamptz AS created_at
    FROM (SELECT (SELECT done_seq FROM operations_devicesyncstate
                   WHERE device_id = %(device)s) AS done_seq) AS s
"""
_PAGE_COLUMNS = (
    "1, pos, kind, entity, entity_id, op_id, NULL::bigint, NULL::bigint, NULL::bigint, created_at"
)
_TECHNICIAN_PAGE_SQL = f"""
    SELECT {_PAGE_COLUMNS} FROM (
        (SELECT * FROM operations_feedentry
          WHERE assignee_id = %(technician)s AND pos > %(after)s AND created_at >= %(since)s
            AND organization_id = %(org)s AND kind = 'record'
          ORDER BY pos LIMIT %(limit)s)
        UNION
        (SELECT * FROM operations_feedentry
          WHERE prev_assignee_id = %(technician)s AND pos > %(after)s AND created_at >= %(since)s
            AND organization_id = %(org)s AND kind = 'record'
          ORDER BY pos LIMIT %(limit)s)
        UNION
        (SELECT * FROM operations_feedentry
          WHERE device_id = %(device)s AND pos > %(after)s AND created_at >= %(since)s
            AND organization_id = %(org)s AND kind = 'outcome'
          ORDER BY pos LIMIT %(limit)s)
    ) AS f ORDER BY pos LIMIT %(limit)s
"""  # noqa: S608 - nothing but these constants is formatted in; every value is a parameter
_DISPATCHER_PAGE_SQL = f"""
    SELECT {_PAGE_COLUMNS} FROM operations_feedentry
     WHERE organization_id = %(org)s AND pos > %(after)s AND created_at >= %(since)s
       AND (kind = 'record' OR (kind = 'outcome' AND device_id = %(device)s))
     ORDER BY pos LIMIT %(limit)s
"""  # noqa: S608 - nothing but these constants is formatted in; every value is a parameter
_PULL_SQL = {
    True: f"{_HEAD_SQL} UNION ALL ({_DISPATCHER_PAGE_SQL})",
    False: f"{_HEAD_SQL} UNION ALL ({_TECHNICIAN_PAGE_SQL})",
}


def _read_feed(
    scope: Scope, device_id: uuid.UUID, after: Cursor, limit: int
) -> tuple[_FeedHead, list[_FeedRow]]:
    params = {
        "device": device_id,
        "technician": scope.technician_id,
        "org": scope.organization_id,
        "after": after.pos,
        "since": after.since,
        "limit": limit,
    }
    rows, _, _ = fetch_prepared(_PULL_SQL[scope.whole_organization], params)
    head = next(r for r in rows if r[0] == 0)
    done, late = head[7] or 0, head[8]
    entries = sorted(
        (_FeedRow(r[1], r[2], r[3], r[4], r[5], r[9]) for r in rows if r[0] == 1),
        key=lambda e: e.pos,
    )
    return _FeedHead(head[6] or 0, done if late is None else late - 1), entries


def _changes(scope: Scope, entries: list[_FeedRow]) -> list[Change]:
    if not entries:
        return []
    latest: dict[tuple[str, Any], _FeedRow] = {}
    for entry in entries:  # only the latest state of a record is sent
        latest.pop((entry.entity, entry.entity_id), None)
        latest[(entry.entity, entry.entity_id)] = entry
    by_entity: dict[str, list[Any]] = {}
    for entity, entity_id in latest:
        by_entity.setdefault(entity, []).append(entity_id)
    records: dict[tuple[str, Any], Held] = {}
    for entity, ids in by_entity.items():
        for held in records_held(entity, ids):
            records[(entity, held.record.pk)] = held
    out: list[Change] = []
    for key, entry in latest.items():
        found = records.get(key)
        if found is None:
            continue
        obj = found.record
        # Decided by where the record is now, not by the entry: an old entry still names the
        # technician the work order was assigned to then.
        revoked = not scope.holds(obj.organization_id, found.holder_assignee_id)
        state = "revoked" if revoked else ("deleted" if obj.deleted else "live")
        fields = {} if revoked else ENTITIES[key[0]].values(obj)
        out.append(Change(key[0], key[1], obj.version, state, fields, entry.op_id))
    return out


# client_time is not part of an outcome; not reading it keeps a row stored before times
# were checked readable.
_OUTCOMES_SQL = (
    "SELECT op_id, device_id, organization_id, user_id, seq, entity, entity_id, action, "
    "base_version, fields, content_hash, received_at, status, rejected_at_push, code, detail, "
    "version, overridden_fields, conflict_ids, finished_at "
    "FROM operations_operation WHERE op_id = ANY(%s::uuid[])"
)


def _outcomes(entries: list[_FeedRow]) -> list[Operation]:
    ids = list(dict.fromkeys(e.op_id for e in entries))
    if not ids:
        return []
    ops = {op.op_id: op for op in models_prepared(Operation, _OUTCOMES_SQL, [ids])}
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
