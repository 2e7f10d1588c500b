"""What app developers do: generate a typed client from /api/schema/ (openapi-python-client)
and use it against the running server: sign in, push typed ops, pull typed records, resolve
a conflict, and read typed errors."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from rest_framework.test import APIClient

from accounts.models import User
from tests.fixtures import apply_now

pytestmark = pytest.mark.django_db(transaction=True)

PACKAGE = "fieldsync_api_client"
PASSWORD = "pw-12345678"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Callable[[str], ModuleType]]:
    """The generated client: ``api("models")`` imports ``fieldsync_api_client.models``."""
    schema = tmp_path / "schema.json"
    schema.write_bytes(APIClient().get("/api/schema/", {"format": "json"}).content)
    generator = Path(sys.executable).with_name("openapi-python-client")
    out = tmp_path / "client"
    generated = subprocess.run(
        [str(generator), "generate", "--path", str(schema), "--meta", "none",
         "--output-path", str(out / PACKAGE)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stdout + generated.stderr
    sys.path.insert(0, str(out))
    try:
        yield lambda name: importlib.import_module(f"{PACKAGE}.{name}")
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]
        shutil.rmtree(out, ignore_errors=True)


def _signed_in(api: Callable[[str], ModuleType], base_url: str, user: User) -> Any:
    token = importlib.import_module(f"{PACKAGE}.api.v1.v1_auth_token_create").sync(
        client=api("client").Client(base_url=base_url),
        body=api("models").CredentialsRequest(username=user.username, password=PASSWORD),
    )
    assert isinstance(token, api("models").Token)
    return api("client").AuthenticatedClient(base_url=base_url, token=token.token, prefix="Token")


def test_a_generated_client_syncs_resolves_and_reads_typed_errors(
    api: Callable[[str], ModuleType], live_server: Any, make_user: Callable[..., User]
) -> None:
    m = api("models")
    v1 = {
        name: importlib.import_module(f"{PACKAGE}.api.v1.v1_{name}")
        for name in ("auth_token_create", "sync_push_create", "sync_pull_retrieve",
                     "conflicts_retrieve", "conflicts_resolve_create")
    }  # fmt: skip
    dispatcher, tech = make_user("dispatcher"), make_user("technician")
    office = _signed_in(api, live_server.url, dispatcher)
    phone = _signed_in(api, live_server.url, tech)
    office_device, phone_device = uuid.uuid4(), uuid.uuid4()

    # A typed error: wrong credentials
    wrong = v1["auth_token_create"].sync_detailed(
        client=api("client").Client(base_url=live_server.url),
        body=m.CredentialsRequest(username=tech.username, password="nope"),
    )
    assert wrong.status_code == 401
    assert isinstance(wrong.parsed, m.Error) and wrong.parsed.code == "invalid_credentials"

    def push(client: Any, device: uuid.UUID, op: Any) -> Any:
        body = m.V1SyncPushCreateBody(device_id=device, ops=[op])
        answer = v1["sync_push_create"].sync(client=client, body=body)
        assert isinstance(answer, m.PushResponse), answer
        return answer.results[0]

    # The office creates a work order for the technician, with typed ops
    wo = uuid.uuid4()
    created = push(office, office_device, m.WorkOrderCreate(
        op_id=uuid.uuid4(), seq=1, entity=m.WorkOrderCreateEntity.WORK_ORDER, entity_id=wo,
        action=m.WorkOrderCreateAction.CREATE, base_version=0,
        fields=m.WorkOrderCreateFields(
            title="Boiler service", status=m.WorkOrderCreateFieldsStatus.SCHEDULED,
            assigned_to=tech.username,
        ),
    ))  # fmt: skip
    assert created.status == m.OpResultStatusEnum.ACCEPTED
    apply_now()

    # The phone pulls it as a typed record
    page = v1["sync_pull_retrieve"].sync(client=phone, device_id=phone_device)
    assert isinstance(page, m.PullResponse)
    [change] = page.changes
    assert isinstance(change.fields, m.WorkOrder)
    assert (change.fields.title, change.version) == ("Boiler service", 1)

    # Both change the status: the office first, the phone's concurrent edit conflicts
    def status_update(device_seq: int, status: Any) -> Any:
        return m.WorkOrderUpdate(
            op_id=uuid.uuid4(), seq=device_seq, entity=m.WorkOrderUpdateEntity.WORK_ORDER,
            entity_id=wo, action=m.WorkOrderUpdateAction.UPDATE, base_version=1,
            fields=m.WorkOrderUpdateFields(status=status),
        )  # fmt: skip

    push(office, office_device, status_update(2, m.WorkOrderUpdateFieldsStatus.ON_HOLD))
    apply_now()
    push(phone, phone_device, status_update(1, m.WorkOrderUpdateFieldsStatus.COMPLETED))
    apply_now()

    # The office resolves it for the technician's value
    listed = v1["conflicts_retrieve"].sync(client=office, status=m.V1ConflictsRetrieveStatus.OPEN)
    assert isinstance(listed, m.ConflictList)
    [conflict] = listed.results
    assert (conflict.field, conflict.client_value) == ("status", "completed")
    resolved = v1["conflicts_resolve_create"].sync(
        client=office,
        conflict_id=str(conflict.id),
        body=m.ResolveRequest(choice=m.ChoiceEnum.CLIENT),
    )
    assert isinstance(resolved, m.ConflictResolved) and resolved.version == 3

    # A second resolution is a typed 409
    again = v1["conflicts_resolve_create"].sync_detailed(
        client=office,
        conflict_id=str(conflict.id),
        body=m.ResolveRequest(choice=m.ChoiceEnum.SERVER),
    )
    assert again.status_code == 409
    assert isinstance(again.parsed, m.Error) and again.parsed.code == "already_resolved"

    # And the phone pulls the resolution
    page = v1["sync_pull_retrieve"].sync(client=phone, device_id=phone_device, cursor=page.cursor)
    assert isinstance(page, m.PullResponse)
    assert [c.fields.status for c in page.changes] == [m.WorkOrderStatus.COMPLETED]
