"""The dispatch board in headless Chromium: drag a job from one technician to another (the
new technician's phone pulls it, the old one's is told it is revoked), watch a technician's
status change arrive without a reload, and see a stale move refused with what changed.
ADMIN_SCREENSHOTS_DIR=docs/screenshots refreshes the README's pictures of the board."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from tests.admin.conftest import CHROMIUM, IN_CI, NO_CHROMIUM
from tests.admin.test_browser import _log_in
from tests.fixtures import Phone, apply_now
from tests.helpers import wait_until
from workorders.models import WorkOrder

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists() and not IN_CI, reason=NO_CHROMIUM),
]
DAY = "2026-11-23"


def _job(dispatcher: Phone, title: str, tech: Phone | None, hour: int) -> str:
    wo = str(uuid.uuid4())
    fields: dict[str, Any] = {
        "title": title, "customer_name": "Nora Quinn", "status": "scheduled",
        "scheduled_start": f"{DAY}T{hour:02d}:00:00Z",
        "scheduled_end": f"{DAY}T{hour + 1:02d}:00:00Z",
    }  # fmt: skip
    if tech is not None:
        fields["assigned_to"] = tech.user.username
    dispatcher.push(dispatcher.op("work_order", wo, "create", 0, **fields))
    return wo


def test_a_dispatcher_drags_work_between_technicians_and_the_board_stays_live(
    live_server: Any,
    browser: Browser,
    shots: Path,
    dispatcher: Phone,
    make_phone: Callable[..., Phone],
) -> None:
    alice, bob = make_phone(), make_phone()
    boiler = _job(dispatcher, "Boiler service", alice, 9)
    _job(dispatcher, "Radiator valve", bob, 11)
    _job(dispatcher, "Annual inspection", None, 14)
    apply_now()
    alice.pull()
    bob.pull()

    page = browser.new_page(viewport={"width": 1500, "height": 800})
    _log_in(page, live_server.url, dispatcher.user.username)
    page.goto(f"{live_server.url}/admin/board/?day={DAY}")
    block = page.locator(f'.fs-block[data-id="{boiler}"]')
    expect(block).to_be_visible()
    page.screenshot(path=str(shots / "board.png"), full_page=True)

    # Drag the job from alice's row to bob's
    block.drag_to(page.locator(f'.fs-row[data-username="{bob.user.username}"] .fs-drop'))
    expect(page.get_by_role("status")).to_contain_text("Moved Boiler service")
    wait_until(
        lambda: WorkOrder.objects.get(pk=boiler).assigned_to_id == bob.user.pk,
        message="the move never reached the work order",
    )
    assert [c["state"] for c in alice.pull()["changes"]] == ["revoked"]
    assert [c["entity_id"] for c in bob.pull()["changes"]] == [boiler]
    moved = page.locator(
        f'.fs-row[data-username="{bob.user.username}"] .fs-block[data-id="{boiler}"]'
    )
    expect(moved).to_be_visible()

    # bob's phone says he is on his way: the open board shows it without a reload
    bob.push(bob.op("work_order", boiler, "update", 2, status="en_route"))
    apply_now()
    expect(moved).to_have_class(re.compile(r"\bfs-status-en_route\b"), timeout=5000)

    # A move from a board that has not seen the latest change is refused, with what changed
    moved.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_be_visible()
    dispatcher.push(
        dispatcher.op("work_order", boiler, "update", 3, title="Boiler service (urgent)")
    )
    apply_now()
    page.get_by_label("Technician", exact=True).select_option(alice.user.username)
    page.get_by_role("button", name="Move", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("changed since the board loaded")
    expect(page.get_by_role("status")).to_contain_text("Boiler service (urgent)")
    assert WorkOrder.objects.get(pk=boiler).assigned_to_id == bob.user.pk
    page.screenshot(path=str(shots / "board-stale-move.png"), full_page=True)
    page.close()
