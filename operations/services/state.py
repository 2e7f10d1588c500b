"""The sync engine's per-device row (``DeviceSyncState``): lock it, read it, note on it.

The row is made on first need, so no other app has to know it exists: a device registered
by ``accounts`` gets one the first time the engine writes about it.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from django.conf import settings
from django.db import connection

from accounts.models import Device, User
from common.db import models_prepared
from operations.models import DeviceSyncState, OpStatus


def sync_state_lock(device_id: uuid.UUID) -> DeviceSyncState | None:
    """Lock the device's row (with its device and user loaded, not locked) for the rest of
    the transaction; None when there is no such device. ``locked_at(state)`` is when, by the
    database's clock."""
    states = sync_states_lock([device_id], 1)
    return states[0] if states else None


# The devices with work for the apply, claimed fairly, skipping rows another round holds.
# Devices with a pending op are found by a loose scan of the pending-ops index (one probe
# per device, however many ops each has waiting). Each organisation's devices are ranked by
# their oldest pending op, and turns interleave organisations: a tenant with a thousand
# busy devices gets one device a turn like everyone else. A device waiting for a missing
# seq is left alone until that seq arrives or its wait times out.
_CLAIM_SQL = """
    WITH RECURSIVE pending(device_id) AS (
        (SELECT device_id FROM operations_operation WHERE status = 'pending'
          ORDER BY device_id LIMIT 1)
        UNION ALL
        SELECT (SELECT o.device_id FROM operations_operation o
                 WHERE o.status = 'pending' AND o.device_id > p.device_id
                 ORDER BY o.device_id LIMIT 1)
        FROM pending p WHERE p.device_id IS NOT NULL
    ),
    ranked AS (
        SELECT p.device_id, first.received_at,
               row_number() OVER (PARTITION BY d.organization_id
                                  ORDER BY first.received_at) AS turn
        FROM pending p
        JOIN accounts_device d ON d.id = p.device_id
        CROSS JOIN LATERAL (
            SELECT o.received_at FROM operations_operation o
            WHERE o.device_id = p.device_id AND o.status = 'pending'
            ORDER BY o.seq LIMIT 1) AS first
    )
    SELECT {columns}, (SELECT count(*) FROM ranked) AS _waiting
    FROM operations_devicesyncstate s
    JOIN ranked r ON r.device_id = s.device_id
    JOIN accounts_device d ON d.id = s.device_id
    JOIN accounts_user u ON u.id = d.user_id
    WHERE s.gap_since IS NULL
       OR s.gap_since <= now() - make_interval(secs => %(gap_timeout)s)
       OR EXISTS (SELECT 1 FROM operations_operation o
                  WHERE o.device_id = s.device_id AND o.seq <= s.done_seq + 1
                    AND (o.status = 'pending' OR o.seq = s.done_seq + 1))
    ORDER BY r.turn, r.received_at
    -- Half of the devices with work (at most the limit): another worker takes the rest.
    LIMIT greatest(1, least(%(limit)s, ((SELECT count(*) FROM ranked) + 1) / 2))
    FOR UPDATE OF s SKIP LOCKED
"""


_LOCK_SQL = """
    SELECT {columns} FROM operations_devicesyncstate s
    JOIN accounts_device d ON d.id = s.device_id
    JOIN accounts_user u ON u.id = d.user_id
    WHERE s.device_id = ANY(%(devices)s::uuid[])
    ORDER BY s.device_id
    FOR UPDATE OF s {skip}
"""


def sync_states_lock(
    devices: list[uuid.UUID] | None, limit: int, wait: bool = True
) -> list[DeviceSyncState]:
    """Lock sync state rows for the rest of the transaction, with device and user loaded:
    these devices' (waiting for whoever holds them, or, without ``wait``, skipping those
    held), or, given None, up to ``limit`` devices with work that nobody holds
    (``_CLAIM_SQL``), in the order they were claimed."""
    if devices is None:
        params = {"gap_timeout": settings.SYNC_GAP_TIMEOUT_SECONDS, "limit": limit}
        return _load(_statements()[0], params)
    lock = _statements()[1 if wait else 2]
    states = _load(lock, {"devices": devices})
    if len(states) < len(set(devices)):
        _ensure(devices)
        states = _load(lock, {"devices": devices})
    return states


@functools.lru_cache(maxsize=1)
def _statements() -> tuple[str, str, str]:
    """The claim and the lock (waiting, or skipping rows held), each selecting the state
    row with its device and user (built once from the models: the apply composes no SQL
    per round)."""
    columns = ", ".join(
        [f"s.{f.column} AS {f.attname}" for f in DeviceSyncState._meta.concrete_fields]
        + [f"d.{f.column} AS _d_{f.attname}" for f in _DEVICE_FIELDS]
        + [f"u.{f.column} AS _u_{f.attname}" for f in _USER_FIELDS]
        # When, by the database's clock: the one clock every worker shares, whatever host
        # it runs on (gaps are timed by it, ``locked_at``).
        + ["now() AS _locked_at"]
    )
    return (
        _CLAIM_SQL.format(columns=columns),
        _LOCK_SQL.format(columns=columns, skip=""),
        _LOCK_SQL.format(columns=columns, skip="SKIP LOCKED"),
    )


_DEVICE_FIELDS = Device._meta.concrete_fields
_USER_FIELDS = User._meta.concrete_fields


def devices_waiting(states: list[DeviceSyncState]) -> int:
    """How many devices had work when these were claimed (claimed ones included)."""
    return int(getattr(states[0], "_waiting", 0) or 0) if states else 0


def locked_at(state: DeviceSyncState) -> datetime:
    """When the round locked the state row, by the database's clock."""
    value = getattr(state, "_locked_at", None)
    if not isinstance(value, datetime):
        raise TypeError("not a state row locked by sync_states_lock")
    return value


def _load(sql: str, params: dict[str, Any]) -> list[DeviceSyncState]:
    states = models_prepared(DeviceSyncState, sql, params)
    for state in states:
        device = Device.from_db(
            connection.alias,
            [f.attname for f in _DEVICE_FIELDS],
            [getattr(state, f"_d_{f.attname}") for f in _DEVICE_FIELDS],
        )
        device.user = User.from_db(
            connection.alias,
            [f.attname for f in _USER_FIELDS],
            [getattr(state, f"_u_{f.attname}") for f in _USER_FIELDS],
        )
        state.device = device
    return states


def compacted_seq(device_id: uuid.UUID) -> int:
    """Ops of the device up to this seq were compacted away (0: none)."""
    rows = DeviceSyncState.objects.filter(pk=device_id).values_list("compacted_seq", flat=True)
    return rows.first() or 0


class Finished(Protocol):
    """What the device's last error needs of a finished op."""

    @property
    def op_id(self) -> uuid.UUID: ...
    @property
    def device_id(self) -> uuid.UUID: ...
    @property
    def seq(self) -> int | None: ...
    @property
    def status(self) -> str: ...
    @property
    def code(self) -> str: ...
    @property
    def detail(self) -> str: ...


def note_last_error(device_id: uuid.UUID, ops: Sequence[Finished]) -> None:
    """Keep the device's latest refusal, for support (sync health in the workspace)."""
    note_last_errors([op for op in ops if op.device_id == device_id])


def note_last_errors(ops: Sequence[Finished]) -> None:
    """Keep each device's latest refusal among ``ops`` (in one statement)."""
    last: dict[uuid.UUID, Finished] = {}
    for op in ops:
        if op.status == OpStatus.REJECTED:
            last[op.device_id] = op
    if not last:
        return
    DeviceSyncState.objects.bulk_create(
        [
            DeviceSyncState(
                device_id=device_id,
                last_error=f"{op.code}: {op.detail} (op {op.op_id}, seq {op.seq})"[:1000],
            )
            for device_id, op in last.items()
        ],
        update_conflicts=True,
        unique_fields=["device"],
        update_fields=["last_error"],
    )


def _ensure(device_ids: list[uuid.UUID]) -> None:
    # Only devices that exist get a row: a missing device is the caller's "None", not a
    # foreign key error.
    known = Device.objects.filter(pk__in=device_ids).values_list("pk", flat=True)
    DeviceSyncState.objects.bulk_create(
        [DeviceSyncState(device_id=device_id) for device_id in known], ignore_conflicts=True
    )
