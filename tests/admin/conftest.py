"""Fixtures for the dispatcher workspace: logged-in browsers of the admin and work orders
made the way the field makes them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from playwright.sync_api import Browser, sync_playwright

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


# --- headless Chromium (Debian's; Playwright never downloads a browser here) ---------------
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

NO_CHROMIUM = "needs Debian's chromium at /usr/bin/chromium"
# A developer's machine may lack the browser and skip this test; CI must run it (.ci/run
# installs chromium), so there a missing browser fails it instead.
IN_CI = os.environ.get("CI", "").lower() in {"true", "1"}


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{NO_CHROMIUM}: CI is set, so this test may not be skipped", pytrace=False)
    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls
    # are still plain synchronous code, so Django's async-safety guard must not trip.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("ADMIN_SCREENSHOTS_DIR") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory
