"""The sync engine's per-device row (``DeviceSyncState``): lock it, read it, note on it.

The row is made on first need, so no other app has to know it exists: a device registered
by ``accounts`` gets one the first time the engine writes about it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from django.db.models.functions import Now

from accounts.models import Device
from operations.models import DeviceSyncState, Operation, OpStatus

if TYPE_CHECKING:
    from datetime import datetime
    from typing import TypeAlias, TypedDict

    from django_stubs_ext import WithAnnotations

    class _LockedAt(TypedDict):
        locked_at: datetime

    LockedState: TypeAlias = WithAnnotations[DeviceSyncState, _LockedAt]


def sync_state_lock(device_id: uuid.UUID) -> LockedState | None:
    """Lock the device's row (with its device and user loaded, not locked) for the rest of
    the transaction; None when there is no such device. ``locked_at`` on it is when, by the
    database's clock: the one clock every worker shares, whatever host it runs on."""
    rows = (
        DeviceSyncState.objects.select_for_update(of=("self",))
        .select_related("device__user")
        .annotate(locked_at=Now())
    )
    state = rows.filter(pk=device_id).first()
    if state is None:
        _ensure([device_id])
        state = rows.filter(pk=device_id).first()
    return state


def compacted_seq(device_id: uuid.UUID) -> int:
    """Ops of the device up to this seq were compacted away (0: none)."""
    rows = DeviceSyncState.objects.filter(pk=device_id).values_list("compacted_seq", flat=True)
    return rows.first() or 0


def raise_compacted_seq(device_id: uuid.UUID, seq: int) -> None:
    _ensure([device_id])
    DeviceSyncState.objects.filter(pk=device_id, compacted_seq__lt=seq).update(compacted_seq=seq)


def note_last_error(device_id: uuid.UUID, ops: Sequence[Operation]) -> None:
    """Keep the device's latest refusal, for support (sync health in the workspace)."""
    refused = [op for op in ops if op.status == OpStatus.REJECTED]
    if not refused:
        return
    last = refused[-1]
    error = f"{last.code}: {last.detail} (op {last.op_id}, seq {last.seq})"[:1000]
    DeviceSyncState.objects.bulk_create(
        [DeviceSyncState(device_id=device_id, last_error=error)],
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
