"""Who may see and change which records: the one place the rule is written.

A dispatcher sees every record of their organisation. A technician sees the work orders
assigned to them and the children of those (checklist items, comments, attachments), and
nothing of another organisation, ever. Push screening, the apply, pull, op outcomes,
conflicts, attachments and tus all ask a ``Scope``; none writes the rule again.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet

from accounts.models import User
from workorders.models import WorkOrder


@dataclass(frozen=True)
class Scope:
    organization_id: int
    # None: the whole organisation (a dispatcher); else the technician whose work is in scope.
    technician_id: int | None

    @classmethod
    def of(cls, user: User) -> Scope:
        return cls(user.org_id, None if user.is_dispatcher else user.pk)

    @property
    def whole_organization(self) -> bool:
        return self.technician_id is None

    def assigned(self, assigned_to_id: int | None) -> bool:
        """Whether a work order of this organisation with this assignee is in scope."""
        return self.technician_id is None or assigned_to_id == self.technician_id

    def holds(self, organization_id: int, assigned_to_id: int | None) -> bool:
        """Whether a work order (and so each of its children) is in scope, given its
        organisation and assignee."""
        return organization_id == self.organization_id and self.assigned(assigned_to_id)

    def work_orders(self) -> QuerySet[WorkOrder]:
        """The work orders in scope, deleted ones included (their children stay visible)."""
        rows = WorkOrder.objects.filter(organization_id=self.organization_id)
        if self.technician_id is None:
            return rows
        return rows.filter(assigned_to_id=self.technician_id)
