"""Field kinds: how a synced field's wire value is validated and mapped to its column.

Values on the wire and in the event log are canonical JSON (strings for datetimes and ids),
so the merge compares plain JSON values.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from django.db import models

Json = Any  # a JSON value: None | bool | int | float | str | list | dict


class FieldError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class StoreContext(Protocol):
    def user_for_username(self, username: str) -> models.Model | None: ...


def storable_text(raw: str) -> str:
    """Text as Postgres will store it: UTF-8 (JSON can carry an unpaired surrogate such as
    "\\ud83d", which no UTF-8 encoder accepts) and no NUL."""
    if "\x00" in raw:
        raise FieldError("invalid_value", "must not contain NUL characters")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FieldError("invalid_value", "must be valid Unicode (no unpaired surrogates)") from exc
    return raw


# Every time is held in UTC within these bounds: Python cannot hold a UTC time past year
# 9999 (a local 9999-12-31T23:00-05:00 is one), and a stored time must read back in any
# session's time zone.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9998, 12, 31, 23, 59, 59, tzinfo=UTC)


def parse_time(raw: Json) -> datetime:
    """An RFC 3339 time with an offset, as a UTC datetime Postgres and Python both hold."""
    if not isinstance(raw, str) or len(raw) > 40:
        raise FieldError("invalid_value", "must be an RFC 3339 time")
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise FieldError("invalid_value", "must be an RFC 3339 time") from exc
    if parsed.tzinfo is None:
        raise FieldError("invalid_value", "must carry a UTC offset (e.g. Z)")
    try:
        value = parsed.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise FieldError("invalid_value", "must be a time between 1900 and 9998") from exc
    if not EARLIEST <= value <= LATEST:
        raise FieldError("invalid_value", "must be a time between 1900 and 9998")
    return value


def format_datetime(value: datetime) -> str:
    text = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return text


def display_value(value: Json) -> str:
    """How a wire value reads to a person (in the workspace, in a record's history)."""
    return "—" if value is None or value == "" else str(value)


class FieldKind(Protocol):
    def parse(self, raw: Json) -> Json: ...
    def load(self, obj: models.Model, name: str) -> Json: ...
    def store(self, obj: models.Model, name: str, value: Json, ctx: StoreContext) -> None: ...


@dataclass(frozen=True)
class Text:
    max_length: int

    def parse(self, raw: Json) -> Json:
        if not isinstance(raw, str):
            raise FieldError("invalid_value", "must be a string")
        if len(raw) > self.max_length:
            raise FieldError("value_too_long", f"must be at most {self.max_length} characters")
        return storable_text(raw)

    def load(self, obj: models.Model, name: str) -> Json:
        return getattr(obj, name)

    def store(self, obj: models.Model, name: str, value: Json, ctx: StoreContext) -> None:
        setattr(obj, name, value)


@dataclass(frozen=True)
class Choice:
    choices: tuple[str, ...]

    def parse(self, raw: Json) -> Json:
        if raw not in self.choices:
            raise FieldError("invalid_value", f"must be one of {', '.join(self.choices)}")
        return raw

    def load(self, obj: models.Model, name: str) -> Json:
        return getattr(obj, name)

    def store(self, obj: models.Model, name: str, value: Json, ctx: StoreContext) -> None:
        setattr(obj, name, value)


@dataclass(frozen=True)
class Boolean:
    def parse(self, raw: Json) -> Json:
        if not isinstance(raw, bool):
            raise FieldError("invalid_value", "must be true or false")
        return raw

    def load(self, obj: models.Model, name: str) -> Json:
        return getattr(obj, name)

    def store(self, obj: models.Model, name: str, value: Json, ctx: StoreContext) -> None:
        setattr(obj, name, value)


@dataclass(frozen=True)
class DateTime:
    def parse(self, raw: Json) -> Json:
        return None if raw is None else format_datetime(parse_time(raw))

    def load(self, obj: models.Model, name: str) -> Json:
        value = getattr(obj, name)
        return None if value is None else format_datetime(value)

    def store(self, obj: models.Model, name: str, value: Json, ctx: StoreContext) -> None:
        setattr(obj, name, None if value is None else datetime.fromisoformat(value))


@dataclass(frozen=True)
class Reference:
    """The id of another record (``work_order_id``); stored in the foreign key column."""

    def parse(self, raw: Json) -> Json:
        try:
            return str(uuid.UUID(str(raw))) if isinstance(raw, str) else _bad_uuid()
        except ValueError:
            return _bad_uuid()

    def load(self, obj: models.Model, name: str) -> Json:
        value = getattr(obj, name)
        return None if value is None else str(value)

    def store(self, obj: models.Model, name: str, value: Json, ctx: StoreContext) -> None:
        setattr(obj, name, uuid.UUID(value))


def _bad_uuid() -> Json:
    raise FieldError("invalid_value", "must be a UUID")


@dataclass(frozen=True)
class Username:
    """A user of the same organisation, named by username on the wire (or null)."""

    def parse(self, raw: Json) -> Json:
        if raw is None:
            return None
        if not isinstance(raw, str) or not raw or len(raw) > 150:
            raise FieldError("invalid_value", "must be a username or null")
        return storable_text(raw)

    def load(self, obj: models.Model, name: str) -> Json:
        user = getattr(obj, name)
        return None if user is None else user.username

    def store(self, obj: models.Model, name: str, value: Json, ctx: StoreContext) -> None:
        if value is None:
            setattr(obj, name, None)
            return
        user = ctx.user_for_username(value)
        if user is None:
            raise FieldError("invalid_value", f"{name}: no user {value!r} in this organisation")
        setattr(obj, name, user)


@dataclass(frozen=True)
class Integer:
    minimum: int = 0
    maximum: int = 2**62

    def parse(self, raw: Json) -> Json:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise FieldError("invalid_value", "must be an integer")
        if not self.minimum <= raw <= self.maximum:
            raise FieldError("invalid_value", f"must be between {self.minimum} and {self.maximum}")
        return raw

    def load(self, obj: models.Model, name: str) -> Json:
        return getattr(obj, name)

    def store(self, obj: models.Model, name: str, value: Json, ctx: StoreContext) -> None:
        setattr(obj, name, value)
