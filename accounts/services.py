"""Services for organisations, people, tokens and devices."""

from __future__ import annotations

import uuid
import zoneinfo
from datetime import datetime, timedelta

from django.contrib.auth import authenticate
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts import authcache
from accounts.authentication import hash_key, new_key
from accounts.exceptions import AccountError, Refusal
from accounts.models import ApiToken, Device, DeviceKind, Organization, Role, User
from accounts.throttles import login_blocked, login_failed, login_succeeded
from common.exceptions import throttled
from common.logging import log_event


def field_user_create(org_name: str, role: str, username: str, password: str) -> User:
    """Create the organisation if needed and the user; running it again changes nothing."""
    if role not in Role.values:
        raise AccountError("invalid_role", f"role must be one of {', '.join(Role.values)}")
    with transaction.atomic():
        org, _ = Organization.objects.get_or_create(name=org_name)
        user = User.objects.filter(username=username).first()
        if user is not None:
            if user.organization_id != org.pk:
                raise AccountError("username_taken", f"{username} belongs to another organisation")
            return user
        user = User.objects.create_user(
            username=username, password=password, organization=org, role=role
        )
        # Dispatchers work in the admin; technicians never log into it.
        user.is_staff = role == Role.DISPATCHER
        user.save(update_fields=["is_staff"])
    log_event("user.created", username=username, org=org_name, role=role)
    return user


def token_issue_for_credentials(username: str, password: str, address: str) -> str:
    """A token for a field user's credentials; sign-in failures are throttled per username
    and per client ``address``."""
    wait = login_blocked(username, address)
    if wait is not None:
        raise throttled("too many failed sign-ins for this username or address", wait)
    user = authenticate(username=username, password=password)
    if not isinstance(user, User) or not user.is_active or user.organization_id is None:
        login_failed(username, address)
        log_event("login.failed", username=username, address=address, via="api")
        raise AccountError(
            "invalid_credentials", "Wrong username or password.", Refusal.NOT_AUTHENTICATED
        )
    login_succeeded(username)
    return token_issue(user)


def token_issue(user: User) -> str:
    """Issue a new token (one per client install); the plain key is returned only here."""
    key = new_key()
    ApiToken.objects.create(user=user, key_hash=hash_key(key), prefix=key[:8])
    log_event("token.issued", username=user.username)
    return key


def token_revoke(token_id: int) -> None:
    ApiToken.objects.filter(pk=token_id, revoked_at__isnull=True).update(revoked_at=timezone.now())
    authcache.changed_after_commit()
    log_event("token.revoked", token_id=token_id)


def device_claim(user: User, device_id: uuid.UUID, token: object = None) -> Device:
    """Return the user's device, creating it on first sync; another user's → 403.

    A token is bound to the first device it syncs with, so deactivating a lost device
    revokes exactly the tokens that device holds."""
    if isinstance(token, ApiToken) and token.device_id == device_id:
        # Loaded once, then cached with the token (accounts.authcache).
        device = token.device
    else:
        device = Device.objects.filter(pk=device_id).first()
    if device is None:
        try:
            with transaction.atomic():
                device = Device.objects.create(id=device_id, user=user, organization_id=user.org_id)
            log_event("device.registered", device_id=str(device_id), username=user.username)
        except IntegrityError:
            device = Device.objects.get(pk=device_id)
    if device.user_id != user.pk:
        raise AccountError(
            "device_owned_by_other_user",
            "This device_id belongs to another user.",
            Refusal.FORBIDDEN,
        )
    if not device.is_active:
        raise AccountError(
            "device_deactivated", "This device has been deactivated.", Refusal.FORBIDDEN
        )
    if isinstance(token, ApiToken) and token.device_id is None:
        ApiToken.objects.filter(pk=token.pk, device__isnull=True).update(device=device)
        token.device = device
    return device


# A device's last push and pull are stamped at most this often (per web process, which
# remembers the stamp with the device): a phone syncing every few seconds must not cost a
# write on every request. The workspace shows them to the minute.
TOUCH_INTERVAL = timedelta(seconds=30)


def device_touch(device: Device, column: str, now: datetime) -> None:
    """Stamp ``last_push_at`` or ``last_pull_at``, at most every ``TOUCH_INTERVAL``. The apply does
    not lock this row (its own state is ``operations.DeviceSyncState``), so a stamp never
    waits for one."""
    if column not in ("last_push_at", "last_pull_at"):
        raise ValueError(f"not a sync timestamp: {column}")
    loaded = getattr(device, column)
    if loaded is not None and now - loaded < TOUCH_INTERVAL:
        return
    stale = Q(**{f"{column}__isnull": True}) | Q(**{f"{column}__lt": now - TOUCH_INTERVAL})
    Device.objects.filter(stale, pk=device.pk).update(**{column: now})
    setattr(device, column, now)


def device_deactivate(device_id: uuid.UUID) -> int:
    """A lost phone: its tokens stop working at once; its ops stay in the log, visible."""
    with transaction.atomic():
        Device.objects.filter(pk=device_id).update(is_active=False)
        revoked = ApiToken.objects.filter(device_id=device_id, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        authcache.changed_after_commit()
    log_event("device.deactivated", device_id=str(device_id), tokens_revoked=revoked)
    return revoked


def admin_device_for(user: User) -> Device:
    """The device that stands for a dispatcher's admin workspace (one per dispatcher)."""
    device, _ = Device.objects.get_or_create(
        user=user,
        kind=DeviceKind.ADMIN,
        defaults={"organization_id": user.org_id},
    )
    return device


def organization_set_time_zone(organization_id: int, time_zone: str) -> None:
    """Where the organisation's working day is (the dispatch board shows days in it)."""
    if time_zone not in zoneinfo.available_timezones():
        raise AccountError("invalid_time_zone", f"{time_zone!r} is not an IANA time zone name")
    Organization.objects.filter(pk=organization_id).update(time_zone=time_zone)
    log_event("organization.time_zone_set", organization_id=organization_id, time_zone=time_zone)
