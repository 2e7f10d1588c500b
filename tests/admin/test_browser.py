"""End to end, in headless Chromium: a dispatcher settles a conflict the field created and
the technician's phone pulls the outcome.

Uses Debian's chromium (``apt-get install chromium``); Playwright never downloads a browser
here. Set ADMIN_SCREENSHOTS_DIR=docs/screenshots to refresh the README's screenshots.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from accounts.models import Device
from conflicts.models import Conflict
from tests.admin.conftest import CHROMIUM, IN_CI, NO_CHROMIUM
from tests.fixtures import Phone, settled

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists() and not IN_CI, reason=NO_CHROMIUM),
]


def _field_work(dispatcher: Phone, tech: Phone) -> str:
    """Through the API: a job, a checklist, a comment, and a status both sides changed."""
    wo = str(uuid.uuid4())
    dispatcher.push(
        dispatcher.op("work_order", wo, "create", 0, title="Replace boiler valve",
                      customer_name="Ada Lovelace", address="12 Analytical Row",
                      status="scheduled", priority="high", assigned_to=tech.user.username,
                      scheduled_start="2026-11-23T09:00:00Z"),
        dispatcher.op("checklist_item", str(uuid.uuid4()), "create", 0, work_order_id=wo,
                      label="Isolate the water supply"),
        dispatcher.op("work_order", str(uuid.uuid4()), "create", 0, title="Annual inspection",
                      customer_name="Charles Babbage", address="1 Difference Lane",
                      scheduled_start="2026-11-24T13:30:00Z"),
    )  # fmt: skip
    settled()
    tech.pull()
    tech.push(
        tech.op("comment", str(uuid.uuid4()), "create", 0, work_order_id=wo,
                body="Customer asks to ring twice."),
        tech.op("work_order", wo, "update", 1, technician_notes="Valve seized; part ordered."),
    )  # fmt: skip
    settled()
    dispatcher.push(dispatcher.op("work_order", wo, "update", 2, status="on_hold"))
    settled()
    tech.push(tech.op("work_order", wo, "update", 2, status="completed"))
    settled()
    return wo


def _log_in(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill("pw-12345678")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Dispatcher workspace")).to_be_visible()


def test_a_dispatcher_resolves_a_conflict_in_the_browser_and_the_phone_pulls_it(
    live_server: Any,
    worker: Any,
    browser: Browser,
    shots: Path,
    dispatcher: Phone,
    tech: Phone,
) -> None:
    wo = _field_work(dispatcher, tech)
    [conflict] = Conflict.objects.filter(entity_id=wo, status="open")
    tech.pull()
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    _log_in(page, live_server.url, dispatcher.user.username)

    page.goto(f"{live_server.url}/admin/workorders/workorder/")
    expect(page.get_by_role("link", name="1 open")).to_be_visible()
    page.screenshot(path=shots / "work-orders.png", full_page=True)

    page.get_by_role("link", name="Replace boiler valve").click()
    expect(page.get_by_role("heading", name="Timeline")).to_be_visible()
    expect(page.get_by_role("heading", name="Open conflicts")).to_be_visible()
    page.screenshot(path=shots / "work-order-timeline.png", full_page=True)

    page.get_by_role("link", name="Resolve the status conflict").click()
    expect(page.get_by_test_id("client-value")).to_have_text("completed")
    expect(page.get_by_test_id("server-value")).to_have_text("on_hold")
    page.screenshot(path=shots / "conflict.png", full_page=True)
    page.get_by_role("button", name="Accept technician's (completed)").click()

    expect(page.get_by_text("Conflict on status resolved (client).")).to_be_visible()
    expect(page.get_by_label("Status")).to_have_value("completed")
    conflict.refresh_from_db()
    assert (conflict.status, conflict.resolved_by) == ("resolved", dispatcher.user)
    [change] = [c for c in tech.pull()["changes"] if c["entity_id"] == wo]
    assert change["fields"]["status"] == "completed"

    device = Device.objects.get(pk=tech.device_id)
    page.goto(f"{live_server.url}/admin/accounts/device/")
    page.screenshot(path=shots / "devices.png", full_page=True)
    page.goto(f"{live_server.url}/admin/accounts/device/{device.pk}/change/")
    expect(page.get_by_role("heading", name="Sync health")).to_be_visible()
    page.screenshot(path=shots / "device-health.png", full_page=True)
