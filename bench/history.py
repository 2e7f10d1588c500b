"""Benchmark: what a push, an apply and a pull cost against the size of history, and what
retention of a month of it costs (history is partitioned by month: operations.partitions).

1. Before: BENCH_HOT_PHONES technicians' phones (default 50; bench/hotpaths.py's set-up and
   rounds, in this process: each pushes 5 ops, one drain applies them, each pulls twice) sync
   BENCH_HISTORY_ROUNDS rounds (default 3) over an empty history.
2. History is seeded straight in SQL: BENCH_HISTORY_EVENTS events (default 10,000,000), as
   many ops and as many feed entries, of another organisation (100 devices, 100,000
   records), spread evenly over the four months before this one, each month in its own
   partitions as in production, then vacuumed and analysed (as months-old rows long have
   been). Foreign keys are not checked while seeding
   (session_replication_role = replica): the rows point at real devices and users all the
   same, and checking 30 million of them would only make the set-up slower.
3. After: the same phones sync as many rounds again. Each part's figure is the median wall
   time (this process' CPU plus Postgres' part), with its queries; the target is that none
   grows with history (after/before within the noise of this shared machine, about ±20%).
4. Retention, with the horizon placed so that only the oldest seeded month is past it: one
   ``history_compact()`` run, timed, and the rows it took from each table.

The seeded feed entries take positions after the phones' (they are written after them,
dated in the past): it changes nothing measured here, but it puts the retention horizon
above the phones' cursors, so nothing is pulled after step 4.

`BENCH_HISTORY_EVENTS=1000000` makes a quick check of it.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import psycopg

from bench.hotpaths import PARTS, Meter, setup_phones, sync_round
from bench.processes import git_commit, setup_django

SEED_DEVICES = 100
SEED_RECORDS = 100_000
SEED_MONTHS = 4
CHUNK = 1_000_000


def say(message: str) -> None:
    print(f"bench history: {message}", file=sys.stderr, flush=True)


def run(report: dict[str, object]) -> None:
    events = int(os.environ.get("BENCH_HISTORY_EVENTS", "10000000"))
    rounds = int(os.environ.get("BENCH_HISTORY_ROUNDS", "3"))
    phones_n = int(os.environ.get("BENCH_HOT_PHONES", "50"))
    say("migrating the bench database")
    _, conninfo = setup_django()
    from django.test import Client

    client = Client()
    months = _past_months()
    # The months to seed have their (empty) partitions from the start, so that before and
    # after plan over the same partitions and only the rows in them differ.
    _empty_partitions(months, make=True)
    say(f"set-up: {phones_n} phones")
    phones = setup_phones(client, phones_n)
    rng = random.Random(11)
    sync_round(client, phones, rng, Meter())  # untimed: first-request costs
    before = Meter()
    for _ in range(rounds):
        sync_round(client, phones, rng, before)
    say(f"seeding {events:,} events, ops and feed entries over {SEED_MONTHS} months")
    began = time.perf_counter()
    _empty_partitions(months, make=False)
    sizes = _seed(conninfo, events, months)
    seeded_in = time.perf_counter() - began
    say(f"seeded in {seeded_in:.0f} s: {sizes}")
    after = Meter()
    for _ in range(rounds):
        sync_round(client, phones, rng, after)
    plans = _plans()
    retention = _retention(conninfo, months)
    report["history"] = render(
        phones_n * rounds, events, sizes, seeded_in, before, after, retention, months
    ) + (f"\n\nPrepared statements on this process' connection: {plans}." if plans else "")


def _plans() -> str:
    """How Postgres ran the hot paths' prepared statements (common.db.fetch_prepared) on
    this process' connection: with generic plans (planned once) or custom ones."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), sum(generic_plans), sum(custom_plans) FROM pg_prepared_statements"
        )
        count, generic, custom = cursor.fetchone() or (0, 0, 0)
    if not count:
        return ""
    return (
        f"{count} statements, run {generic} times with a generic plan (planned once) and"
        f" {custom} with a custom one"
    )


def _past_months() -> list[datetime]:
    from django.utils import timezone

    from operations.partitions import month_of

    months: list[datetime] = []
    month = month_of(timezone.now())
    for _ in range(SEED_MONTHS):
        month = month_of(month - timedelta(days=1))
        months.insert(0, month)
    return months


def _empty_partitions(months: list[datetime], make: bool) -> None:
    """Make the months' partitions, or drop them (still empty) to load them afresh."""
    from django.db import connection

    from operations.partitions import HISTORY, history_partition_make, partition_name

    for history in HISTORY:
        for month in months:
            if make:
                history_partition_make(history, month)
            else:
                with connection.cursor() as cursor:
                    cursor.execute(f"DROP TABLE {partition_name(history, month)}")


def _seed(conninfo: str, events: int, months: list[datetime]) -> dict[str, int]:
    from accounts.models import Device
    from accounts.services import field_user_create
    from operations.partitions import (
        HISTORY,
        next_month,
        partition_name,
        partition_uniques_sql,
    )

    org = f"history-{uuid.uuid4().hex[:8]}"
    user = field_user_create(org, "dispatcher", f"{org}-d", "pw-history-1")
    devices = Device.objects.bulk_create(
        [
            Device(id=uuid.uuid4(), user=user, organization_id=user.org_id)
            for _ in range(SEED_DEVICES)
        ]
    )
    per_month = events // SEED_MONTHS
    params: dict[str, Any] = {
        "org": user.org_id,
        "user": user.pk,
        "devices": [str(d.id) for d in devices],
        "records": SEED_RECORDS,
    }
    # Each month is loaded into a table of its own, then attached as its partition: indexes
    # built once over the loaded rows cost a fraction of keeping them up row by row. (Bounds
    # in DDL cannot be bound parameters: the client binds them.)
    with psycopg.connect(conninfo, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        conn.execute("SET session_replication_role = replica")
        for index, month in enumerate(months):
            seconds = (next_month(month) - month).total_seconds()
            for history, statement in zip(HISTORY, _SEED_SQL, strict=True):
                name = partition_name(history, month)
                conn.execute(
                    f"CREATE TABLE {name} (LIKE {history.table} INCLUDING DEFAULTS"
                    " INCLUDING CONSTRAINTS)"
                )
                for lo in range(index * per_month, (index + 1) * per_month, CHUNK):
                    hi = min(lo + CHUNK, (index + 1) * per_month) - 1
                    step = {**params, "lo": lo, "hi": hi, "start": month,
                            "spacing": seconds / per_month, "first": index * per_month}  # fmt: skip
                    conn.execute(statement.replace("{table}", name).encode(), step)
                conn.execute(
                    f"ALTER TABLE {history.table} ATTACH PARTITION {name}"
                    " FOR VALUES FROM (%s) TO (%s)",
                    [month, next_month(month)],
                )
                for unique in partition_uniques_sql(history, name):
                    conn.execute(unique.encode())
            say(f"seeded {month:%Y-%m}")
        conn.execute("SET session_replication_role = DEFAULT")
        # History months old are vacuumed and analysed long since: so are these before the
        # clock starts again (else autovacuum, finding 30 million new rows, would run on the
        # same cores through the measurement).
        for history in HISTORY:
            conn.execute(f"VACUUM (ANALYZE) {history.table}")
        sizes = {
            history.table: int(
                (conn.execute(f"SELECT count(*) FROM {history.table}").fetchone() or (0,))[0]
            )
            for history in HISTORY
        }
    return sizes


# Row g of the seed: a record among SEED_RECORDS, a device among the seeded ones, a moment
# spread evenly over its month.
_AT = "(%(start)s::timestamptz + (g - %(first)s) * %(spacing)s * interval '1 second')"
_RECORD = "md5('r' || (g %% %(records)s))::uuid"
_OP = "md5('o' || g)::uuid"
_DEVICE = "(%(devices)s::uuid[])[1 + g %% 100]"
_EVENTS_SQL = f"""
    INSERT INTO {{table}} (id, organization_id, entity, entity_id, version, bumped,
        kind, op_id, device_id, seq, actor_id, changes, overridden_fields, conflict_ids,
        received_at, created_at)
    SELECT nextval('operations_event_id_seq'), %(org)s, 'work_order', {_RECORD}, g, true,
        'update', {_OP}, {_DEVICE}, g / 100 + 1, %(user)s,
        '{{"technician_notes": ["before", "after"]}}', '[]', '[]', {_AT}, {_AT}
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
"""
_OPS_SQL = f"""
    INSERT INTO {{table}} (op_id, device_id, organization_id, user_id, seq,
        entity, entity_id, action, base_version, fields, client_time, content_hash,
        received_at, status, rejected_at_push, code, detail, version, overridden_fields,
        conflict_ids, finished_at)
    SELECT {_OP}, {_DEVICE}, %(org)s, %(user)s, g / 100 + 1, 'work_order', {_RECORD},
        'update', g, '{{"technician_notes": "after"}}', {_AT}, md5(g::text) || md5(g::text),
        {_AT}, 'applied', false, '', '', g + 1, '[]', '[]', {_AT}
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
"""
_FEED_SQL = f"""
    INSERT INTO {{table}} (pos, organization_id, kind, entity, entity_id,
        assignee_id, prev_assignee_id, device_id, op_id, created_at)
    SELECT nextval('operations_feedentry_pos_seq'), %(org)s, 'record', 'work_order',
        {_RECORD}, %(user)s, NULL, NULL, {_OP}, {_AT}
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
"""
_SEED_SQL = (_OPS_SQL, _EVENTS_SQL, _FEED_SQL)  # in the order of HISTORY


def _retention(conninfo: str, months: list[datetime]) -> dict[str, Any]:
    from django.conf import settings
    from django.utils import timezone

    from operations.partitions import HISTORY, next_month
    from operations.services import history_compact

    now = timezone.now()
    # Only the oldest seeded month wholly past the horizon.
    settings.SYNC_RETENTION_DAYS = int((now - next_month(months[0])).total_seconds() // 86400)
    with psycopg.connect(conninfo, autocommit=True) as conn:

        def counts() -> dict[str, int]:
            return {
                h.table: int(
                    (conn.execute(f"SELECT count(*) FROM {h.table}").fetchone() or (0,))[0]
                )
                for h in HISTORY
            }

        before = counts()
        began = time.perf_counter()
        history_compact(now)
        seconds = time.perf_counter() - began
        after = counts()
    return {
        "seconds": seconds,
        "dropped": {table: before[table] - after[table] for table in before},
        "month": months[0],
    }


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.2f} ms"


def render(
    syncs: int,
    events: int,
    sizes: dict[str, int],
    seeded_in: float,
    before: Meter,
    after: Meter,
    retention: dict[str, Any],
    months: list[datetime],
) -> str:
    lines = [
        f"Commit {git_commit()}; {syncs} syncs before and {syncs} after (5 ops each), in one "
        "process against the bench's Postgres (bench/history.py). Figures are medians of the "
        "wall time per sync, this process' CPU plus Postgres' part.",
        "",
        f"History seeded: {', '.join(f'{t} {n:,} rows' for t, n in sizes.items())} "
        f"({events:,} of each seeded over {months[0]:%Y-%m} to {months[-1]:%Y-%m}, "
        f"in {seeded_in:.0f} s).",
        "",
        "| part | empty history | with history | after/before | of which this process' CPU"
        " before / after | queries before/after |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for part in PARTS:
        b, a = statistics.median(before.wall[part]), statistics.median(after.wall[part])
        cb, ca = statistics.median(before.cpu[part]), statistics.median(after.cpu[part])
        qb, qa = statistics.median(before.queries[part]), statistics.median(after.queries[part])
        lines.append(
            f"| {part} | {b * 1000:.2f} ms | {a * 1000:.2f} ms | {a / b:.2f} | "
            f"{cb * 1000:.2f} / {ca * 1000:.2f} ms | {qb:.0f} / {qa:.0f} |"
        )
    dropped = ", ".join(f"{t} {n:,}" for t, n in retention["dropped"].items())
    lines += [
        "",
        f"Retention of {retention['month']:%Y-%m} (the oldest month, alone past the horizon): "
        f"**{retention['seconds']:.1f} s** for one `history_compact()` run, rows gone: "
        f"{dropped} (the event log is kept by default: SYNC_EVENT_RETENTION_DAYS). The feed "
        "keeps each record's latest entry (none here: every seeded record has later ones).",
    ]
    return "\n".join(lines)


def main() -> int:
    report: dict[str, object] = {}
    run(report)
    print(report["history"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
