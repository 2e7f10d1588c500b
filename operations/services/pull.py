"""Pull: one page of the change feed for a device, and the device's last-pull stamp."""

from __future__ import annotations

import uuid

from django.utils import timezone

from accounts.models import User
from accounts.services import device_claim, device_touch
from operations.selectors import PullPage, changes_since


def sync_pull(
    user: User, device_id: uuid.UUID, cursor: str | None, limit: int, token: object = None
) -> PullPage:
    """What changed in the user's scope since ``cursor``, and this device's op outcomes."""
    device = device_claim(user, device_id, token)
    page = changes_since(user, device, cursor, limit)
    device_touch(device, "last_pull_at", timezone.now())
    return page
