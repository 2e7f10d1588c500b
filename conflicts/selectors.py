from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import User
from conflicts.models import Conflict
from workorders.fields import Json
from workorders.models import WorkOrder


def conflicts_visible_to(user: User) -> QuerySet[Conflict]:
    qs = Conflict.objects.filter(organization_id=user.org_id)
    if not user.is_dispatcher:
        mine = WorkOrder.objects.filter(assigned_to_id=user.pk).values("pk")
        qs = qs.filter(work_order_id__in=mine)
    return qs


def conflict_as_dict(conflict: Conflict) -> dict[str, Json]:
    return {
        "id": str(conflict.id),
        "entity": conflict.entity,
        "entity_id": str(conflict.entity_id),
        "field": conflict.field,
        "base_value": conflict.base_value,
        "server_value": conflict.server_value,
        "client_value": conflict.client_value,
        "op_id": str(conflict.op_id),
        "device_id": str(conflict.device_id),
        "status": conflict.status,
        "resolution": conflict.resolution or None,
        "resolved_by": conflict.resolved_by.username if conflict.resolved_by else None,
        "created_at": conflict.created_at.isoformat().replace("+00:00", "Z"),
        "resolved_at": (
            conflict.resolved_at.isoformat().replace("+00:00", "Z")
            if conflict.resolved_at
            else None
        ),
    }
