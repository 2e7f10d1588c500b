"""The structure's promises: one scope rule, one refusal → status map, one serializer per wire
shape (so the schema has nothing left to guess), and a sync-state move that loses nothing in
either direction."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from accounts.models import User
from common.errors import HTTP_STATUS
from common.exceptions import Refusal
from operations.models import DeviceSyncState
from tests.fixtures import Phone
from workorders.scope import Scope


def test_every_refusal_kind_has_one_http_status() -> None:
    assert set(HTTP_STATUS) == set(Refusal)


@pytest.mark.django_db
def test_the_schema_documents_every_response_without_guessing() -> None:
    # Given serializers that render and document each response, then
    # drf-spectacular has no field whose type it must guess and no unknown authenticator.
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=StringIO())


@pytest.mark.django_db
def test_a_dispatcher_sees_the_organisation_and_a_technician_only_their_work(
    make_user: Callable[..., User],
) -> None:
    dispatcher = make_user("dispatcher")
    tech = make_user("technician")
    stranger = make_user("dispatcher", org="other")

    everything, mine = Scope.of(dispatcher), Scope.of(tech)
    org = dispatcher.org_id

    assert everything.whole_organization and everything.holds(org, None)
    assert everything.holds(org, tech.pk)
    assert not everything.holds(stranger.org_id, None)
    assert mine.holds(org, tech.pk)
    assert not mine.holds(org, None)
    assert not mine.holds(org, dispatcher.pk)
    assert not mine.holds(stranger.org_id, tech.pk)


@pytest.mark.django_db(transaction=True)
def test_moving_the_apply_cursor_off_the_device_keeps_every_value_both_ways(
    dispatcher: Phone,
) -> None:
    # Given a device whose cursor stands somewhere, before the move
    dispatcher.push()
    device_id = uuid.UUID(dispatcher.device_id)
    before = [("accounts", "0002_api_token_device"), ("operations", "0001_initial")]
    latest = [("accounts", "0003_device_sync_state_moved"), ("operations", "0002_devicesyncstate")]
    since = timezone.now().replace(microsecond=0)
    values = {
        "done_seq": 41,
        "gap_since": since,
        "gap_seq": 42,
        "skipped_seqs": [[7, 9]],
        "compacted_seq": 12,
        "last_error": "not_found: work order … not found",
    }
    executor = MigrationExecutor(connection)
    try:
        executor.migrate(before)
        old_device = executor.loader.project_state(before).apps.get_model("accounts", "Device")
        old_device.objects.filter(pk=device_id).update(**values)

        # When migrating forward
        executor = MigrationExecutor(connection)
        executor.migrate(latest)

        # Then the sync engine's row holds the same values
        state = DeviceSyncState.objects.get(device_id=device_id)
        assert {name: getattr(state, name) for name in values} == values

        # And migrating back puts them on the device again
        executor = MigrationExecutor(connection)
        executor.migrate(before)
        old_device = executor.loader.project_state(before).apps.get_model("accounts", "Device")
        row = old_device.objects.values(*values).get(pk=device_id)
        assert row == values
    finally:
        # Back to every app's latest migration, for the tests after this one.
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
