from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import User
from conflicts.models import Conflict
from workorders.scope import Scope


def conflicts_visible_to(user: User) -> QuerySet[Conflict]:
    scope = Scope.of(user)
    qs = Conflict.objects.filter(organization_id=scope.organization_id)
    if not scope.whole_organization:
        qs = qs.filter(work_order_id__in=scope.work_orders().values("pk"))
    return qs
