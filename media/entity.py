"""The ``attachment`` entity: how the sync core sees attachment records."""

from __future__ import annotations

from media.models import Attachment, Kind
from workorders.fields import Choice, FieldKind, Integer, Reference, Text
from workorders.registry import EntitySpec, FieldSpec, Rule


def _server_set(kind: FieldKind, attribute: str | None = None) -> FieldSpec:
    # Set from the verified upload; no op may change them afterwards.
    return FieldSpec(Rule.SERVER_WINS, kind, immutable=True, attribute=attribute)


ATTACHMENT = EntitySpec(
    name="attachment",
    model=Attachment,
    client_can_create=False,
    # Evidence of a visit: a technician may annotate it, only a dispatcher may remove it.
    technician_can_delete=False,
    fields={
        "work_order_id": _server_set(Reference(), attribute="work_order_id"),
        "kind": _server_set(Choice(tuple(Kind.values))),
        "filename": _server_set(Text(255)),
        "content_type": _server_set(Text(255)),
        "size": _server_set(Integer()),
        "sha256": _server_set(Text(64)),
        "note": FieldSpec(Rule.LAST_WRITER_WINS, Text(10_000)),
    },
)
