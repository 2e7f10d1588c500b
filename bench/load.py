"""Load and soak: N simulated phones syncing on a phone-like schedule, against the servers as
production runs them (gunicorn from gunicorn.conf.py, one Celery worker of 2 processes).

For each device count N (BENCH_LOAD_DEVICES, default 200,500,800), in an organisation of its
own:

1. Set-up, untimed: N technicians, each with a token and a phone (device) of their own, and a
   dispatcher who pushes their work orders through the API (3 each, with 3 checklist items
   each); the workers apply them all; then every phone makes its first pull.
2. Timed window of BENCH_LOAD_SECONDS (default 60): every phone syncs about every
   BENCH_LOAD_INTERVAL seconds (± 30%; its first sync at a random point of the first
   interval). A sync opens a connection (gunicorn drops idle keep-alive connections after
   2 s, so a phone holds none between syncs), pushes 1-10 ops (technician notes, checklist
   items ticked or unticked, status changes, new comments) unless it is one of the quarter of
   syncs that only pull, then pulls from its cursor until has_more is false. Ops a push did not
   get accepted stay in the phone's outbox and go again next time. A sync that falls due while
   the last one runs starts when that one ends: a phone never runs two at once, so an
   overloaded server is offered fewer syncs, as real phones would offer it.
3. Drain: the syncs under way finish, and the clock runs until no op of the organisation is
   pending. Time to applied runs from sending an op's first push to its outcome showing,
   committed, in the change feed that pull reads, polled straight from Postgres every 20 ms
   for every op (what a phone pulling in a tight loop would see at best).

The servers run through all steps: later steps meet a server that has already served the
earlier ones (threads, connections, a bigger database), as a long-running one would.

The generator is this one process: asyncio with a minimal HTTP/1.1 client over asyncio
streams, its CPU measured like the servers'. The event loop's lateness is sampled too: when it
grows, the generator itself was short of CPU, and every client-side latency includes that.
Server-side request times from gunicorn's access log and the apply tasks' times from Celery's
log separate the servers' own time from waiting.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import shutil
import socket
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import psutil  # type: ignore[import-untyped]
import psycopg
import redis

from bench.measure import (
    CpuMeter,
    CpuUse,
    listening_process,
    percentile,
    postgres_processes,
    postgres_server,
    process_tree,
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

PUSH = "/api/v1/sync/push"
PULL = "/api/v1/sync/pull"
LOGS = ROOT / ".data" / "bench-load"
PLOT = ROOT / "docs" / "bench-load.png"
PASSWORD = "pw-bench-load-1"
CLIENT_TIME = "2026-11-23T08:00:00Z"
STATUSES = ("en_route", "on_site", "on_hold", "scheduled", "completed")
# What a phone's push carries, with weights: mostly notes and ticks, some comments.
EDITS = ("notes", "tick", "status", "comment")
EDIT_WEIGHTS = (35, 30, 15, 20)
SETUP_BATCH = 500  # the most ops a push may carry
SETUP_PULLS_AT_ONCE = 20
OBSERVER_POLL = 0.02
LAG_TICK = 0.05
SAMPLE_EVERY = 0.5
# The apply falls behind when pending ops grow by more than this share of the accepted rate.
BACKLOG_GROWTH_LIMIT = 0.05
# CPU groups, in the order the tables and the plot show them.
COMPONENTS = ("generator", "gunicorn", "celery", "postgres", "redis")
# The groups whose Postgres connections are counted per process (the servers).
SERVER_GROUPS = ("gunicorn", "celery")
ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>[^ ?]+)\S* HTTP/1\.1" (?P<status>\d{3}) ')
ACCESS_MS = re.compile(r" (?P<ms>\d+)ms ")
TASK_DONE = re.compile(
    r"apply_(?:pending|device)_ops_task\[[^\]]+\] succeeded in (?P<seconds>[0-9.]+)s: "
    r"(?P<finished>\d+)"
)


def say(message: str) -> None:
    print(f"bench load: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Plan:
    devices: tuple[int, ...] = (200, 500, 800)
    seconds: float = 60.0
    interval: float = 10.0
    jitter: float = 0.3
    pull_only: float = 0.25
    max_ops: int = 10
    work_orders: int = 3
    checklist_items: int = 3
    workers: int = 2
    request_timeout: float = 30.0
    setup_timeout: float = 300.0
    drain_timeout: float = 120.0
    seed: int = 20261123

    @classmethod
    def from_env(cls) -> Plan:
        devices = os.environ.get("BENCH_LOAD_DEVICES", "200,500,800")
        return cls(
            devices=tuple(int(n) for n in devices.split(",") if n.strip()),
            seconds=float(os.environ.get("BENCH_LOAD_SECONDS", "60")),
            interval=float(os.environ.get("BENCH_LOAD_INTERVAL", "10")),
        )

    def offered(self, devices: int) -> float:
        """Syncs per second that `devices` phones make when every sync starts on time."""
        return devices / self.interval


# ============================================================================================
# Clients
# ============================================================================================
class Http:
    """One phone's HTTP/1.1 connection, kept alive across the requests of one sync. Just
    enough of the protocol for our JSON API: Content-Length or chunked bodies."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        if self._reader is None or self._writer is None:
            await self.connect()
        assert self._reader is not None and self._writer is not None
        head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        head += f"Authorization: Token {self.token}\r\nContent-Length: {len(body)}\r\n"
        if body:
            head += "Content-Type: application/json\r\n"
        self._writer.write(head.encode() + b"\r\n" + body)
        await self._writer.drain()
        raw = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        if "content-length" in headers:
            data = await self._reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            data = await self._chunks(self._reader)
        else:
            data = await self._reader.read()
            headers["connection"] = "close"
        if headers.get("connection") == "close":
            self.close()
        return int(status_line.split(" ", 2)[1]), data

    @staticmethod
    async def _chunks(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return b"".join(parts)
            parts.append(chunk[:-2])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader, self._writer = None, None


@dataclass(eq=False)
class Phone:
    """A technician's phone: its token and device id, seq counter and pull cursor, what it
    knows of its records (each one's version as of its last pull), and its outbox."""

    token: str
    rng: random.Random
    device_id: uuid.UUID = field(default_factory=uuid.uuid4)
    seq: int = 0
    cursor: str | None = None
    versions: dict[uuid.UUID, int] = field(default_factory=dict)
    work_orders: list[uuid.UUID] = field(default_factory=list)
    ticked: dict[uuid.UUID, bool] = field(default_factory=dict)  # checklist item → done
    outbox: list[dict[str, Any]] = field(default_factory=list)

    def edit(self, count: int) -> None:
        """Make `count` new ops, as a technician at work would, into the outbox."""
        for kind in self.rng.choices(EDITS, EDIT_WEIGHTS, k=count):
            self.seq += 1
            work_order = self.rng.choice(self.work_orders)
            if kind == "notes":
                notes = f"Visit {self.seq}: replaced the valve, pressure steady at 1.4 bar."
                self._update("work_order", work_order, {"technician_notes": notes})
            elif kind == "status":
                status = STATUSES[self.seq % len(STATUSES)]
                self._update("work_order", work_order, {"status": status})
            elif kind == "tick":
                item = self.rng.choice(list(self.ticked))
                self.ticked[item] = not self.ticked[item]
                self._update("checklist_item", item, {"done": self.ticked[item]})
            else:
                body = f"Customer asked for a call back before the next visit ({self.seq})."
                fields = {"work_order_id": str(work_order), "body": body}
                self.outbox.append(self._op("comment", uuid.uuid4(), "create", 0, fields))

    def _update(self, entity: str, record: uuid.UUID, fields: dict[str, Any]) -> None:
        self.outbox.append(self._op(entity, record, "update", self.versions[record], fields))

    def _op(
        self, entity: str, record: uuid.UUID, action: str, base: int, fields: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "op_id": str(uuid.uuid4()),
            "seq": self.seq,
            "entity": entity,
            "entity_id": str(record),
            "action": action,
            "base_version": base,
            "fields": fields,
            "client_time": CLIENT_TIME,
        }

    def push_body(self) -> bytes:
        return json.dumps({"device_id": str(self.device_id), "ops": self.outbox}).encode()

    def pull_target(self) -> str:
        query = {"device_id": str(self.device_id)}
        if self.cursor:
            query["cursor"] = self.cursor
        return f"{PULL}?{urlencode(query)}"

    def learn(self, page: dict[str, Any]) -> None:
        """Take in a pull page: record versions, new work orders and checklist items."""
        self.cursor = page["cursor"]
        for change in page["changes"]:
            record = uuid.UUID(change["entity_id"])
            self.versions[record] = change["version"]
            if change["state"] != "live":
                continue
            if change["entity"] == "work_order" and record not in self.work_orders:
                self.work_orders.append(record)
            elif change["entity"] == "checklist_item" and record not in self.ticked:
                self.ticked[record] = bool(change["fields"]["done"])


@dataclass(frozen=True)
class Person:
    username: str
    token: str


# ============================================================================================
# What one step measured
# ============================================================================================
@dataclass
class Tally:
    """What the phones saw; client-side times in seconds."""

    push: list[float] = field(default_factory=list)
    pull: list[float] = field(default_factory=list)
    connect: list[float] = field(default_factory=list)
    sync: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    requests: int = 0
    syncs: int = 0
    late: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    pushed: Counter[str] = field(default_factory=Counter)
    first_sent: dict[uuid.UUID, float] = field(default_factory=dict)
    applied_after: dict[uuid.UUID, float] = field(default_factory=dict)


@dataclass
class Samples:
    """Sampled every SAMPLE_EVERY seconds of the timed window: peaks, and what the Postgres
    backends serving a request were doing (a poor man's wait-event profile)."""

    rss: dict[str, int] = field(default_factory=dict)  # group → largest process RSS, bytes
    postgres_connections: int = 0
    # The servers' own (gunicorn, celery): group → peak of all its processes' together, and
    # of the one process holding the most. One group's processes are one host's.
    connections: dict[str, int] = field(default_factory=dict)
    connections_per_process: dict[str, int] = field(default_factory=dict)
    gunicorn_threads: int = 0
    celery_queue: int = 0
    backends: Counter[str] = field(default_factory=Counter)
    pending: list[tuple[float, int]] = field(default_factory=list)  # (seconds, ops pending)

    def backlog_growth(self) -> float:
        """Ops per second by which the pending ops grew over the window (least squares)."""
        if len(self.pending) < 2:
            return 0.0
        seconds, pending = zip(*self.pending, strict=True)
        return statistics.linear_regression(seconds, pending).slope


@dataclass
class ServerTimes:
    """From the servers' own logs, over the timed window."""

    by_endpoint: dict[str, list[float]] = field(default_factory=dict)  # seconds
    statuses: Counter[str] = field(default_factory=Counter)
    tasks: list[float] = field(default_factory=list)  # apply task run times, seconds
    idle_tasks: int = 0  # apply tasks that found nothing pending (an earlier one took it)
    tracebacks: int = 0


@dataclass(frozen=True)
class Machine:
    description: str
    max_connections: int


@dataclass
class Step:
    devices: int
    seconds: float
    offered: float
    tally: Tally
    cpu: CpuUse
    samples: Samples
    server: ServerTimes
    backlog: int  # ops pending when the window closed
    queue: int  # Celery messages waiting when the window closed
    drained: float | None  # seconds after the window until nothing was pending
    outcomes: Counter[str]
    server_apply: list[float]  # received_at → finished_at on the server, seconds

    @property
    def accepted(self) -> int:
        return self.tally.pushed["accepted"]

    @property
    def applied(self) -> list[float]:
        return list(self.tally.applied_after.values())

    @property
    def failed_requests(self) -> int:
        return sum(self.tally.errors.values())

    @property
    def rejected_ops(self) -> int:
        return sum(n for key, n in self.tally.pushed.items() if key.startswith("rejected"))


# ============================================================================================
# Sampling
# ============================================================================================
class Sampler:
    """A thread that samples memory, threads, Postgres connections and the Celery queue:
    outside the event loop, so it does not delay the phones."""

    def __init__(self, groups: dict[str, Callable[[], Iterable[psutil.Process]]], conninfo: str):
        self.groups = groups
        self.conninfo = conninfo
        self.postgres_port = int(psycopg.conninfo.conninfo_to_dict(conninfo).get("port") or 5432)
        self.broker = redis.Redis.from_url(os.environ["REDIS_URL"])
        self.samples = Samples()
        self.organization_id = 0
        self._began = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, organization_id: int) -> None:
        self.samples = Samples()
        self.organization_id = organization_id
        self._began = time.perf_counter()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> Samples:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.samples

    def _run(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            while not self._stop.wait(SAMPLE_EVERY):
                self._sample(conn)

    def _sample(self, conn: psycopg.Connection[Any]) -> None:
        samples = self.samples
        for name, find in self.groups.items():
            for process in find():
                try:
                    rss = int(process.memory_info().rss)
                except psutil.Error:
                    continue
                samples.rss[name] = max(samples.rss.get(name, 0), rss)
        threads = 0
        for process in self.groups["gunicorn"]():
            try:
                threads += int(process.num_threads())
            except psutil.Error:
                continue
        samples.gunicorn_threads = max(samples.gunicorn_threads, threads)
        rows = conn.execute(_BACKENDS).fetchall()
        samples.postgres_connections = max(samples.postgres_connections, sum(n for _, n in rows))
        samples.backends.update({doing: n for doing, n in rows if doing != "idle"})
        self._sample_connections(conn)
        samples.celery_queue = max(samples.celery_queue, int(self.broker.llen("fieldsync")))
        row = conn.execute(_PENDING, (self.organization_id,)).fetchone()
        samples.pending.append((time.perf_counter() - self._began, row[0] if row else 0))

    def _sample_connections(self, conn: psycopg.Connection[Any]) -> None:
        """Each server process's connections to the bench database: its TCP connections to
        Postgres whose port a backend of the bench database names as its client's."""
        ports = {port for (port,) in conn.execute(_CLIENT_PORTS).fetchall()}
        samples = self.samples
        for group in SERVER_GROUPS:
            counts = [0]
            for process in self.groups[group]():
                try:
                    sockets = process.net_connections(kind="tcp")
                except psutil.Error:
                    continue
                counts.append(
                    sum(
                        1
                        for s in sockets
                        if s.raddr and s.raddr.port == self.postgres_port and s.laddr.port in ports
                    )
                )
            samples.connections[group] = max(samples.connections.get(group, 0), sum(counts))
            per_process = samples.connections_per_process
            per_process[group] = max(per_process.get(group, 0), *counts)


_CLIENT_PORTS = """
SELECT client_port FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND client_port IS NOT NULL
"""

# Each connection to the bench database but ours, by what it is doing: running on a CPU (or
# waiting for one), waiting for something (a lock, the WAL, ...), or idle in a transaction,
# which means waiting for the Python side of it.
_BACKENDS = """
SELECT CASE WHEN state = 'active' THEN coalesce(wait_event_type || ': ' || wait_event, 'on CPU')
            WHEN state LIKE 'idle in transaction%' THEN 'idle in transaction'
            ELSE 'idle' END,
       count(*)
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
GROUP BY 1
"""


_PENDING = (
    "SELECT count(*) FROM operations_operation WHERE organization_id = %s AND status = 'pending'"
)


def _log_offset(child: Child | None) -> int:
    return child.log.stat().st_size if child is not None else 0


def _log_slice(child: Child | None, start: int, end: int) -> list[str]:
    if child is None:
        return []
    with child.log.open("rb") as log:
        log.seek(start)
        return log.read(end - start).decode(errors="replace").splitlines()


def server_times(web_lines: list[str], worker_lines: list[str]) -> ServerTimes:
    times = ServerTimes()
    for line in web_lines:
        times.tracebacks += line.startswith("Traceback")
        request = ACCESS_LINE.search(line)
        duration = ACCESS_MS.search(line, request.end()) if request else None
        if request is None or duration is None:
            continue
        endpoint = f"{request['method']} {request['path']}"
        times.by_endpoint.setdefault(endpoint, []).append(int(duration["ms"]) / 1000)
        times.statuses[f"{endpoint} {request['status']}"] += 1
    for line in worker_lines:
        times.tracebacks += line.startswith("Traceback")
        task = TASK_DONE.search(line)
        if task is not None:
            times.tasks.append(float(task["seconds"]))
            times.idle_tasks += task["finished"] == "0"
    return times


# ============================================================================================
# The benchmark
# ============================================================================================
class LoadBench:
    def __init__(self, plan: Plan, children: Children, conninfo: str, database: str) -> None:
        self.plan = plan
        self.children = children
        self.conninfo = conninfo
        self.port = free_port()
        self.web: Child | None = None
        self.worker: Child | None = None
        self.worker_name = f"benchload{os.getpid()}@{socket.gethostname()}"
        self.foreign_workers: list[str] = []
        self.tally = Tally()
        postmaster = postgres_server(conninfo)
        redis_port = urlsplit(os.environ["REDIS_URL"]).port or 6379
        broker = listening_process(redis_port)
        groups: dict[str, Callable[[], Iterable[psutil.Process]]] = {
            "generator": lambda: [psutil.Process()],
            "gunicorn": lambda: process_tree(self.web.process.pid) if self.web else [],
            "celery": lambda: process_tree(self.worker.process.pid) if self.worker else [],
            "postgres": lambda: postgres_processes(postmaster, database) if postmaster else [],
            "redis": lambda: [broker] if broker else [],
        }
        self.meter = CpuMeter(groups)
        self.sampler = Sampler(groups, conninfo)

    def start_servers(self) -> None:
        from syncserver.celery import app

        self.web = start_gunicorn(self.children, self.port)
        self.check_foreign_workers()
        app.control.purge()
        self.worker = start_celery_worker(self.children, self.worker_name, self.plan.workers)

    def check_foreign_workers(self) -> None:
        for name in other_celery_workers(self.worker_name):
            if name not in self.foreign_workers:
                say(f"another Celery worker shares this broker: {name}")
                self.foreign_workers.append(name)

    # --- one step -------------------------------------------------------------------------
    def step(self, devices: int) -> Step:
        say(f"{devices} phones: creating the organisation")
        organization_id, dispatcher, technicians = _people(devices)
        rng = random.Random(self.plan.seed + devices)
        phones = [Phone(t.token, random.Random(rng.random())) for t in technicians]
        step = asyncio.run(self._step(devices, organization_id, dispatcher, technicians, phones))
        self.check_foreign_workers()
        step.outcomes, step.server_apply = _outcomes([p.device_id for p in phones])
        return step

    async def _step(
        self,
        devices: int,
        organization_id: int,
        dispatcher: Person,
        technicians: list[Person],
        phones: list[Phone],
    ) -> Step:
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as db:
            say(f"{devices} phones: the dispatcher pushes their work orders")
            await self._dispatch(dispatcher, technicians)
            if await self._wait_applied(db, organization_id, self.plan.setup_timeout) is None:
                raise TimeoutError("the work orders were not applied in time")
            say(f"{devices} phones: first pulls")
            await self._first_pulls(phones)
            say(f"{devices} phones: syncing for {self.plan.seconds:.0f} s")
            return await self._window(db, devices, organization_id, phones)

    async def _dispatch(self, dispatcher: Person, technicians: list[Person]) -> None:
        """The dispatcher's device pushes every technician's work orders and checklist items
        (each work order before its items, so they apply in that order)."""
        ops: list[dict[str, Any]] = []

        def op(entity: str, fields: dict[str, Any]) -> uuid.UUID:
            record = uuid.uuid4()
            ops.append(
                {
                    "op_id": str(uuid.uuid4()),
                    "seq": len(ops) + 1,
                    "entity": entity,
                    "entity_id": str(record),
                    "action": "create",
                    "base_version": 0,
                    "fields": fields,
                    "client_time": CLIENT_TIME,
                }
            )
            return record

        for n, technician in enumerate(technicians):
            for w in range(self.plan.work_orders):
                work_order = op(
                    "work_order",
                    {
                        "title": f"Boiler service #{n}-{w}",
                        "address": f"{n} Harbour Street, Leith",
                        "customer_name": "Morag Campbell",
                        "priority": "normal",
                        "status": "scheduled",
                        "scheduled_start": "2026-11-24T09:00:00Z",
                        "assigned_to": technician.username,
                    },
                )
                for c in range(self.plan.checklist_items):
                    op("checklist_item", {"work_order_id": str(work_order), "label": f"Step {c}"})
        http = Http(self.port, dispatcher.token)
        device_id = str(uuid.uuid4())
        try:
            for i in range(0, len(ops), SETUP_BATCH):
                body = json.dumps({"device_id": device_id, "ops": ops[i : i + SETUP_BATCH]})
                status, data = await http.request("POST", PUSH, body.encode())
                results = json.loads(data)["results"] if status == 200 else []
                if status != 200 or any(r["status"] != "accepted" for r in results):
                    raise RuntimeError(f"set-up push answered {status}: {data[:300]!r}")
        finally:
            http.close()

    async def _wait_applied(
        self, db: psycopg.AsyncConnection[Any], organization_id: int, timeout: float
    ) -> float | None:
        """Seconds until no op of the organisation is pending; None if `timeout` ran out."""
        began = time.perf_counter()
        while await _pending(db, organization_id):
            if self.worker is not None:
                self.worker.check()
            if time.perf_counter() - began > timeout:
                return None
            await asyncio.sleep(0.1)
        return time.perf_counter() - began

    async def _first_pulls(self, phones: list[Phone]) -> None:
        gate = asyncio.Semaphore(SETUP_PULLS_AT_ONCE)
        self.tally = Tally()

        async def first(phone: Phone) -> None:
            async with gate:
                await self.sync(phone, push=False)

        await asyncio.gather(*(first(phone) for phone in phones))
        if self.tally.errors or any(not p.work_orders or not p.ticked for p in phones):
            raise RuntimeError(f"first pulls failed: {dict(self.tally.errors)}")

    async def _window(
        self,
        db: psycopg.AsyncConnection[Any],
        devices: int,
        organization_id: int,
        phones: list[Phone],
    ) -> Step:
        plan = self.plan
        self.tally = Tally()
        done = asyncio.Event()
        row = await (
            await db.execute(
                "SELECT coalesce(max(pos), 0) FROM operations_feedentry WHERE organization_id = %s",
                (organization_id,),
            )
        ).fetchone()
        observer = asyncio.create_task(self._observe(organization_id, row[0] if row else 0, done))
        lag = asyncio.create_task(self._lag(done))
        start = time.perf_counter() + 0.5
        end = start + plan.seconds
        syncing = [asyncio.create_task(self.device(phone, start, end)) for phone in phones]
        await asyncio.sleep(start - time.perf_counter())
        logs = (_log_offset(self.web), _log_offset(self.worker))
        self.meter.start()
        self.sampler.start(organization_id)
        await asyncio.sleep(end - time.perf_counter())
        cpu = self.meter.stop()
        samples = self.sampler.stop()
        backlog = await _pending(db, organization_id)
        queue = int(self.sampler.broker.llen("fieldsync"))
        server = server_times(
            _log_slice(self.web, logs[0], _log_offset(self.web)),
            _log_slice(self.worker, logs[1], _log_offset(self.worker)),
        )
        say(f"{devices} phones: window over, {backlog:,} ops pending; draining")
        _, late = await asyncio.wait(syncing, timeout=plan.drain_timeout)
        for task in late:
            task.cancel()
        drained = await self._wait_applied(db, organization_id, plan.drain_timeout)
        done.set()
        await asyncio.gather(observer, lag)
        return Step(
            devices=devices,
            seconds=plan.seconds,
            offered=plan.offered(devices),
            tally=self.tally,
            cpu=cpu,
            samples=samples,
            server=server,
            backlog=backlog,
            queue=queue,
            drained=None if drained is None else time.perf_counter() - end,
            outcomes=Counter(),
            server_apply=[],
        )

    # --- a phone --------------------------------------------------------------------------
    async def device(self, phone: Phone, start: float, end: float) -> None:
        """Sync on the phone's schedule until `end`; never two syncs at once."""
        interval, jitter = self.plan.interval, self.plan.jitter
        due = start + phone.rng.uniform(0, interval)
        while due < end:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            push = bool(phone.outbox) or phone.rng.random() >= self.plan.pull_only
            await self.sync(phone, push)
            due += interval * phone.rng.uniform(1 - jitter, 1 + jitter)
            now = time.perf_counter()
            if now > due:
                self.tally.late += 1
                due = now

    async def sync(self, phone: Phone, push: bool) -> None:
        tally = self.tally
        http = Http(self.port, phone.token)
        began = time.perf_counter()
        try:
            await http.connect()
            tally.connect.append(time.perf_counter() - began)
            if push:
                if not phone.outbox:
                    phone.edit(phone.rng.randint(1, self.plan.max_ops))
                await self._push(http, phone)
            await self._pull(http, phone)
        except (OSError, EOFError, TimeoutError, ValueError) as error:
            # EOFError covers IncompleteReadError, ValueError a response we could not parse.
            tally.errors[type(error).__name__] += 1
        finally:
            http.close()
        tally.sync.append(time.perf_counter() - began)
        tally.syncs += 1

    async def _push(self, http: Http, phone: Phone) -> None:
        tally = self.tally
        sent = time.perf_counter()
        for op in phone.outbox:
            tally.first_sent.setdefault(uuid.UUID(op["op_id"]), sent)
        status, data = await self._request(http, "POST", PUSH, phone.push_body(), tally.push)
        if status != 200:
            tally.errors[f"push {status}"] += 1
            return
        for result in json.loads(data)["results"]:
            outcome = result["status"]
            tally.pushed[f"rejected {result['code']}" if outcome == "rejected" else outcome] += 1
        phone.outbox.clear()

    async def _pull(self, http: Http, phone: Phone) -> None:
        while True:
            status, data = await self._request(
                http, "GET", phone.pull_target(), b"", self.tally.pull
            )
            if status != 200:
                self.tally.errors[f"pull {status}"] += 1
                return
            page = json.loads(data)
            phone.learn(page)
            if not page["has_more"]:
                return

    async def _request(
        self, http: Http, method: str, target: str, body: bytes, times: list[float]
    ) -> tuple[int, bytes]:
        self.tally.requests += 1
        began = time.perf_counter()
        async with asyncio.timeout(self.plan.request_timeout):
            answer = await http.request(method, target, body)
        times.append(time.perf_counter() - began)
        return answer

    # --- watchers -------------------------------------------------------------------------
    async def _observe(self, organization_id: int, after: int, done: asyncio.Event) -> None:
        """Note when each op's outcome first shows in the organisation's change feed. Feed
        positions become visible in commit order, so a cursor on them misses nothing."""
        query = (
            "SELECT pos, op_id FROM operations_feedentry "
            "WHERE organization_id = %s AND pos > %s AND kind = 'outcome' ORDER BY pos"
        )
        tally = self.tally
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as db:
            while True:
                # Decided before reading: the last read starts after the caller saw no
                # pending op, so it holds every outcome.
                last = done.is_set()
                rows = await (await db.execute(query, (organization_id, after))).fetchall()
                seen = time.perf_counter()
                for _, op_id in rows:
                    sent = tally.first_sent.get(op_id)
                    if sent is not None and op_id not in tally.applied_after:
                        tally.applied_after[op_id] = seen - sent
                if rows:
                    after = rows[-1][0]
                if last:
                    return
                await asyncio.sleep(OBSERVER_POLL)

    async def _lag(self, done: asyncio.Event) -> None:
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(LAG_TICK)
            self.tally.lag.append(time.perf_counter() - before - LAG_TICK)

    # --- context --------------------------------------------------------------------------
    def machine(self) -> Machine:
        with psycopg.connect(self.conninfo) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            connections = conn.execute("SHOW max_connections").fetchone()
        from django.conf import settings

        web = (
            f"gunicorn {os.environ.get('WEB_CONCURRENCY', '2')} gthread workers of "
            f"{os.environ.get('WEB_THREADS', '64')} threads, each process with a pool of at "
            f"most {settings.DB_POOL_MAX_SIZE} Postgres connections"
        )
        max_connections = int(connections[0]) if connections else 0
        return Machine(
            f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores at commit "
            f"{git_commit()}: {web}, Celery 1 worker of {self.plan.workers} processes, "
            f"Postgres {version[0] if version else '?'} (max_connections {max_connections}); "
            "generator and servers share the cores.",
            max_connections,
        )


async def _pending(db: psycopg.AsyncConnection[Any], organization_id: int) -> int:
    row = await (await db.execute(_PENDING, (organization_id,))).fetchone()
    return int(row[0]) if row else 0


def _people(devices: int) -> tuple[int, Person, list[Person]]:
    """A new organisation: its id, a dispatcher and `devices` technicians, each with a token."""
    from django.test.utils import override_settings

    from accounts.services import field_user_create, token_issue

    org = f"bench-load-{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
    # These users only ever sign in with tokens; hashing their passwords at Django's real
    # cost would take a third of a second each.
    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        dispatcher = field_user_create(org, "dispatcher", f"{org}-dispatcher", PASSWORD)
        technicians = [
            field_user_create(org, "technician", f"{org}-tech-{i}", PASSWORD)
            for i in range(devices)
        ]
    assert dispatcher.organization_id is not None
    return (
        dispatcher.organization_id,
        Person(dispatcher.username, token_issue(dispatcher)),
        [Person(t.username, token_issue(t)) for t in technicians],
    )


def _outcomes(device_ids: list[uuid.UUID]) -> tuple[Counter[str], list[float]]:
    """The phones' ops by final status, and each finished one's received → finished time."""
    from operations.models import Operation

    rows = Operation.objects.filter(device_id__in=device_ids).values_list(
        "status", "received_at", "finished_at"
    )
    statuses: Counter[str] = Counter()
    seconds = []
    for status, received, finished in rows:
        statuses[status] += 1
        if finished is not None:
            seconds.append((finished - received).total_seconds())
    return statuses, seconds


# ============================================================================================
# Entry point
# ============================================================================================
def run(report: dict[str, object]) -> None:
    plan = Plan.from_env()
    say("migrating the bench database")
    database, conninfo = setup_django()
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    began = time.perf_counter()
    try:
        with Children(dict(os.environ), LOGS) as children:
            bench = LoadBench(plan, children, conninfo, database)
            say("starting gunicorn and the Celery worker")
            bench.start_servers()
            steps = []
            for devices in plan.devices:
                step = bench.step(devices)
                say(_summary(step))
                steps.append(step)
            machine = bench.machine()
        plot(steps, PLOT)
        report["load"] = render(
            plan, machine, steps, bench.foreign_workers, time.perf_counter() - began
        )
    finally:
        say(f"server logs in {LOGS.relative_to(ROOT)}/")


def _summary(step: Step) -> str:
    return (
        f"{step.devices} phones: {step.tally.syncs / step.seconds:.1f} syncs/s, "
        f"push p99 {_ms(step.tally.push, 0.99)}, pull p99 {_ms(step.tally.pull, 0.99)}, "
        f"applied p99 {_ms(step.applied, 0.99)}, {step.failed_requests} failed requests, "
        f"machine {_busy(step.cpu):.0%} busy"
    )


# ============================================================================================
# Report
# ============================================================================================
def _ms(values: list[float], fraction: float) -> str:
    return f"{percentile(values, fraction) * 1000:,.0f} ms" if values else "n/a"


def _busy(use: CpuUse) -> float:
    cores = os.cpu_count() or 1
    return use.machine / (use.wall * cores) if use.wall else 0.0


def _share(use: CpuUse, group: str) -> float:
    """A group's CPU as a share of the whole machine (all cores) over the window."""
    cores = os.cpu_count() or 1
    if group == "other":
        return use.other / (use.wall * cores) if use.wall else 0.0
    return use.by_group.get(group, 0.0) / (use.wall * cores) if use.wall else 0.0


def render(
    plan: Plan, machine: Machine, steps: list[Step], foreign_workers: list[str], seconds: float
) -> str:
    lines = [
        machine.description,
        "",
        f"![Latency against the number of phones, and where the CPU went]({PLOT.name})",
        "",
        "| phones | syncs/s offered → made | requests/s | accepted ops/s | push p50 / p99 "
        "| pull p50 / p99 | push → applied p50 / p99 | failed requests | rejected ops "
        "| pending ops growth | pending at end → drained after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(_row(step) for step in steps),
        "",
        _verdict(plan, machine, steps),
        "",
        "CPU over the window as a share of the whole machine (100% = every core busy), and "
        "the servers' CPU per sync made:",
        "",
        "| phones | machine busy | " + " | ".join(COMPONENTS) + " | other "
        "| per sync: gunicorn / celery / postgres |",
        "|---:|---:|" + "---:|" * (len(COMPONENTS) + 2),
        *(_cpu_row(step) for step in steps),
        "",
        "Server side: gunicorn's access log (time inside a worker thread), Celery's log (apply "
        f"task run times), and samples every {SAMPLE_EVERY} s (peaks):",
        "",
        "| phones | push in gunicorn p50 / p99 | pull in gunicorn p50 / p99 | apply tasks/s "
        "(finding nothing) | task p50 / p99 | Postgres connections: all / gunicorn (largest "
        "process) / celery (largest process) | gunicorn threads "
        "| Celery queue | RSS MiB gunicorn / celery / postgres / redis / generator |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(_server_row(step) for step in steps),
        "",
        *_notes(plan, steps, seconds),
    ]
    warnings = _warnings(steps, foreign_workers)
    if warnings:
        lines += ["", *(f"**Warning:** {w}" for w in warnings)]
    return "\n".join(lines)


def _row(step: Step) -> str:
    tally = step.tally
    drained = f"{step.drained:.1f} s" if step.drained is not None else "**not drained**"
    return (
        f"| {step.devices} | {step.offered:.1f} → {tally.syncs / step.seconds:.1f} "
        f"| {tally.requests / step.seconds:.0f} | {step.accepted / step.seconds:.0f} "
        f"| {_ms(tally.push, 0.5)} / {_ms(tally.push, 0.99)} "
        f"| {_ms(tally.pull, 0.5)} / {_ms(tally.pull, 0.99)} "
        f"| {_ms(step.applied, 0.5)} / {_ms(step.applied, 0.99)} "
        f"| {step.failed_requests:,} ({_failed_share(step):.1%}) "
        f"| {step.rejected_ops:,} | {round(step.samples.backlog_growth()):+d}/s | {step.backlog:,} "
        f"({step.queue:,} rings queued) → {drained} |"
    )


def _failed_share(step: Step) -> float:
    return step.failed_requests / step.tally.requests if step.tally.requests else 0.0


def _cpu_row(step: Step) -> str:
    shares = " | ".join(f"{_share(step.cpu, g):.0%}" for g in (*COMPONENTS, "other"))
    per_sync = " / ".join(f"{_per_sync(step, g):.1f}" for g in ("gunicorn", "celery", "postgres"))
    return f"| {step.devices} | {_busy(step.cpu):.0%} | {shares} | {per_sync} ms |"


def _per_sync(step: Step, *groups: str) -> float:
    """CPU milliseconds of the groups per sync the phones made."""
    used = sum(step.cpu.by_group.get(g, 0.0) for g in groups)
    return used / step.tally.syncs * 1000 if step.tally.syncs else 0.0


def _server_row(step: Step) -> str:
    server, samples = step.server, step.samples
    push = server.by_endpoint.get(f"POST {PUSH}", [])
    pull = server.by_endpoint.get(f"GET {PULL}", [])
    rss = " / ".join(
        f"{samples.rss.get(g, 0) / 2**20:.0f}"
        for g in ("gunicorn", "celery", "postgres", "redis", "generator")
    )
    return (
        f"| {step.devices} | {_ms(push, 0.5)} / {_ms(push, 0.99)} "
        f"| {_ms(pull, 0.5)} / {_ms(pull, 0.99)} | {len(server.tasks) / step.seconds:.0f} "
        f"({server.idle_tasks / len(server.tasks) if server.tasks else 0:.0%}) "
        f"| {_ms(server.tasks, 0.5)} / {_ms(server.tasks, 0.99)} "
        f"| {_connections(samples)} | {samples.gunicorn_threads} | {samples.celery_queue} "
        f"| {rss} |"
    )


def _connections(samples: Samples) -> str:
    servers = " / ".join(
        f"{samples.connections.get(g, 0)} ({samples.connections_per_process.get(g, 0)})"
        for g in SERVER_GROUPS
    )
    return f"{samples.postgres_connections} / {servers}"


def _problems(plan: Plan, step: Step) -> list[str]:
    """Ways in which a step did not keep up with its phones; none when it did."""
    found = []
    if _failed_share(step) > 0.001:
        found.append(f"{_failed_share(step):.1%} of requests failed ({_counts(step.tally.errors)})")
    growth = step.samples.backlog_growth()
    if step.drained is None or growth > BACKLOG_GROWTH_LIMIT * step.accepted / step.seconds:
        found.append(
            f"the apply fell behind (pending ops grew by {growth:.0f} per second to "
            f"{step.backlog:,} when the window closed; push → applied p50 "
            f"{_ms(step.applied, 0.5)})"
        )
    if step.tally.syncs < 0.95 * step.offered * step.seconds:
        found.append(
            f"phones were held up ({step.tally.syncs / step.seconds:.1f} syncs/s made of "
            f"{step.offered:.1f} offered)"
        )
    return found


def _verdict(plan: Plan, machine: Machine, steps: list[Step]) -> str:
    """Where it stops scaling, read off the figures of this run."""
    fine = [step for step in steps if not _problems(plan, step)]
    failing = [step for step in steps if _problems(plan, step)]
    cores = os.cpu_count() or 1
    text = "**Where it stops scaling.** "
    if fine:
        best = fine[-1]
        cost = _per_sync(best, "gunicorn", "celery", "postgres")
        ceiling = cores * 1000 / cost if cost else 0.0
        text += (
            f"It keeps up with {best.devices} phones ({best.tally.syncs / best.seconds:.1f} "
            f"syncs/s, machine {_busy(best.cpu):.0%} busy). There the servers spend "
            f"{cost:.0f} ms of CPU per sync, so {cores} cores top out near {ceiling:.0f} "
            f"syncs/s, about {ceiling * plan.interval:.0f} phones syncing every "
            f"{plan.interval:.0f} s, with nothing else running. "
        )
    if not failing:
        return text + "No step in this run went past that."
    worst = failing[0]
    text += (
        f"At {worst.devices} phones it does not: {'; '.join(_problems(plan, worst))}. The "
        f"machine is {_busy(worst.cpu):.0%} busy: gunicorn {_share(worst.cpu, 'gunicorn'):.0%}, "
        f"Celery {_share(worst.cpu, 'celery'):.0%}, Postgres "
        f"{_share(worst.cpu, 'postgres'):.0%}. Apply tasks ran {_tasks(worst)}"
    )
    if fine:
        text += f" (at {fine[-1].devices} phones: {_tasks(fine[-1])})"
    text += (
        f". Peak Postgres connections: {worst.samples.postgres_connections} of "
        f"max_connections {machine.max_connections} (gunicorn "
        f"{worst.samples.connections.get('gunicorn', 0)}, Celery "
        f"{worst.samples.connections.get('celery', 0)})."
    )
    return text


def _tasks(step: Step) -> str:
    tasks = step.server.tasks
    return (
        f"{len(tasks) / step.seconds:.0f}/s taking p50 {_ms(tasks, 0.5)} with Celery at "
        f"{_share(step.cpu, 'celery'):.0%} of the machine"
    )


def _notes(plan: Plan, steps: list[Step], seconds: float) -> list[str]:
    notes = [
        f"- **How it was run**: `python -m bench load` under `python -m devstack exec`, "
        f"{seconds / 60:.1f} minutes in all. Per step a new organisation: N technicians, each "
        f"with a token and a phone, {plan.work_orders} work orders each with "
        f"{plan.checklist_items} checklist items, pushed by a dispatcher and applied before "
        f"the clock starts. Then {plan.seconds:.0f} s of syncs: each phone every "
        f"{plan.interval:.0f} s ± {plan.jitter:.0%}, one new connection per sync, a push of "
        f"1-{plan.max_ops} ops (notes, checklist ticks, status changes, comments) in "
        f"{1 - plan.pull_only:.0%} of syncs, then pulls until has_more is false. A phone never "
        "runs two syncs at once: syncs made below syncs offered means the server held them up. "
        "The same server processes serve every step, in the order shown.",
        "- **Time to applied**: from sending an op's first push to its outcome showing "
        f"(committed) in the change feed pull reads, polled from Postgres every "
        f"{OBSERVER_POLL * 1000:.0f} ms for every op. Push and pull latencies are each "
        "request's round trip as the phone sees it; 'in gunicorn' is the same request's time "
        "inside a worker thread: the difference is time queued for a thread (and the "
        "generator's own lateness, below). Failed requests are non-2xx answers, timeouts "
        f"({plan.request_timeout:.0f} s) and broken connections; rejected ops are those a push "
        "answered `rejected`.",
    ]
    for step in steps:
        tally = step.tally
        unsent = len(tally.first_sent) - sum(tally.pushed.values())
        notes.append(
            f"- **{step.devices} phones**: {tally.syncs:,} syncs ({tally.late:,} started late "
            f"because the one before still ran); sync p50/p99 "
            f"{_ms(tally.sync, 0.5)} / {_ms(tally.sync, 0.99)}; connect p99 "
            f"{_ms(tally.connect, 0.99)}; server received → finished p50/p99 "
            f"{_ms(step.server_apply, 0.5)} / {_ms(step.server_apply, 0.99)}; op outcomes "
            f"{_counts(step.outcomes)}; push answers {_counts(tally.pushed)}; ops never "
            f"answered (their push failed, and the window closed) {max(0, unsent):,}; "
            f"failed requests {_counts(tally.errors)}; gunicorn answers "
            f"{_counts(Counter({k: v for k, v in step.server.statuses.items() if ' 2' not in k}))}"
            f" other than 2xx; tracebacks in the server logs {step.server.tracebacks}; Postgres "
            f"backends, sampled: {_shares(step.samples.backends)}; generator event-loop "
            f"lateness p99 {_ms(tally.lag, 0.99)}, max {_ms(tally.lag, 1.0)}."
        )
    return notes


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counter.most_common()) or "none"


def _shares(counter: Counter[str]) -> str:
    total = sum(counter.values())
    return ", ".join(f"{k} {v / total:.0%}" for k, v in counter.most_common(5)) or "none"


def _warnings(steps: list[Step], foreign_workers: list[str]) -> list[str]:
    found = []
    if foreign_workers:
        found.append(
            f"other Celery workers shared the broker and took some of our rings: "
            f"{', '.join(foreign_workers)}; the apply figures are not ours"
        )
    for step in steps:
        if _share(step.cpu, "other") > 0.25:
            found.append(
                f"other processes used {_share(step.cpu, 'other'):.0%} of the machine during "
                f"the {step.devices}-phone window: rerun it quiet"
            )
    return found


# ============================================================================================
# Plot
# ============================================================================================
def plot(steps: list[Step], path: Path) -> None:
    # matplotlib is installed only for make bench (requirements-bench.txt), yet make lint
    # type-checks this file with or without it.
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    devices = [step.devices for step in steps]
    figure, (latency, cpu) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    series: list[tuple[str, Callable[[Step], list[float]], str]] = [
        ("push", lambda s: s.tally.push, "tab:blue"),
        ("pull", lambda s: s.tally.pull, "tab:green"),
        ("push → applied", lambda s: s.applied, "tab:red"),
    ]
    for label, values, color in series:
        for fraction, style in ((0.5, "--"), (0.99, "-")):
            ms = [percentile(values(s), fraction) * 1000 if values(s) else math.nan for s in steps]
            name = f"{label} p{fraction * 100:.0f}"
            latency.plot(devices, ms, style, marker="o", color=color, label=name)
    for step in steps:
        if step.failed_requests and step.tally.push:
            peak = percentile(step.tally.push, 0.99) * 1000
            note = f"{_failed_share(step):.0%} of requests failed"
            latency.annotate(
                note,
                (step.devices, peak),
                textcoords="offset points",
                xytext=(-10, -18),
                ha="right",
                fontsize="small",
                color="tab:blue",
            )
    latency.set_yscale("log")
    latency.set_xlabel("simulated phones")
    latency.set_ylabel("latency, ms (log scale)")
    latency.set_title("Latency against the number of phones")
    latency.grid(True, which="both", alpha=0.3)
    latency.legend(fontsize="small")
    positions = list(range(len(steps)))
    bottom = [0.0] * len(steps)
    for group in (*COMPONENTS, "other"):
        share = [_share(step.cpu, group) * 100 for step in steps]
        cpu.bar(positions, share, bottom=bottom, label=group)
        bottom = [b + s for b, s in zip(bottom, share, strict=True)]
    cpu.set_xticks(positions, [str(d) for d in devices])
    cpu.set_xlabel("simulated phones")
    cpu.set_ylabel(f"% of the machine ({os.cpu_count()} cores)")
    cpu.set_ylim(0, 105)
    cpu.set_title("Where the CPU went")
    cpu.legend(fontsize="small", loc="upper left")
    figure.savefig(path, dpi=100)
    plt.close(figure)
