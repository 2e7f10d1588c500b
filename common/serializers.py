"""Serializer fields shared by the apps' wire shapes."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class BlankAsNullCharField(serializers.CharField):
    """A text column that stores "" for none, shown as null on the wire."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_null=True, **kwargs)

    # The wire's null is the column's "": a narrower promise than CharField's str.
    def to_representation(self, value: Any) -> str | None:  # type: ignore[override]
        return str(value) if value else None
