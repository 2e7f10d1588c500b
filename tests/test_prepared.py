"""The hot paths' prepared statements (common.db): the same rows, models and errors as
Django's own cursors, counted in its query log, and planned once per connection."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from django.db import IntegrityError, connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from common.db import fetch_prepared, models_prepared
from operations.models import Operation
from tests.fixtures import Phone

pytestmark = pytest.mark.django_db(transaction=True)

_OPS_SQL = (
    "SELECT op_id, seq, fields, status, 'extra' AS _note FROM operations_operation"
    " WHERE device_id = %(device)s ORDER BY seq"
)


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "django-cursor"])
def test_models_come_back_as_the_orm_reads_them(dispatcher: Phone, prepared: bool) -> None:
    wo = str(uuid.uuid4())
    dispatcher.push(dispatcher.op("work_order", wo, "create", 0, title="Boiler"))
    with (
        override_settings(DB_PREPARED_STATEMENTS=prepared),
        CaptureQueriesContext(connection) as queries,
    ):
        [op] = models_prepared(Operation, _OPS_SQL, {"device": uuid.UUID(dispatcher.device_id)})
    # The JSON field parsed, the other columns as attributes, unread fields deferred
    assert op.fields == {"title": "Boiler"} and op.seq == 1 and op.status == "pending"
    assert op._note == "extra"  # type: ignore[attr-defined]
    assert "entity" in op.get_deferred_fields()
    # And it is in Django's query log, like any query
    assert len(queries.captured_queries) == 1
    assert op.entity == "work_order"  # a deferred field loads on first use, as with raw()


def test_a_statement_is_prepared_once_per_connection() -> None:
    sql = "SELECT count(*) FROM operations_operation WHERE seq > %s"
    for _ in range(3):
        fetch_prepared(sql, [0])
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        statements = [row[0] for row in cursor.fetchall()]
    assert statements.count("SELECT count(*) FROM operations_operation WHERE seq > $1") == 1, (
        statements
    )


def test_errors_are_djangos_and_leave_the_transaction_usable(
    make_phone: Callable[..., Phone],
) -> None:
    phone = make_phone()
    insert = "INSERT INTO accounts_user SELECT * FROM accounts_user WHERE id = %s"
    with transaction.atomic():
        with pytest.raises(IntegrityError), transaction.atomic():
            fetch_prepared(insert, [phone.user.pk])
        rows, names, count = fetch_prepared("SELECT 1 AS one", [])
    assert (rows, names, count) == ([(1,)], ["one"], 1)
