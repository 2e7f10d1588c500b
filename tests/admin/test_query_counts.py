"""List pages stay under 20 queries on a database with 100k+ events, ops and 20k work orders.

The rows are made with INSERT … SELECT generate_series (seconds, not the minutes going
through the API would take); their content does not matter, only how many there are."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client

from accounts.services import admin_device_for
from tests.fixtures import Phone

pytestmark = pytest.mark.django_db(transaction=True)

WORK_ORDERS = 20_000
EVENTS_PER_WORK_ORDER = 5  # 100,000 events
LIST_PAGES = [
    "/admin/workorders/workorder/",
    "/admin/workorders/workorder/?q=Job+1&status__exact=scheduled&open_conflicts=yes",
    "/admin/workorders/workorder/?technician=none&uploading=no&o=6",
    "/admin/conflicts/conflict/",
    "/admin/conflicts/conflict/?status=all",
    "/admin/accounts/device/",
    "/admin/operations/operation/",
    "/admin/operations/operation/?status__exact=rejected",
    "/admin/operations/event/",
    "/admin/operations/event/?kind__exact=update",
]


def _seed(dispatcher: Phone, tech: Phone) -> None:
    tech.pull()  # registers the technician's device
    device_id = str(tech.device_id)
    admin_device = admin_device_for(dispatcher.user)
    params: dict[str, Any] = {
        "org": dispatcher.user.organization_id,
        "tech": tech.user.pk,
        "device": device_id,
        "admin_device": str(admin_device.pk),
        "n": WORK_ORDERS,
        "per": EVENTS_PER_WORK_ORDER,
    }
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO workorders_workorder (id, organization_id, version, deleted, field_meta,
                created_at, updated_at, title, description, address, customer_name,
                customer_phone, scheduled_start, priority, assigned_to_id, status,
                technician_notes)
            SELECT gen_random_uuid(), %(org)s, %(per)s, false, '{}', now(), now(),
                'Job ' || g, '', g || ' Main St', 'Customer ' || g, '',
                now() + g * interval '1 minute', 'normal',
                CASE WHEN g %% 2 = 0 THEN %(tech)s END,
                CASE WHEN g %% 3 = 0 THEN 'scheduled' ELSE 'new' END, ''
            FROM generate_series(1, %(n)s) g
            """,
            params,
        )
        cursor.execute(
            """
            INSERT INTO operations_event (organization_id, entity, entity_id, version, bumped,
                kind, op_id, device_id, seq, actor_id, changes, overridden_fields,
                conflict_ids, received_at, created_at)
            SELECT %(org)s, 'work_order', w.id, v, true,
                CASE WHEN v = 1 THEN 'create' ELSE 'update' END, gen_random_uuid(),
                %(device)s::uuid, NULL, %(tech)s, '{"technician_notes": ["", "x"]}', '[]', '[]',
                now(), now()
            FROM workorders_workorder w CROSS JOIN generate_series(1, %(per)s) v
            """,
            params,
        )
        cursor.execute(
            """
            INSERT INTO operations_operation (op_id, device_id, organization_id, user_id, seq,
                entity, entity_id, action, base_version, fields, content_hash, received_at,
                status, rejected_at_push, code, detail, version, overridden_fields,
                conflict_ids, finished_at)
            SELECT gen_random_uuid(), %(device)s::uuid, %(org)s, %(tech)s, 1000 + g,
                'work_order', gen_random_uuid(), 'update', 1, '{"technician_notes": "x"}', '',
                now(), CASE WHEN g %% 50 = 0 THEN 'rejected' ELSE 'applied' END, false,
                CASE WHEN g %% 50 = 0 THEN 'forbidden' ELSE '' END, '', 2, '[]', '[]', now()
            FROM generate_series(1, %(n)s * %(per)s) g
            """,
            params,
        )
        cursor.execute(
            """
            INSERT INTO conflicts_conflict (id, organization_id, entity, entity_id,
                work_order_id, field, base_value, server_value, client_value, op_id,
                device_id, author_id, status, resolution, created_at)
            SELECT gen_random_uuid(), %(org)s, 'work_order', w.id, w.id, 'status',
                '"new"', '"on_hold"', '"completed"', gen_random_uuid(), %(device)s::uuid,
                %(tech)s, 'open', '', now()
            FROM workorders_workorder w WHERE w.status = 'scheduled'
            """,
            params,
        )
        for table in ("workorders_workorder", "operations_event", "operations_operation"):
            cursor.execute(f"ANALYZE {table}")


def test_every_list_page_runs_under_20_queries_on_a_big_database(
    desk: Client, dispatcher: Phone, tech: Phone, django_assert_max_num_queries: Any
) -> None:
    _seed(dispatcher, tech)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM operations_event")
        assert cursor.fetchone()[0] >= 100_000
    desk.get("/admin/")  # the session is warm, as for a dispatcher at work
    for url in LIST_PAGES:
        with django_assert_max_num_queries(19):
            response = desk.get(url)
        assert response.status_code == 200, url
        assert response.context["cl"].result_count > 0 or "q=" in url, url


def test_big_lists_are_counted_from_estimates_not_full_scans(
    desk: Client, dispatcher: Phone, tech: Phone
) -> None:
    _seed(dispatcher, tech)
    response = desk.get("/admin/operations/event/")
    count = response.context["cl"].result_count
    # An estimate: in the right range, but not from a COUNT(*) over every row.
    assert 50_000 <= count <= 200_000
    assert response.context["cl"].full_result_count is None
