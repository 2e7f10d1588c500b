"""Submitting a dispatcher's change as an op of their admin device."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.http import HttpRequest

from common.exceptions import DomainError
from operations.models import Operation, OpStatus
from operations.services import op_submit_local
from workorders.fields import Json
from workorders.registry import EntitySpec
from workspace.site import dispatcher_of


class OpRefused(Exception):
    """An op the sync core rejected; the whole admin request is rolled back."""


def submit_op(
    request: HttpRequest,
    spec: EntitySpec,
    entity_id: uuid.UUID,
    action: str,
    base_version: int,
    fields: dict[str, Json],
) -> Operation:
    """Submit one op as the dispatcher's admin device and tell them how it ended."""
    user = dispatcher_of(request.user)
    if user is None:
        raise OpRefused("only a dispatcher of this organisation can change records")
    try:
        op = op_submit_local(user, spec.name, entity_id, action, base_version, fields)
    except DomainError as exc:
        raise OpRefused(f"{exc.code}: {exc.detail}") from exc
    if op.status == OpStatus.REJECTED:
        raise OpRefused(f"{op.code}: {op.detail}")
    label = spec.name.replace("_", " ")
    if op.status == OpStatus.CONFLICT:
        messages.warning(
            request,
            f"Part of your {label} edit conflicts with a change from the field: the current "
            f"value was kept and {len(op.conflict_ids)} conflict(s) opened for you to resolve.",
        )
    if op.overridden_fields:
        messages.warning(
            request, f"Kept the newer value of: {', '.join(op.overridden_fields)} ({label})."
        )
    return op
