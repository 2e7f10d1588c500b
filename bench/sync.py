"""Benchmark of the sync core, each figure beside its raw floor from the same run.

1. Push ingest: 4 clients, each its own device and token, push batches of 100 ops for records
   the server doesn't have yet, through a real gunicorn. Floor: the same rows inserted into
   operations_operation with psycopg `executemany … ON CONFLICT DO NOTHING`, batches of 100,
   4 connections (then deleted again). No Celery worker runs meanwhile, so the ops pile up.
2. Apply: those ops are the work. 2 Celery worker processes start, every device is rung, and
   the clock runs until none of them is pending. Floor: a raw per-op loop (SELECT … FOR UPDATE
   the record, UPDATE it, INSERT an event, UPDATE the op; one transaction per op) over the
   same ops from 2 connections, against scratch tables.
3. Latency: with the workers running, 10 devices push 10 ops each at a steady 200 ops/s. An
   op's latency runs from the moment its push is sent to the moment its outcome first shows
   in the change feed that pull reads, polled straight from Postgres every 10 ms: what a
   client pulling in a tight loop would see at best, without the load of pulling over HTTP.

Ingest and apply run as BENCH_SYNC_PAIRS (default 3) interleaved floor/ours pairs (floor,
ours, floor, ours, …): each ratio reported is the median of the pairs' ratios, with their
spread, since a floor measured once on a shared machine swings by a factor of two.

`make bench` runs it; `BENCH_SYNC_BATCHES` (timed batches per client and pair, default 60),
`BENCH_SYNC_PAIRS` and `BENCH_SYNC_LATENCY_SECONDS` (default 20) shorten it for a quick
check. The bench database keeps earlier runs' data (each run has its own organisation); drop
it for a pristine run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import psutil  # type: ignore[import-untyped]
import psycopg
import urllib3

from bench.floors import FloorOp, OpRow, apply_floor, ingest_floor
from bench.measure import (
    CpuMeter,
    CpuUse,
    percentile,
    postgres_processes,
    postgres_server,
    process_tree,
    timed_threads,
)
from bench.processes import (
    ROOT,
    Child,
    Children,
    free_port,
    git_commit,
    other_celery_workers,
    setup_django,
    start_celery_worker,
    start_gunicorn,
)

T = TypeVar("T")
PUSH = "/api/v1/sync/push"
CLIENT_TIME = "2026-11-23T08:00:00Z"
PRIORITIES = ("low", "normal", "high", "urgent")
STATUSES = ("scheduled", "en_route", "on_site", "on_hold")
# Floor rows reuse the real ops' devices, so their seqs are moved out of the way.
FLOOR_SEQ_OFFSET = 10**12
OBSERVER_POLL = 0.01
LOGS = ROOT / ".data" / "bench-sync"
HTTP_TIMEOUT = urllib3.Timeout(connect=5.0, read=120.0)


@dataclass(frozen=True)
class Plan:
    clients: int = 4
    batch: int = 100
    records_per_client: int = 50
    warmup_batches: int = 2
    timed_batches: int = 60
    pairs: int = 3
    workers: int = 2
    latency_rate: float = 200.0
    latency_ops_per_push: int = 10
    latency_devices: int = 10
    latency_seconds: float = 20.0
    apply_timeout: float = 180.0
    settle_timeout: float = 60.0
    ingest_target: float = 0.45
    apply_target: float = 0.80
    p99_target_ms: float = 100.0

    @classmethod
    def from_env(cls) -> Plan:
        return cls(
            timed_batches=int(os.environ.get("BENCH_SYNC_BATCHES", "60")),
            pairs=max(1, int(os.environ.get("BENCH_SYNC_PAIRS", "3"))),
            latency_seconds=float(os.environ.get("BENCH_SYNC_LATENCY_SECONDS", "20")),
        )

    @property
    def push_interval(self) -> float:
        """Seconds between two pushes of one latency device."""
        return self.latency_devices * self.latency_ops_per_push / self.latency_rate


def say(message: str) -> None:
    print(f"bench sync: {message}", file=sys.stderr, flush=True)


# ============================================================================================
# Clients
# ============================================================================================
@dataclass(eq=False)
class Phone:
    """A client install: its token, device id, seq counter, and the version it last saw of
    each record it writes. It does not pull meanwhile, so that is the base_version of all its
    updates; a device's own earlier ops never make its later ones concurrent."""

    user_id: int
    token: str
    port: int
    device_id: uuid.UUID = field(default_factory=uuid.uuid4)
    seq: int = 0
    versions: dict[uuid.UUID, int] = field(default_factory=dict)
    http: urllib3.HTTPConnectionPool = field(init=False)

    def __post_init__(self) -> None:
        self.http = urllib3.HTTPConnectionPool(
            "127.0.0.1", self.port, maxsize=1, retries=False, timeout=HTTP_TIMEOUT
        )

    def create(self) -> dict[str, Any]:
        record_id = uuid.uuid4()
        self.versions[record_id] = 1
        n = self._next()
        fields = {
            "title": f"Boiler service #{n}",
            "description": "Annual service; customer reports low pressure after 6 pm.",
            "address": f"{n} Harbour Street, Leith",
            "customer_name": "Morag Campbell",
            "customer_phone": "+44 131 496 0000",
            "priority": PRIORITIES[n % 4],
            "scheduled_start": "2026-11-24T09:00:00Z",
        }
        return self._op(n, "create", record_id, 0, fields)

    def update(self, record_id: uuid.UUID) -> dict[str, Any]:
        n = self._next()
        fields: dict[str, Any] = {
            "technician_notes": f"Visit {n}: replaced the valve, pressure steady at 1.4 bar."
        }
        if n % 3 == 0:
            fields["status"] = STATUSES[n % 4]
        if n % 5 == 0:
            fields["arrived_at"] = "2026-11-24T09:12:00Z"
        return self._op(n, "update", record_id, self.versions[record_id], fields)

    def body(self, ops: list[dict[str, Any]]) -> bytes:
        return json.dumps({"device_id": str(self.device_id), "ops": ops}).encode()

    def push(self, body: bytes) -> bytes:
        response = self.http.request(
            "POST",
            PUSH,
            body=body,
            headers={"Content-Type": "application/json", "Authorization": f"Token {self.token}"},
        )
        if response.status != 200:
            raise RuntimeError(f"push answered {response.status}: {response.data[:500]!r}")
        return response.data

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def _op(
        self, seq: int, action: str, record_id: uuid.UUID, base: int, fields: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "op_id": str(uuid.uuid4()),
            "seq": seq,
            "entity": "work_order",
            "entity_id": str(record_id),
            "action": action,
            "base_version": base,
            "fields": fields,
            "client_time": CLIENT_TIME,
        }


def statuses(responses: Sequence[bytes]) -> Counter[str]:
    return Counter(r["status"] for body in responses for r in json.loads(body)["results"])


# ============================================================================================
# Results
# ============================================================================================
@dataclass
class Ingest:
    ops: int
    accepted: int
    ours: float
    floor: float
    not_accepted: Counter[str]
    cpu: CpuUse
    floor_cpu: CpuUse


@dataclass
class Apply:
    ops: int
    ours: float
    floor: float
    outcomes: Counter[str]
    cpu: CpuUse
    floor_cpu: CpuUse


@dataclass
class Latency:
    ops: int
    rate: float
    latencies: list[float]
    push_rtts: list[float]
    server: list[float]
    outcomes: Counter[str]
    late_pushes: int
    cpu: CpuUse


@dataclass
class Machine:
    cores: int
    postgres: str
    synchronous_commit: str
    date: str
    commit: str
    web: str
    foreign_workers: list[str]


# ============================================================================================
# The benchmark
# ============================================================================================
class SyncBench:
    def __init__(self, plan: Plan, children: Children, conninfo: str, database: str) -> None:
        self.plan = plan
        self.children = children
        self.conninfo = conninfo
        self.port = free_port()
        self.web: Child | None = None
        self.worker: Child | None = None
        self.worker_name = f"benchsync{os.getpid()}@{socket.gethostname()}"
        self.organization_id = 0
        self.ingest_phones: list[Phone] = []
        self.latency_phones: list[Phone] = []
        self.foreign_workers: list[str] = []
        self._observer_ready = threading.Event()
        self._observer_error: Exception | None = None
        postmaster = postgres_server(conninfo)
        self.meter = CpuMeter(
            {
                "bench client": lambda: [psutil.Process()],
                "gunicorn": lambda: process_tree(self.web.process.pid) if self.web else [],
                "celery": lambda: process_tree(self.worker.process.pid) if self.worker else [],
                "postgres": lambda: postgres_processes(postmaster, database) if postmaster else [],
            }
        )

    # --- set-up ---------------------------------------------------------------------------
    def setup(self) -> None:
        from accounts.services import device_claim, field_user_create, token_issue

        stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:6]
        users = [
            field_user_create(
                f"bench-sync-{stamp}", "dispatcher", f"bench-{stamp}-{i}", "pw-bench-1"
            )
            for i in range(self.plan.clients)
        ]
        assert users[0].organization_id is not None
        self.organization_id = users[0].organization_id
        for i in range(self.plan.clients):
            self.ingest_phones.append(Phone(users[i].pk, token_issue(users[i]), self.port))
        for i in range(self.plan.latency_devices):
            user = users[i % len(users)]
            self.latency_phones.append(Phone(user.pk, token_issue(user), self.port))
        for phone in [*self.ingest_phones, *self.latency_phones]:
            device_claim(next(u for u in users if u.pk == phone.user_id), phone.device_id)

    def start_web(self) -> None:
        self.web = start_gunicorn(self.children, self.port)

    def check_foreign_workers(self) -> None:
        """Note Celery workers other than ours on this broker: they take our rings (another
        benchmark run at the same time, say), and the apply figures are then not ours."""
        for name in other_celery_workers(self.worker_name):
            if name not in self.foreign_workers:
                say(f"another Celery worker shares this broker: {name}")
                self.foreign_workers.append(name)

    def start_workers(self) -> None:
        from syncserver.celery import app

        self.check_foreign_workers()
        # Rings from the ingest (and any left by an earlier run) must not start the apply early.
        app.control.purge()
        self.worker = start_celery_worker(self.children, self.worker_name, self.plan.workers)

    def stop_workers(self) -> None:
        if self.worker is not None:
            self.children.stop(self.worker)
            self.worker = None

    # --- 1. ingest ------------------------------------------------------------------------
    def ingest(self) -> Ingest:
        from operations.validation import content_hash

        plan = self.plan
        batches = {phone: self._ingest_batches(phone) for phone in self.ingest_phones}
        warmup = {p: [p.body(b) for b in bs[: plan.warmup_batches]] for p, bs in batches.items()}
        timed = {p: bs[plan.warmup_batches :] for p, bs in batches.items()}
        bodies = {p: [p.body(b) for b in bs] for p, bs in timed.items()}

        say("ingest floor: raw executemany of the same rows")
        now = datetime.now(UTC)
        rows = {
            p: [
                [self._floor_row(p, op, now, content_hash(p.device_id, op)) for op in b] for b in bs
            ]
            for p, bs in timed.items()
        }
        self.meter.start()
        floor = ingest_floor(self.conninfo, list(rows.values()))
        floor_cpu = self.meter.stop()
        self._delete_ops([row[0] for bs in rows.values() for b in bs for row in b])

        say("ingest: warm-up pushes")
        self._push_all(warmup)
        say("ingest: timed pushes")
        self.meter.start()
        responses, elapsed = self._push_all(bodies)
        cpu = self.meter.stop()
        counts = statuses([r for rs in responses for r in rs])
        ops = sum(len(b) for bs in timed.values() for b in bs)
        not_accepted = Counter({k: v for k, v in counts.items() if k != "accepted"})
        accepted = counts["accepted"]
        return Ingest(ops, accepted, accepted / elapsed, floor, not_accepted, cpu, floor_cpu)

    def _ingest_batches(self, phone: Phone) -> list[list[dict[str, Any]]]:
        """The phone's first ops create its records and update each once (the first batch
        when there are 50); the rest are updates, round robin over its records. Later pairs
        only update."""
        plan = self.plan
        ops = []
        if not phone.versions:
            ops = [phone.create() for _ in range(plan.records_per_client)]
            ops += [phone.update(r) for r in list(phone.versions)]
        records = list(phone.versions)
        total = plan.batch * (plan.warmup_batches + plan.timed_batches)
        ops += [phone.update(records[i % len(records)]) for i in range(total - len(ops))]
        return [ops[i : i + plan.batch] for i in range(0, total, plan.batch)]

    def _floor_row(self, phone: Phone, op: dict[str, Any], now: datetime, digest: str) -> OpRow:
        return (
            uuid.uuid4(), phone.device_id, self.organization_id, phone.user_id,
            op["seq"] + FLOOR_SEQ_OFFSET, op["entity"], uuid.UUID(op["entity_id"]), op["action"],
            op["base_version"], json.dumps(op["fields"]), datetime.fromisoformat(CLIENT_TIME),
            digest, now, "pending", False, "", "", "[]", "[]", None,
        )  # fmt: skip

    def _delete_ops(self, op_ids: list[uuid.UUID]) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute("DELETE FROM operations_operation WHERE op_id = ANY(%s)", (op_ids,))
            conn.execute("VACUUM ANALYZE operations_operation")

    def _push_all(self, bodies: dict[Phone, list[bytes]]) -> tuple[list[list[bytes]], float]:
        def task(phone: Phone, mine: list[bytes]) -> Callable[[Callable[[], object]], list[bytes]]:
            def work(go: Callable[[], object]) -> list[bytes]:
                go()
                return [phone.push(body) for body in mine]

            return work

        return timed_threads([task(p, b) for p, b in bodies.items()], timeout=300.0)

    # --- 2. apply -------------------------------------------------------------------------
    def apply(self) -> Apply:
        from common.doorbell import ring
        from operations.models import Operation, OpStatus
        from operations.services import DRAIN_TASK

        device_ids = [phone.device_id for phone in self.ingest_phones]
        pending = list(
            Operation.objects.filter(device_id__in=device_ids, status=OpStatus.PENDING)
            .order_by("device_id", "seq")
            .values_list("op_id", "device_id", "entity_id", "fields")
        )
        say(f"apply floor: raw lock-update-insert loop over {len(pending)} ops")
        lanes: list[list[FloorOp]] = [[] for _ in range(self.plan.workers)]
        for op_id, device_id, entity_id, fields in pending:
            assert entity_id is not None
            lanes[device_ids.index(device_id) % self.plan.workers].append(
                FloorOp(op_id, entity_id, fields)
            )
        self.meter.start()
        floor = apply_floor(self.conninfo, lanes)
        floor_cpu = self.meter.stop()

        say("apply: starting Celery workers")
        self.start_workers()
        say(f"apply: ringing a drain, waiting for {len(pending)} ops")
        left = Operation.objects.filter(device_id__in=device_ids, status=OpStatus.PENDING)
        self.meter.start()
        began = time.perf_counter()
        ring(DRAIN_TASK)
        deadline = time.monotonic() + self.plan.apply_timeout
        while left.exists():
            assert self.worker is not None
            self.worker.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"apply: {left.count()} ops still pending after the timeout")
            time.sleep(0.05)
        elapsed = time.perf_counter() - began
        cpu = self.meter.stop()
        self.check_foreign_workers()
        self.stop_workers()  # the next pair's ingest piles ops up again
        outcomes = Counter(
            Operation.objects.filter(op_id__in=[p[0] for p in pending]).values_list(
                "status", flat=True
            )
        )
        return Apply(len(pending), len(pending) / elapsed, floor, outcomes, cpu, floor_cpu)

    # --- 3. latency -----------------------------------------------------------------------
    def latency(self) -> Latency:
        from operations.models import Operation
        from workorders.models import WorkOrder

        plan = self.plan
        records = [r for phone in self.ingest_phones for r in phone.versions]
        current = dict(WorkOrder.objects.filter(pk__in=records).values_list("pk", "version"))
        phones = self.latency_phones
        for i, record in enumerate(records):
            phones[i % len(phones)].versions[record] = current[record]
        pushes = int(plan.latency_seconds / plan.push_interval)
        scripts = {phone: self._latency_pushes(phone, pushes) for phone in phones}

        inflight: dict[uuid.UUID, float] = {}
        latencies: list[float] = []
        rtts: list[float] = []
        sent: list[float] = []
        lock = threading.Lock()
        done = threading.Event()
        epoch = 0.0
        late = 0

        def pusher(index: int, phone: Phone) -> Callable[[Callable[[], object]], int]:
            def work(go: Callable[[], object]) -> int:
                nonlocal late
                go()
                offset = index * plan.push_interval / len(phones)
                for k, (op_ids, body) in enumerate(scripts[phone]):
                    wait = epoch + offset + k * plan.push_interval - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    started = time.perf_counter()
                    with lock:
                        late += wait < -plan.push_interval / 2
                        inflight.update(dict.fromkeys(op_ids, started))
                        sent.append(started)
                    answer = phone.push(body)
                    if statuses([answer])["accepted"] != len(op_ids):
                        raise RuntimeError(f"latency push not all accepted: {answer[:300]!r}")
                    with lock:
                        rtts.append(time.perf_counter() - started)
                return len(scripts[phone])

            return work

        observer = threading.Thread(
            target=self._observe_safely, args=(inflight, latencies, lock, done), daemon=True
        )
        say(f"latency: {plan.latency_rate:.0f} ops/s for {plan.latency_seconds:.0f} s")
        self.meter.start()
        observer.start()
        if not self._observer_ready.wait(10.0):
            raise TimeoutError("latency: the feed observer did not start")
        epoch = time.perf_counter() + 0.5
        try:
            timed_threads([pusher(i, p) for i, p in enumerate(phones)], timeout=300.0)
        finally:
            done.set()
            observer.join(plan.settle_timeout + 5)
        cpu = self.meter.stop()
        self.check_foreign_workers()
        if self._observer_error is not None:
            raise self._observer_error
        if inflight:
            raise TimeoutError(f"latency: {len(inflight)} ops not finished in time")
        op_ids = [op_id for script in scripts.values() for ids, _ in script for op_id in ids]
        rows = list(
            Operation.objects.filter(op_id__in=op_ids).values_list(
                "status", "received_at", "finished_at"
            )
        )
        server = [(f - r).total_seconds() for _, r, f in rows if f is not None]
        ops = len(op_ids)
        rate = ops / max(sent[-1] - sent[0] + plan.push_interval / len(phones), 1e-9)
        outcomes = Counter(status for status, _, _ in rows)
        return Latency(ops, rate, latencies, rtts, server, outcomes, late, cpu)

    def _latency_pushes(self, phone: Phone, pushes: int) -> list[tuple[list[uuid.UUID], bytes]]:
        records = list(phone.versions)
        script = []
        for k in range(pushes):
            n = self.plan.latency_ops_per_push
            ops = [phone.update(records[(k * n + i) % len(records)]) for i in range(n)]
            script.append(([uuid.UUID(op["op_id"]) for op in ops], phone.body(ops)))
        return script

    def _observe_safely(self, *args: Any) -> None:
        try:
            self._observe(*args)
        except Exception as error:  # noqa: BLE001 - raised again in the main thread
            self._observer_error = error

    def _observe(
        self,
        inflight: dict[uuid.UUID, float],
        latencies: list[float],
        lock: threading.Lock,
        done: threading.Event,
    ) -> None:
        """Follow the organisation's change feed as pull reads it, from where it stands now,
        and note when each in-flight op's outcome first shows. Feed positions become visible
        in commit order, so a cursor on them misses nothing and each poll reads only new rows.
        """
        query = (
            "SELECT pos, op_id FROM operations_feedentry "
            "WHERE organization_id = %s AND pos > %s AND kind = 'outcome' ORDER BY pos"
        )
        deadline: float | None = None
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT coalesce(max(pos), 0) FROM operations_feedentry").fetchone()
            cursor = row[0] if row else 0
            self._observer_ready.set()
            while True:
                rows = conn.execute(query, (self.organization_id, cursor)).fetchall()
                seen = time.perf_counter()
                with lock:
                    for pos, op_id in rows:
                        cursor = pos
                        if op_id in inflight:
                            latencies.append(seen - inflight.pop(op_id))
                    waiting = len(inflight)
                if done.is_set():
                    deadline = deadline or time.monotonic() + self.plan.settle_timeout
                    if not waiting or time.monotonic() > deadline:
                        return
                time.sleep(OBSERVER_POLL)

    # --- context --------------------------------------------------------------------------
    def machine(self) -> Machine:
        with psycopg.connect(self.conninfo) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            sync = conn.execute("SHOW synchronous_commit").fetchone()
        web = (
            f"gunicorn {os.environ.get('WEB_CONCURRENCY', '2')} gthread workers of "
            f"{os.environ.get('WEB_THREADS', '64')} threads"
        )
        return Machine(
            cores=os.cpu_count() or 0,
            postgres=str(version[0] if version else "?"),
            synchronous_commit=str(sync[0] if sync else "?"),
            date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            commit=git_commit(),
            web=web,
            foreign_workers=self.foreign_workers,
        )


# ============================================================================================
# Entry point
# ============================================================================================
def run(report: dict[str, object]) -> None:
    plan = Plan.from_env()
    say("migrating the bench database")
    database, conninfo = setup_django()
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    try:
        with Children(dict(os.environ), LOGS) as children:
            bench = SyncBench(plan, children, conninfo, database)
            bench.setup()
            say("starting gunicorn")
            bench.start_web()
            ingests: list[Ingest] = []
            applies: list[Apply] = []
            for pair in range(1, plan.pairs + 1):
                say(f"pair {pair} of {plan.pairs}")
                ingest = bench.ingest()
                say(f"ingest: {ingest.ours:,.0f} ops/s, floor {ingest.floor:,.0f} ops/s")
                ingests.append(ingest)
                applied = bench.apply()
                say(f"apply: {applied.ours:,.0f} ops/s, floor {applied.floor:,.0f} ops/s")
                applies.append(applied)
            bench.start_workers()
            latency = bench.latency()
            say(f"latency: p99 {percentile(latency.latencies, 0.99) * 1000:.0f} ms")
            report["sync"] = render(plan, bench.machine(), ingests, applies, latency)
    finally:
        say(f"server logs in {LOGS.relative_to(ROOT)}/")


# ============================================================================================
# Report
# ============================================================================================
def _ratios(results: Sequence[Ingest | Apply]) -> list[float]:
    return [r.ours / r.floor for r in results]


def _median_of(results: Sequence[T]) -> T:
    """The pair whose ratio is the median (its CPU figures stand for the run)."""
    ranked = sorted(results, key=lambda r: r.ours / r.floor)  # type: ignore[attr-defined]
    return ranked[len(ranked) // 2]


def _pairs(results: Sequence[Ingest | Apply]) -> str:
    return ", ".join(f"{r.floor:,.0f} → {r.ours:,.0f} ({r.ours / r.floor:.0%})" for r in results)


def render(
    plan: Plan,
    machine: Machine,
    ingests: Sequence[Ingest],
    applies: Sequence[Apply],
    latency: Latency,
) -> str:
    p50 = percentile(latency.latencies, 0.50) * 1000
    p99 = percentile(latency.latencies, 0.99) * 1000
    ingest_ratios, apply_ratios = _ratios(ingests), _ratios(applies)
    ingest_ratio, apply_ratio = statistics.median(ingest_ratios), statistics.median(apply_ratios)
    ingest, apply = _median_of(ingests), _median_of(applies)

    def spread(ratios: list[float]) -> str:
        return f"{min(ratios):.0%} to {max(ratios):.0%}"

    table = [
        f"| metric | ours | floor | ratio (median of {len(ingests)} pairs; min to max) | target "
        "| met? |",
        "|---|---:|---:|---:|---|---|",
        f"| push ingest, accepted ops/s ({plan.clients} clients, batches of {plan.batch}) "
        f"| {statistics.median(i.ours for i in ingests):,.0f} "
        f"| {statistics.median(i.floor for i in ingests):,.0f} "
        f"| {ingest_ratio:.0%} ({spread(ingest_ratios)}) "
        f"| ≥ {plan.ingest_target:.0%} of floor | {_met(ingest_ratio >= plan.ingest_target)} |",
        f"| apply, ops/s ({plan.workers} worker processes) "
        f"| {statistics.median(a.ours for a in applies):,.0f} "
        f"| {statistics.median(a.floor for a in applies):,.0f} "
        f"| {apply_ratio:.0%} ({spread(apply_ratios)}) "
        f"| ≥ {plan.apply_target:.0%} of floor | {_met(apply_ratio >= plan.apply_target)} |",
        f"| push→applied p50 at {latency.rate:.0f} ops/s | {p50:,.0f} ms | | | | |",
        f"| push→applied p99 at {latency.rate:.0f} ops/s | {p99:,.0f} ms | | "
        f"| < {plan.p99_target_ms:.0f} ms | {_met(p99 < plan.p99_target_ms)} |",
        "",
        f"Pairs in the order run, floor → ours ops/s: ingest {_pairs(ingests)}; apply "
        f"{_pairs(applies)}. The notes and CPU figures below are the median pair's.",
    ]
    lines = [
        f"Run {machine.date} on {machine.cores} cores, Postgres {machine.postgres} "
        f"(synchronous_commit {machine.synchronous_commit}), {machine.web}, "
        f"commit {machine.commit}. Client, servers and Postgres share the machine.",
        "",
        *table,
        "",
        *_notes(plan, ingest, apply, latency),
        "",
        "CPU seconds by process during each timed phase (`other` is everything else on the "
        "machine: a figure from a busy machine is not one to keep):",
        "",
        "| phase | wall s | bench client | gunicorn | celery | postgres | other | machine busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        _cpu_row("ingest floor (raw)", ingest.floor_cpu, machine.cores),
        _cpu_row("ingest (HTTP push)", ingest.cpu, machine.cores),
        _cpu_row("apply floor (raw)", apply.floor_cpu, machine.cores),
        _cpu_row("apply (Celery)", apply.cpu, machine.cores),
        _cpu_row("latency run", latency.cpu, machine.cores),
        "",
        _cpu_per_op(ingest, apply),
    ]
    warnings = _warnings(machine, ingest, apply, latency)
    if warnings:
        lines += ["", *(f"**Warning:** {w}" for w in warnings)]
    return "\n".join(lines)


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _notes(plan: Plan, ingest: Ingest, apply: Apply, latency: Latency) -> list[str]:
    ms = [x * 1000 for x in latency.push_rtts]
    server = [x * 1000 for x in latency.server]
    return [
        f"- **Ingest**: {ingest.ops:,} ops in timed pushes ({plan.timed_batches} per client, "
        f"after {plan.warmup_batches} warm-up pushes each), dispatcher devices updating "
        f"{plan.records_per_client} work orders each that the server has not applied yet (the "
        "first warm-up push creates them). Floor: the same rows, `executemany … ON CONFLICT "
        f"DO NOTHING` into operations_operation, batches of {plan.batch} per transaction, "
        f"{plan.clients} connections.",
        f"- **Apply**: the {apply.ops:,} pending ops of the {plan.clients} ingest devices, "
        f"{plan.clients * plan.records_per_client} records; timed from the rings until none "
        "is pending. Floor: per op SELECT … FOR UPDATE the record, UPDATE it, INSERT an event, "
        f"UPDATE the op, one transaction per op, {plan.workers} connections, scratch tables. "
        f"Outcomes: {_counts(apply.outcomes)}.",
        f"- **Latency**: {latency.ops:,} update ops from {plan.latency_devices} devices, "
        f"{plan.latency_ops_per_push} per push, scheduled at {plan.latency_rate:.0f} ops/s "
        f"(achieved {latency.rate:.0f}) for {plan.latency_seconds:.0f} s with the workers "
        "running. Latency = from sending the push to the op's outcome first showing in the "
        "change feed that pull reads (committed), polled straight from Postgres every "
        f"{OBSERVER_POLL * 1000:.0f} ms. Push round "
        f"trip p50/p99 {percentile(ms, 0.5):.0f}/{percentile(ms, 0.99):.0f} ms; "
        "received_at→finished_at on the server p50/p99 "
        f"{percentile(server, 0.5):.0f}/{percentile(server, 0.99):.0f} ms; max "
        f"{max(latency.latencies) * 1000:.0f} ms. Outcomes: {_counts(latency.outcomes)}.",
    ]


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counter.most_common()) or "none"


def _cpu_row(phase: str, use: CpuUse, cores: int) -> str:
    groups = [use.by_group.get(g, 0.0) for g in ("bench client", "gunicorn", "celery", "postgres")]
    busy = use.machine / (use.wall * cores) if use.wall and cores else 0.0
    cells = " | ".join(f"{x:.1f}" for x in [*groups, use.other])
    return f"| {phase} | {use.wall:.1f} | {cells} | {busy:.0%} |"


def _busiest(use: CpuUse, group: str, count: int) -> str:
    """CPU seconds of a group's `count` busiest processes, e.g. "4.1 / 0.9"."""
    return " / ".join(f"{x:.1f}" for x in use.by_process.get(group, [])[:count])


def _cpu_per_op(ingest: Ingest, apply: Apply) -> str:
    def us(use: CpuUse, group: str, ops: int) -> str:
        return f"{use.by_group.get(group, 0.0) / ops * 1e6:,.0f} µs"

    return (
        f"CPU per op: ingest {us(ingest.cpu, 'gunicorn', ingest.accepted)} in gunicorn + "
        f"{us(ingest.cpu, 'postgres', ingest.accepted)} in Postgres (floor: "
        f"{us(ingest.floor_cpu, 'bench client', ingest.ops)} client + "
        f"{us(ingest.floor_cpu, 'postgres', ingest.ops)} Postgres); apply "
        f"{us(apply.cpu, 'celery', apply.ops)} in Celery + "
        f"{us(apply.cpu, 'postgres', apply.ops)} in Postgres (floor: "
        f"{us(apply.floor_cpu, 'bench client', apply.ops)} client + "
        f"{us(apply.floor_cpu, 'postgres', apply.ops)} Postgres). CPU seconds of the busiest "
        f"gunicorn processes in the ingest: {_busiest(ingest.cpu, 'gunicorn', 2)} (a keep-alive "
        "connection stays with the worker that accepted it); of the busiest Celery processes "
        f"in the apply: {_busiest(apply.cpu, 'celery', 2)}."
    )


def _warnings(machine: Machine, ingest: Ingest, apply: Apply, latency: Latency) -> list[str]:
    found = []
    if machine.foreign_workers:
        found.append(
            f"other Celery workers shared the broker and took some of our rings: "
            f"{', '.join(machine.foreign_workers)}; the apply and latency figures are not ours"
        )
    if ingest.not_accepted:
        found.append(f"ingest pushes not all accepted: {_counts(ingest.not_accepted)}")
    if set(apply.outcomes) != {"applied"} or set(latency.outcomes) != {"applied"}:
        found.append("some ops were not applied cleanly (see outcomes)")
    if latency.late_pushes:
        found.append(f"{latency.late_pushes} latency pushes went out late (client overloaded)")
    for phase, use in (("ingest", ingest.cpu), ("apply", apply.cpu), ("latency", latency.cpu)):
        if use.other > 0.25 * use.wall * machine.cores:
            found.append(
                f"other processes used {use.other:.1f} CPU-s during the {phase} phase "
                f"({use.other / (use.wall * machine.cores):.0%} of the machine): rerun it quiet"
            )
    return found
