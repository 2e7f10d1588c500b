"""Abuse: guessing passwords, runaway devices, strangers reading operators' pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import User
from tests.fixtures import Phone

pytestmark = pytest.mark.django_db(transaction=True)

OUTSIDE = "203.0.113.7"  # TEST-NET-3: not an operators' network


def _sign_in(username: str, password: str, address: str = "198.51.100.1") -> Any:
    return APIClient(REMOTE_ADDR=address).post(
        "/api/v1/auth/token", {"username": username, "password": password}, format="json"
    )


def test_failed_sign_ins_lock_the_username_out_with_retry_after(
    make_user: Callable[..., User], settings: Any
) -> None:
    user = make_user("technician")
    for _ in range(settings.LOGIN_FAILURES_PER_USERNAME):
        assert _sign_in(user.username, "wrong").status_code == 401

    # Even the right password waits now, from any address
    locked = _sign_in(user.username, "pw-12345678", address="198.51.100.2")
    assert (locked.status_code, locked.json()["code"]) == (429, "throttled")
    assert 0 < int(locked["Retry-After"]) <= settings.LOGIN_LOCKOUT_SECONDS
    # Another user is not held back by it
    assert _sign_in(make_user("technician").username, "pw-12345678").status_code == 200


def test_failed_sign_ins_from_one_address_lock_that_address_out(
    make_user: Callable[..., User], settings: Any
) -> None:
    settings.LOGIN_FAILURES_PER_ADDRESS = 3
    for n in range(3):
        assert _sign_in(f"nobody{n}", "guess").status_code == 401
    user = make_user("technician")
    assert _sign_in(user.username, "pw-12345678").status_code == 429
    assert _sign_in(user.username, "pw-12345678", address="198.51.100.9").status_code == 200


def test_the_workspace_login_locks_out_after_failures(
    make_user: Callable[..., User], settings: Any
) -> None:
    dispatcher = make_user("dispatcher")
    browser = Client(REMOTE_ADDR="198.51.100.3")
    for _ in range(settings.LOGIN_FAILURES_PER_USERNAME):
        browser.post("/admin/login/", {"username": dispatcher.username, "password": "wrong"})
    page = browser.post(
        "/admin/login/", {"username": dispatcher.username, "password": "pw-12345678"}
    )
    assert page.status_code == 200  # the form again, not a session
    assert "Too many failed sign-ins" in page.content.decode()
    assert "_auth_user_id" not in browser.session


def test_a_device_over_its_rate_is_told_when_to_come_back(tech: Phone, settings: Any) -> None:
    settings.SYNC_PULLS_PER_MINUTE = 2
    params = {"device_id": tech.device_id}
    assert tech.client.get("/api/v1/sync/pull", params).status_code == 200
    assert tech.client.get("/api/v1/sync/pull", params).status_code == 200
    third = tech.client.get("/api/v1/sync/pull", params)
    assert (third.status_code, third.json()["code"]) == (429, "throttled")
    assert 0 < int(third["Retry-After"]) <= 60


def test_metrics_are_for_operators_only(settings: Any) -> None:
    assert APIClient(REMOTE_ADDR=OUTSIDE).get("/metrics").status_code == 403
    settings.OPS_TOKEN = "s3cret-ops-token"
    with_token = APIClient(REMOTE_ADDR=OUTSIDE, HTTP_AUTHORIZATION="Bearer s3cret-ops-token")
    assert with_token.get("/metrics").status_code == 200
    wrong = APIClient(REMOTE_ADDR=OUTSIDE, HTTP_AUTHORIZATION="Bearer guess")
    assert wrong.get("/metrics").status_code == 403


def test_readyz_tells_strangers_only_the_status_and_names_no_error(settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    outside = APIClient(REMOTE_ADDR=OUTSIDE).get("/readyz")
    assert outside.status_code == 503
    assert set(outside.json()) == {"status", "down"}  # what is down, never why or the rest
    assert outside.json()["status"] == "unavailable" and "redis" in outside.json()["down"]
    inside = APIClient().get("/readyz").json()
    assert "redis" in inside["down"]
    assert set(inside["checks"].values()) <= {"ok", "down"}


def test_a_client_address_comes_from_x_forwarded_for_only_behind_a_trusted_proxy(
    make_user: Callable[..., User], settings: Any
) -> None:
    settings.LOGIN_FAILURES_PER_ADDRESS = 1
    # Not trusted: the proxy's own address is the client, whatever the header says
    APIClient(HTTP_X_FORWARDED_FOR="198.51.100.50", REMOTE_ADDR="10.0.0.2").post(
        "/api/v1/auth/token", {"username": "x", "password": "y"}, format="json"
    )
    blocked = APIClient(HTTP_X_FORWARDED_FOR="198.51.100.99", REMOTE_ADDR="10.0.0.2").post(
        "/api/v1/auth/token", {"username": "z", "password": "y"}, format="json"
    )
    assert blocked.status_code == 429
    # Trusted: each forwarded client counts on its own
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    user = make_user("technician")
    ok = APIClient(HTTP_X_FORWARDED_FOR="198.51.100.77", REMOTE_ADDR="10.0.0.2").post(
        "/api/v1/auth/token", {"username": user.username, "password": "pw-12345678"}, format="json"
    )
    assert ok.status_code == 200
