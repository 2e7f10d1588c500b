"""The sync wire shapes (contract: push, pull, op outcome). Each serializer both renders
its response and documents it in the OpenAPI schema, so the two cannot drift apart."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from common.serializers import BlankAsNullCharField
from operations.api.schema import record_fields
from operations.models import OpStatus


class OpResultSerializer(serializers.Serializer[Any]):
    """A push's answer for one op; ``code`` and ``detail`` only when it was rejected."""

    # As sent, whatever it was: an op whose op_id is no UUID is still answered in its place.
    op_id = serializers.JSONField()
    status = serializers.ChoiceField(["accepted", "duplicate", "rejected"])
    code = serializers.CharField(required=False)
    detail = serializers.CharField(required=False)

    def to_representation(self, instance: Any) -> dict[str, Any]:
        out: dict[str, Any] = super().to_representation(instance)
        if not instance.code:
            del out["code"], out["detail"]
        return out


class PushResponseSerializer(serializers.Serializer[Any]):
    results = OpResultSerializer(many=True)

    @staticmethod
    def render(results: list[Any]) -> dict[str, Any]:
        """The same body as ``.data``, built directly: DRF's field machinery cost a tenth of
        a large push. ``tests/sync/test_push.py`` holds the two to the same output."""
        out = []
        for r in results:
            item = {"op_id": r.op_id, "status": r.status}
            if r.code:
                item["code"], item["detail"] = r.code, r.detail
            out.append(item)
        return {"results": out}


class OpOutcomeSerializer(serializers.Serializer[Any]):
    op_id = serializers.UUIDField()
    device_id = serializers.UUIDField()
    seq = serializers.IntegerField(allow_null=True)
    status = serializers.ChoiceField(OpStatus.values)
    version = serializers.IntegerField(allow_null=True)
    overridden_fields = serializers.ListField(child=serializers.CharField())
    conflict_ids = serializers.ListField(child=serializers.UUIDField())
    code = BlankAsNullCharField()
    detail = BlankAsNullCharField()


@extend_schema_field(record_fields())
class RecordFieldsField(serializers.DictField):
    """A record's wire values, documented per entity (``operations.api.schema``)."""


class ChangeSerializer(serializers.Serializer[Any]):
    entity = serializers.CharField()
    entity_id = serializers.UUIDField()
    version = serializers.IntegerField()
    state = serializers.ChoiceField(["live", "deleted", "revoked"])
    # DRF's metaclass takes declared fields off the class, so this never shadows
    # ``Serializer.fields`` at run time; only the type checker sees the clash.
    fields = RecordFieldsField(  # type: ignore[assignment]
        help_text="the whole current record; {} when revoked"
    )
    op_id = serializers.UUIDField(allow_null=True)


class PullResponseSerializer(serializers.Serializer[Any]):
    changes = ChangeSerializer(many=True)
    outcomes = OpOutcomeSerializer(many=True)
    last_done_seq = serializers.IntegerField()
    cursor = serializers.CharField()
    has_more = serializers.BooleanField()

    @staticmethod
    def render(page: Any) -> dict[str, Any]:
        """The same body as ``.data``, built directly: DRF's field machinery was a tenth of a
        pull. ``tests/sync/test_pull.py`` holds the two to the same output."""
        return {
            "changes": [
                {
                    "entity": c.entity,
                    "entity_id": str(c.entity_id),
                    "version": c.version,
                    "state": c.state,
                    "fields": {str(k): v for k, v in c.fields.items()},
                    "op_id": None if c.op_id is None else str(c.op_id),
                }
                for c in page.changes
            ],
            "outcomes": [
                {
                    "op_id": str(o.op_id),
                    "device_id": str(o.device_id),
                    "seq": o.seq,
                    "status": o.status,
                    "version": o.version,
                    "overridden_fields": [str(f) for f in o.overridden_fields],
                    "conflict_ids": [str(c) for c in o.conflict_ids],
                    "code": o.code or None,
                    "detail": o.detail or None,
                }
                for o in page.outcomes
            ],
            "last_done_seq": page.last_done_seq,
            "cursor": page.cursor,
            "has_more": page.has_more,
        }
