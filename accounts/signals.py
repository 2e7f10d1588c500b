"""Edits made anywhere (the workspace's forms included) to what authentication depends on
change the authentication generation, so no process keeps trusting what it cached
(``accounts.authcache``). Services that write with ``update()``, which sends no signal, call
``authcache.changed_after_commit`` themselves."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save

from accounts import authcache
from accounts.models import ApiToken, Device, Organization, User


def _saved(sender: type, instance: object, created: bool, **kwargs: Any) -> None:
    update_fields = kwargs.get("update_fields")
    # A new row is in no cache; a sign-in stamps last_login and changes nothing we cache.
    if created or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return
    authcache.changed_after_commit()


def _deleted(sender: type, instance: object, **kwargs: Any) -> None:
    authcache.changed_after_commit()


def connect() -> None:
    for model in (User, ApiToken, Device, Organization):
        post_save.connect(_saved, sender=model, dispatch_uid=f"authcache-save-{model.__name__}")
        post_delete.connect(_deleted, sender=model, dispatch_uid=f"authcache-del-{model.__name__}")
