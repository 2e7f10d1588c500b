"""Sign-in throttling, shared by the API token endpoint and the workspace's login form:
failures are counted per username and per client address in Redis, so the limits hold
across processes and hosts."""

from __future__ import annotations

from django.conf import settings

from common.ratelimit import Limit


def _per_username() -> Limit:
    return Limit("login-user", settings.LOGIN_FAILURES_PER_USERNAME, settings.LOGIN_LOCKOUT_SECONDS)


def _per_address() -> Limit:
    return Limit("login-addr", settings.LOGIN_FAILURES_PER_ADDRESS, settings.LOGIN_LOCKOUT_SECONDS)


def login_blocked(username: str, address: str) -> int | None:
    """Seconds until this username, or this address, may try to sign in again; else None."""
    waits = [_per_username().blocked(username.lower()), _per_address().blocked(address)]
    return max((wait for wait in waits if wait is not None), default=None)


def login_failed(username: str, address: str) -> None:
    _per_username().hit(username.lower())
    _per_address().hit(address)


def login_succeeded(username: str) -> None:
    _per_username().clear(username.lower())
