"""Raw psycopg floors: what Postgres does for the same rows with no Django, HTTP or Celery.

FACTS.md measured both on this kind of machine: op-log inserts in batches of 100 with
`executemany … ON CONFLICT DO NOTHING`, and a per-op apply loop (SELECT … FOR UPDATE the
record, UPDATE it, INSERT the change, UPDATE the op; one transaction per op).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.measure import timed_threads

OP_COLUMNS = (
    "op_id", "device_id", "organization_id", "user_id", "seq", "entity", "entity_id", "action",
    "base_version", "fields", "client_time", "content_hash", "received_at", "status",
    "rejected_at_push", "code", "detail", "overridden_fields", "conflict_ids", "finished_at",
)  # fmt: skip
OpRow = tuple[Any, ...]  # values in OP_COLUMNS order
TIMEOUT = 300.0


def ingest_floor(conninfo: str, batches_per_connection: Sequence[Sequence[list[OpRow]]]) -> float:
    """Insert the rows into operations_operation, each connection its batches, one
    transaction per batch; returns rows per second. The caller deletes the rows again."""
    columns = ", ".join(OP_COLUMNS)
    placeholders = ", ".join(["%s"] * len(OP_COLUMNS))
    insert = f"INSERT INTO operations_operation ({columns}) VALUES ({placeholders}) ON CONFLICT DO NOTHING"  # noqa: E501

    def task(batches: Sequence[list[OpRow]]) -> Callable[[Callable[[], object]], int]:
        def work(go: Callable[[], object]) -> int:
            with psycopg.connect(conninfo) as conn, conn.cursor() as cursor:
                go()
                for batch in batches:
                    with conn.transaction():
                        cursor.executemany(insert, batch)
            return sum(len(batch) for batch in batches)

        return work

    inserted, elapsed = timed_threads([task(b) for b in batches_per_connection], TIMEOUT)
    return sum(inserted) / elapsed


@dataclass(frozen=True)
class FloorOp:
    op_id: uuid.UUID
    entity_id: uuid.UUID
    fields: dict[str, Any]


_SCRATCH = """
DROP TABLE IF EXISTS bench_floor_event, bench_floor_op, bench_floor_record;
CREATE TABLE bench_floor_record (
    id uuid PRIMARY KEY, version bigint NOT NULL, data jsonb NOT NULL, field_meta jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE bench_floor_event (
    id bigserial PRIMARY KEY, entity_id uuid NOT NULL, version bigint NOT NULL,
    op_id uuid NOT NULL UNIQUE, changes jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(), UNIQUE (entity_id, version));
CREATE TABLE bench_floor_op (
    op_id uuid PRIMARY KEY, status varchar(10) NOT NULL DEFAULT 'pending', version bigint,
    finished_at timestamptz);
"""


def apply_floor(conninfo: str, ops_per_connection: Sequence[Sequence[FloorOp]]) -> float:
    """Apply the ops one transaction each, from one connection per list, against scratch
    tables shaped like ours (records with per-field metadata, a unique event per op and per
    record version, the op's outcome); returns ops per second."""
    every = [op for ops in ops_per_connection for op in ops]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(_SCRATCH)
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO bench_floor_record (id, version, data, field_meta) "
                "VALUES (%s, 0, '{}', '{}')",
                [(entity_id,) for entity_id in {op.entity_id for op in every}],
            )
            cursor.executemany(
                "INSERT INTO bench_floor_op (op_id) VALUES (%s)", [(op.op_id,) for op in every]
            )
        conn.execute("ANALYZE bench_floor_record, bench_floor_op")
    try:
        done, elapsed = timed_threads(
            [_apply_task(conninfo, ops) for ops in ops_per_connection], TIMEOUT
        )
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(
                "DROP TABLE IF EXISTS bench_floor_event, bench_floor_op, bench_floor_record"
            )
    return sum(done) / elapsed


def _apply_task(conninfo: str, ops: Sequence[FloorOp]) -> Callable[[Callable[[], object]], int]:
    def work(go: Callable[[], object]) -> int:
        with psycopg.connect(conninfo) as conn, conn.cursor() as cursor:
            go()
            for op in ops:
                with conn.transaction():
                    _apply_one(cursor, op)
        return len(ops)

    return work


def _apply_one(cursor: psycopg.Cursor[Any], op: FloorOp) -> None:
    cursor.execute(
        "SELECT version, data, field_meta FROM bench_floor_record WHERE id = %s FOR UPDATE",
        (op.entity_id,),
    )
    row = cursor.fetchone()
    assert row is not None
    version, data, meta = row[0] + 1, row[1], row[2]
    changes = {name: [data.get(name), value] for name, value in op.fields.items()}
    data.update(op.fields)
    meta.update({name: {"v": version, "op": str(op.op_id)} for name in op.fields})
    cursor.execute(
        "UPDATE bench_floor_record SET version = %s, data = %s, field_meta = %s, "
        "updated_at = now() WHERE id = %s",
        (version, Jsonb(data), Jsonb(meta), op.entity_id),
    )
    cursor.execute(
        "INSERT INTO bench_floor_event (entity_id, version, op_id, changes) "
        "VALUES (%s, %s, %s, %s)",
        (op.entity_id, version, op.op_id, Jsonb(changes)),
    )
    cursor.execute(
        "UPDATE bench_floor_op SET status = 'applied', version = %s, finished_at = now() "
        "WHERE op_id = %s",
        (version, op.op_id),
    )
