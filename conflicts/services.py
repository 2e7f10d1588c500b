"""Resolve a conflict. The resolution is a record change like any other: it goes through
``operations.recording`` and so leaves an event and a feed entry that every device pulls."""

from __future__ import annotations

import uuid

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from common.logging import log_event
from conflicts.exceptions import ConflictError, Refusal
from conflicts.models import Conflict, ConflictStatus, Resolution
from conflicts.selectors import conflicts_visible_to
from operations.models import EventKind
from operations.recording import Author, ChangeSet
from workorders.fields import FieldError, Json
from workorders.models import SyncedRecord
from workorders.registry import DELETED, ENTITIES, EntitySpec, Rule
from workorders.scope import Scope

_NO_VALUE = object()


def conflict_resolve(
    user: User, conflict_id: uuid.UUID, choice: str, value: object = _NO_VALUE
) -> tuple[Conflict, int]:
    """Settle a conflict with the server's value, the client's, or a custom one; returns the
    conflict and the record's version after the resolution."""
    if choice not in Resolution.values:
        raise ConflictError("invalid_choice", "choice must be server, client or custom")
    with transaction.atomic():
        conflict = (
            conflicts_visible_to(user)
            .select_for_update(of=("self",))
            .filter(pk=conflict_id)
            .first()
        )
        if conflict is None:
            raise ConflictError("not_found", "no such conflict", Refusal.NOT_FOUND)
        spec = ENTITIES[conflict.entity]
        if not may_decide(user, spec, conflict):
            raise ConflictError(
                "not_allowed",
                "only a dispatcher may decide this conflict (a deleted record, or a field "
                "the dispatcher owns)",
                Refusal.FORBIDDEN,
            )
        if conflict.status == ConflictStatus.RESOLVED:
            raise ConflictError(
                "already_resolved", "this conflict was already resolved", Refusal.CONFLICT
            )
        changes = ChangeSet(conflict.organization_id)
        record = changes.lock([(spec.name, conflict.entity_id)])[(spec.name, conflict.entity_id)]
        author = Author(actor_id=user.pk)
        if conflict.field == DELETED:
            resolved_value = _resolve_deleted(changes, spec, record, conflict, choice, author)
        else:
            resolved_value = _resolve_field(changes, spec, record, conflict, choice, value, author)
        conflict.status = ConflictStatus.RESOLVED
        conflict.resolution = choice
        conflict.resolved_value = resolved_value
        conflict.resolved_by = user
        conflict.resolved_at = timezone.now()
        conflict.version_after = record.version
        conflict.save()
        changes.flush()
    log_event(
        "conflict.resolved",
        conflict_id=str(conflict.id),
        choice=choice,
        resolved_by=user.username,
        version=record.version,
    )
    return conflict, record.version


def may_decide(user: User, spec: EntitySpec, conflict: Conflict) -> bool:
    """Who may settle which conflict. Whoever may see a conflict may settle one on a field
    that any side may edit (a ``manual`` field such as ``status``); only a dispatcher decides
    whether a deleted record comes back, or the value of a field the dispatcher owns."""
    if Scope.of(user).whole_organization:
        return True
    if conflict.field == DELETED:
        return False
    field = spec.fields.get(conflict.field)
    return field is not None and not field.dispatcher_only and field.rule != Rule.SERVER_WINS


def _resolve_field(
    changes: ChangeSet,
    spec: EntitySpec,
    record: SyncedRecord,
    conflict: Conflict,
    choice: str,
    value: object,
    author: Author,
) -> Json:
    current = spec.values(record)[conflict.field]
    if choice == Resolution.SERVER:
        target = current
    elif choice == Resolution.CLIENT:
        target = conflict.client_value
    else:
        if value is _NO_VALUE:
            raise ConflictError("invalid_value", "a custom resolution needs a value")
        try:
            target = spec.fields[conflict.field].kind.parse(value)
        except FieldError as exc:
            raise ConflictError(exc.code, f"{conflict.field}: {exc.detail}") from exc
    if target == current or record.deleted:
        changes.note(spec, record, author, EventKind.RESOLVE)
    else:
        changes.update(spec, record, {conflict.field: target}, author, kind=EventKind.RESOLVE)
    return target


def _resolve_deleted(
    changes: ChangeSet,
    spec: EntitySpec,
    record: SyncedRecord,
    conflict: Conflict,
    choice: str,
    author: Author,
) -> Json:
    """``__deleted__``: the server keeps it deleted, or the client's edit restores it."""
    if choice == Resolution.CUSTOM:
        raise ConflictError("invalid_choice", "an edit of a deleted record is kept or dropped")
    if choice == Resolution.SERVER or not record.deleted:
        changes.note(spec, record, author, EventKind.RESOLVE)
        return True
    current = spec.values(record)
    client_fields = conflict.client_value if isinstance(conflict.client_value, dict) else {}
    diff = {k: v for k, v in client_fields.items() if k in spec.fields and current[k] != v}
    changes.update(spec, record, diff, author, kind=EventKind.RESOLVE, undelete=True)
    return False
