"""Fixtures for the dispatcher workspace: logged-in browsers of the admin and work orders
made the way the field makes them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from accounts.models import User
from operations.services import op_submit_local
from tests.fixtures import Phone
from workorders.models import WorkOrder


@pytest.fixture
def admin_client_for() -> Callable[[User], Client]:
    def login(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return login


@pytest.fixture
def desk(dispatcher: Phone, admin_client_for: Callable[[User], Client]) -> Client:
    """The admin, as the ``dispatcher`` fixture's user sees it."""
    return admin_client_for(dispatcher.user)


@pytest.fixture
def make_work_order(dispatcher: Phone) -> Callable[..., WorkOrder]:
    def make(by: User | None = None, **fields: Any) -> WorkOrder:
        fields.setdefault("title", "Boiler service")
        entity_id = uuid.uuid4()
        op = op_submit_local(by or dispatcher.user, "work_order", entity_id, "create", 0, fields)
        assert op.status == "applied", (op.code, op.detail)
        work_order: WorkOrder = WorkOrder.objects.get(pk=entity_id)
        return work_order

    return make
