"""The work order page, put together from its list half and its record half."""

from __future__ import annotations

from workspace.workorders.changelist import WorkOrderChangelist
from workspace.workorders.record import WorkOrderRecord


class WorkOrderAdmin(WorkOrderChangelist, WorkOrderRecord):
    offers_add = offers_change = offers_delete = True
