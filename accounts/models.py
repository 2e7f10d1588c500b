"""Organisations, their people (dispatchers and technicians), API tokens and devices."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AbstractUser
from django.db import models


class Organization(models.Model):
    name = models.CharField(max_length=100, unique=True)
    # Where its working day is: the dispatch board shows days in this zone (IANA name).
    time_zone = models.CharField(max_length=64, default="UTC")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    DISPATCHER = "dispatcher", "Dispatcher"
    TECHNICIAN = "technician", "Technician"


class User(AbstractUser):
    # Null only for superusers that belong to no organisation (platform operators).
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.PROTECT, related_name="users"
    )
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.TECHNICIAN)

    @property
    def is_dispatcher(self) -> bool:
        return self.role == Role.DISPATCHER

    @property
    def org_id(self) -> int:
        """The organisation of a field user. Authentication refuses API users without one and
        the workspace writes only as a dispatcher of one, so None here is a server bug."""
        if self.organization_id is None:
            raise ValueError(f"user {self.pk} belongs to no organisation")
        return self.organization_id


class ApiToken(models.Model):
    """A bearer token. Only its sha256 is stored; the key is shown once, when issued."""

    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=8, help_text="First characters, to recognise a token.")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # The client install this token was first used with; deactivating it revokes the token.
    device = models.ForeignKey(
        "Device", null=True, blank=True, on_delete=models.SET_NULL, related_name="tokens"
    )

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user.username})"


class DeviceKind(models.TextChoices):
    CLIENT = "client", "Client install"
    # Edits made in the dispatchers' admin are ops of a per-dispatcher admin device, so they
    # go through exactly the same path as a phone's.
    ADMIN = "admin", "Admin workspace"


class Device(models.Model):
    """A client install, named by a UUID the client makes. Owned by the first user who syncs.
    Where the sync engine stands for it lives in ``operations.DeviceSyncState``."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="devices")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=10, choices=DeviceKind.choices, default=DeviceKind.CLIENT)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_push_at = models.DateTimeField(null=True, blank=True)
    last_pull_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user"], name="device_user_idx")]

    def __str__(self) -> str:
        return f"{self.id} ({self.user.username})"
