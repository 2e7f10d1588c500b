"""A move on the dispatch board: reassign and/or reschedule one work order, as an op of the
dispatcher's admin device (the same path, event, merge rules and feed as any edit)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction

from accounts.models import User
from common.exceptions import DomainError
from operations.history import record_values_at
from operations.models import Operation
from operations.services import op_submit_local
from workorders.fields import EARLIEST, LATEST, Json, display_value, format_datetime
from workorders.models import WorkOrder
from workorders.registry import WORK_ORDER
from workspace.board.selectors import DEFAULT_LENGTH


class MoveRefused(Exception):
    """A move the board must not make; ``detail`` says why, for the dispatcher."""

    def __init__(self, detail: str, status: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


@dataclass(frozen=True)
class Move:
    work_order_id: uuid.UUID
    version: int  # the version the board showed
    assigned_to: str | None  # a username, "" for unassigned, None to leave as it is
    start: datetime | None  # the new start, or None to leave the time as it is


def board_move(dispatcher: User, move: Move) -> Operation:
    """Make the move, unless the work order changed since the board showed it: a stale move
    is refused with what changed, never applied over someone else's change. The work order
    stays locked from the check to the applied op (one transaction), so no change can land
    in between."""
    with transaction.atomic():
        work_order = (
            WorkOrder.objects.select_for_update(of=("self",))
            .filter(pk=move.work_order_id, organization_id=dispatcher.org_id)
            .select_related("assigned_to")
            .first()
        )
        if work_order is None or work_order.deleted:
            raise MoveRefused("This work order is no longer on the board.", 404)
        if work_order.version != move.version:
            raise MoveRefused(_what_changed(work_order, move.version), 409)
        fields = _fields(work_order, move)
        if not fields:
            raise MoveRefused("Nothing to move: the work order is already there.", 400)
        try:
            op = op_submit_local(
                dispatcher, WORK_ORDER.name, work_order.pk, "update", move.version, fields
            )
        except DomainError as exc:  # refused at push: a value the op may not carry
            raise MoveRefused(f"{exc.code}: {exc.detail}", 400) from exc
        if op.status == "rejected":
            raise MoveRefused(f"{op.code}: {op.detail}", 400)
    return op


def _fields(work_order: WorkOrder, move: Move) -> dict[str, Json]:
    fields: dict[str, Json] = {}
    current = work_order.assigned_to.username if work_order.assigned_to else ""
    if move.assigned_to is not None and move.assigned_to != current:
        fields["assigned_to"] = move.assigned_to or None
    if move.start is not None and move.start != work_order.scheduled_start:
        length = DEFAULT_LENGTH
        if work_order.scheduled_start and work_order.scheduled_end:
            length = max(work_order.scheduled_end - work_order.scheduled_start, DEFAULT_LENGTH / 4)
        if not EARLIEST <= move.start <= LATEST - length:
            raise MoveRefused("That time is outside the years the board can plan.", 400)
        fields["scheduled_start"] = format_datetime(move.start)
        fields["scheduled_end"] = format_datetime(move.start + length)
    return fields


def _what_changed(work_order: WorkOrder, version: int) -> str:
    then = record_values_at(WORK_ORDER, work_order, version)
    now = WORK_ORDER.values(work_order)
    changes = [
        f"{name.replace('_', ' ')}: {display_value(then[name])} → {display_value(now[name])}"
        for name in WORK_ORDER.fields
        if then[name] != now[name]
    ]
    return (
        f"Not moved: “{work_order.title}” changed since the board loaded "
        f"(version {version} → {work_order.version}): {'; '.join(changes) or 'no field shown'}."
    )
