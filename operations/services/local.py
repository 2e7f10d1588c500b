"""Ops made on the server side (the dispatchers' workspace, demo data): exactly a phone's
path, so an edit in the workspace is an event with the same rules and the same trail."""

from __future__ import annotations

import uuid

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from accounts.models import User
from accounts.services import admin_device_for
from operations.exceptions import SyncError
from operations.models import Operation
from operations.services.apply import device_apply_pending
from operations.services.push import op_batch_accept
from operations.services.state import sync_state_lock
from workorders.fields import Json


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
        sync_state_lock(device.pk)
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
        raise SyncError(result.code, result.detail)
    device_apply_pending(device.pk)
    return Operation.objects.get(pk=op_id)
