"""A paginator for the big tables (ops, events, work orders), whose exact ``COUNT(*)`` would
scan hundreds of thousands of rows on every list page."""

from __future__ import annotations

import json
from typing import Any

from django.core.paginator import Paginator
from django.db import connection
from django.db.models import QuerySet
from django.utils.functional import cached_property

# Up to this many rows a count is exact (and cheap: it stops reading at the limit).
EXACT_COUNT_LIMIT = 10_000


class EstimatedCountPaginator(Paginator):  # type: ignore[type-arg]
    """Exact counts for small results, Postgres' own estimates for large ones.

    An unfiltered table is estimated from ``pg_class.reltuples`` (kept by autovacuum). A
    filtered one is counted up to ``EXACT_COUNT_LIMIT`` rows; past it the planner's row
    estimate is used. The last page number may then be approximate, which a dispatcher
    paging through a hundred thousand ops never notices, while every page stays fast.
    """

    @cached_property
    def count(self) -> int:
        rows = self.object_list
        if not isinstance(rows, QuerySet):
            return super().count
        if not rows.query.where:
            estimate = _table_estimate(rows.model._meta.db_table)
            if estimate > EXACT_COUNT_LIMIT:
                return estimate
        # values("pk") drops the list's annotations: the count needs none of them.
        keys = rows.values("pk").order_by()
        capped = keys[: EXACT_COUNT_LIMIT + 1].count()
        if capped <= EXACT_COUNT_LIMIT:
            return capped
        return max(_planner_estimate(keys), capped)


def _table_estimate(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [table])
        row = cursor.fetchone()
    # -1 means the table was never analysed.
    return int(row[0]) if row and row[0] > 0 else -1


def _planner_estimate(rows: QuerySet[Any]) -> int:
    plan = json.loads(rows.explain(format="json"))
    return int(plan[0]["Plan"]["Plan Rows"])
