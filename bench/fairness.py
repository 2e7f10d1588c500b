"""Benchmark of fairness across organisations: one tenant's burst against another's single ops.

The issue's promise: a tenant that pushes 50,000 ops at once must not delay a single op of
another tenant by more than a second at p99. Against the servers as production runs them
(gunicorn from gunicorn.conf.py, one Celery worker of 2 processes), two organisations of the
run's own, every device a dispatcher's with its own token:

- A: 20 devices, each with 25 work orders it created in set-up (pushed and applied before
  the clock starts);
- B: 10 devices, each with 5 work orders of its own.

1. Baseline: B alone pushes single ops (updates of its work orders, one op per push) at a
   steady 5 ops/s in all, for BENCH_FAIR_BASELINE_SECONDS (default 10).
2. Burst: A pushes BENCH_FAIR_OPS (default 50,000) updates of its work orders as fast as it
   can, in pushes of 500 ops from 4 client threads (each device's pushes in seq order, the
   devices taking turns). B starts its steady single ops again as soon as A's first push is
   answered (A has a backlog from then on) and goes on until A's last op is applied.

An op's latency runs from the moment its push is sent to the moment its outcome first shows
in the change feed that pull reads, polled straight from Postgres every 10 ms, as in
bench/sync.py. A's drain time runs from its first push sent to its last outcome seen there.

What B waited for, from three sides: the Celery messages already queued when each of B's ops
was pushed (its push's ring went in behind them); A's ops applied between its arrival and its
own apply; and the apply rounds and tasks of the burst. An apply round is one transaction and
writes the outcome of every op it applied, so the op rows one transaction left (one `xmin`)
are one round; the tasks, their run times and ops finished come from the worker's log.

`make bench` runs it after the others; `BENCH_FAIR_OPS=2000 BENCH_FAIR_BASELINE_SECONDS=3`
makes a quick check of it.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import psycopg
import redis

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
from bench.sync import PUSH, Phone, statuses

OBSERVER_POLL = 0.01
LOGS = ROOT / ".data" / "bench-fairness"
QUEUE = "fieldsync"  # settings.CELERY_TASK_DEFAULT_QUEUE
TASK_DONE = re.compile(
    r"Task operations\.tasks\.(?P<name>\w+)\[[^\]]+\] succeeded in (?P<seconds>[0-9.]+)s: "
    r"(?P<finished>\d+)"
)


@dataclass(frozen=True)
class Plan:
    a_ops: int = 50_000
    a_devices: int = 20
    a_records: int = 25
    a_batch: int = 500
    a_threads: int = 4
    b_devices: int = 10
    b_records: int = 5
    b_rate: float = 5.0
    baseline_seconds: float = 10.0
    workers: int = 2
    setup_timeout: float = 120.0
    drain_timeout: float = 900.0
    settle_timeout: float = 60.0
    p99_target: float = 1.0

    @classmethod
    def from_env(cls) -> Plan:
        plan = cls(
            a_ops=int(os.environ.get("BENCH_FAIR_OPS", "50000")),
            baseline_seconds=float(os.environ.get("BENCH_FAIR_BASELINE_SECONDS", "10")),
        )
        if plan.a_ops < plan.a_devices:
            raise ValueError(f"BENCH_FAIR_OPS={plan.a_ops}: fewer ops than A has devices")
        return plan

    def a_ops_of(self, index: int) -> int:
        """How many of the burst's ops A's device number `index` pushes."""
        share, rest = divmod(self.a_ops, self.a_devices)
        return share + (index < rest)


def say(message: str) -> None:
    print(f"bench fairness: {message}", file=sys.stderr, flush=True)


class OnePushPhone(Phone):
    """A phone that opens a connection for each push. gunicorn closes a keep-alive connection
    after 2 s idle, which is about how long B's devices wait between pushes (and A's, between
    their turns): a push sent on a connection the server is closing that moment is reset."""

    def push(self, body: bytes) -> bytes:
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Token {self.token}",
            "Connection": "close",
        }
        response = self.http.request("POST", PUSH, body=body, headers=headers)
        if response.status != 200:
            raise RuntimeError(f"push answered {response.status}: {response.data[:500]!r}")
        return response.data


# ============================================================================================
# Watching the feed
# ============================================================================================
class FeedWatch:
    """Follows both organisations' op outcomes in the change feed as pull reads it, from where
    the feed stands at start(): when each of B's ops first shows, how many of A's have shown
    and when the last of them did. Feed positions become visible in commit order within an
    organisation (its advisory lock), not across organisations: each organisation has its own
    cursor, which then misses nothing, and each poll reads only new rows."""

    def __init__(self, conninfo: str, a_org: int, b_org: int) -> None:
        self.conninfo = conninfo
        self.a_org = a_org
        self.b_org = b_org
        self.lock = threading.Lock()
        self.waiting: dict[uuid.UUID, float] = {}
        self.latency: dict[uuid.UUID, float] = {}
        self.a_seen = 0
        self.a_last = 0.0
        self._ready = threading.Event()
        self._done = threading.Event()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._follow_safely, daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10.0):
            raise TimeoutError("the feed observer did not start")

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5.0)

    def expect(self, op_id: uuid.UUID, sent: float) -> None:
        """B's op `op_id` is about to be pushed (perf_counter `sent`)."""
        with self.lock:
            self.waiting[op_id] = sent

    def a_progress(self) -> tuple[int, float]:
        with self.lock:
            return self.a_seen, self.a_last

    def settle(self, timeout: float) -> None:
        """Wait until every one of B's ops pushed so far has shown."""
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            with self.lock:
                left = len(self.waiting)
            if not left:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{left} of B's ops not finished within {timeout:.0f} s")
            time.sleep(0.05)

    def check(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._thread.is_alive():
            raise RuntimeError("the feed observer stopped")

    def _follow_safely(self) -> None:
        try:
            self._follow()
        except Exception as error:  # noqa: BLE001 - raised again in the main thread
            self._error = error

    def _follow(self) -> None:
        query = (
            "SELECT pos, organization_id, op_id FROM operations_feedentry "
            "WHERE kind = 'outcome' AND (organization_id = %s AND pos > %s "
            "OR organization_id = %s AND pos > %s) ORDER BY pos"
        )
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT coalesce(max(pos), 0) FROM operations_feedentry").fetchone()
            cursors = dict.fromkeys((self.a_org, self.b_org), row[0] if row else 0)
            self._ready.set()
            while not self._done.is_set():
                rows = conn.execute(query, [x for c in cursors.items() for x in c]).fetchall()
                seen = time.perf_counter()
                with self.lock:
                    for pos, org, op_id in rows:
                        cursors[org] = pos
                        if org == self.a_org:
                            self.a_seen += 1
                            self.a_last = seen
                        elif op_id in self.waiting:
                            self.latency[op_id] = seen - self.waiting.pop(op_id)
                time.sleep(OBSERVER_POLL)


# ============================================================================================
# B's steady single ops
# ============================================================================================
@dataclass
class Sent:
    """One of B's ops: when its push was sent (perf_counter), how many Celery messages were
    waiting in the queue just before (its push's ring went in behind them), and how long the
    push took to answer."""

    op_id: uuid.UUID
    at: float
    queued: int
    rtt: float = 0.0


class Trickle:
    """B's devices pushing one op a push, at a steady rate in all, from start() until stop():
    device i sends its k-th push at start + (i + k * devices) / rate."""

    def __init__(self, phones: list[Phone], rate: float, watch: FeedWatch) -> None:
        self.phones = phones
        self.rate = rate
        self.watch = watch
        self.sent: list[Sent] = []
        self.late = 0
        self.began = 0.0
        self.broker = redis.Redis.from_url(os.environ["REDIS_URL"])
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._errors: list[Exception] = []
        self._threads = [
            threading.Thread(target=self._push_safely, args=(i,), daemon=True)
            for i in range(len(phones))
        ]

    def start(self) -> None:
        self.began = time.perf_counter()
        for thread in self._threads:
            thread.start()

    def stop(self) -> list[Sent]:
        self._stop.set()
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join(30.0)
        if self._errors:
            raise self._errors[0]
        return sorted(self.sent, key=lambda s: s.at)

    def _push_safely(self, index: int) -> None:
        try:
            self._push(index)
        except Exception as error:  # noqa: BLE001 - raised again by stop()
            self._errors.append(error)

    def _push(self, index: int) -> None:
        phone = self.phones[index]
        records = list(phone.versions)
        interval = len(self.phones) / self.rate
        for k in itertools.count():
            wait = self.began + (index + k * len(self.phones)) / self.rate - time.perf_counter()
            if self._stop.wait(max(wait, 0.0)):
                return
            op = phone.update(records[k % len(records)])
            body = phone.body([op])
            queued = int(self.broker.llen(QUEUE))
            sent = Sent(uuid.UUID(op["op_id"]), time.perf_counter(), queued)
            self.watch.expect(sent.op_id, sent.at)
            answer = phone.push(body)
            sent.rtt = time.perf_counter() - sent.at
            if statuses([answer])["accepted"] != 1:
                raise RuntimeError(f"B's push not accepted: {answer[:300]!r}")
            with self._lock:
                self.sent.append(sent)
                self.late += wait < -interval / 2


# ============================================================================================
# Results
# ============================================================================================
@dataclass
class Trickled:
    """B's ops of one phase."""

    sent: list[Sent]
    latency: dict[uuid.UUID, float]
    server: dict[uuid.UUID, float]  # received_at → finished_at, the server's own part
    outcomes: Counter[str]
    late: int

    def latencies(self, ops: Sequence[Sent]) -> list[float]:
        return [self.latency[s.op_id] for s in ops if s.op_id in self.latency]


@dataclass
class Rounds:
    """The apply rounds (transactions) that finished A's and B's ops during the burst."""

    ops: list[int]  # per round
    devices: list[int]  # per round
    # Per op of B pushed during A's backlog:
    b_ops: list[int]  # ops of the round that applied it (of any device)
    b_devices: list[int]  # devices of that round
    ahead: list[int]  # A's ops applied between its arrival and its own apply


@dataclass
class Tasks:
    """The apply tasks the worker finished during the burst, from its log: per task name,
    each one's run time in seconds and how many ops it finished."""

    runs: dict[str, list[tuple[float, int]]]


@dataclass
class Burst:
    ops: int
    push_seconds: float  # A's first push sent → its last answered
    drain_seconds: float  # A's first push sent → its last outcome seen in the feed
    outcomes: Counter[str]
    b: Trickled
    during_backlog: list[Sent]
    during_push: list[Sent]
    after_drain: int
    rounds: Rounds
    tasks: Tasks
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
class FairnessBench:
    def __init__(self, plan: Plan, children: Children, conninfo: str, database: str) -> None:
        self.plan = plan
        self.children = children
        self.conninfo = conninfo
        self.port = free_port()
        self.web: Child | None = None
        self.worker: Child | None = None
        self.worker_name = f"benchfair{os.getpid()}@{socket.gethostname()}"
        self.a_org = 0
        self.b_org = 0
        self.a_phones: list[Phone] = []
        self.b_phones: list[Phone] = []
        self.foreign_workers: list[str] = []
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
        stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:6]
        self.a_org, self.a_phones = self._organisation(f"bench-fair-a-{stamp}", self.plan.a_devices)
        self.b_org, self.b_phones = self._organisation(f"bench-fair-b-{stamp}", self.plan.b_devices)

    def _organisation(self, name: str, devices: int) -> tuple[int, list[Phone]]:
        from accounts.services import device_claim, field_user_create, token_issue

        users = [
            field_user_create(name, "dispatcher", f"{name}-{i}", "pw-bench-1")
            for i in range(devices)
        ]
        phones: list[Phone] = [
            OnePushPhone(user.pk, token_issue(user), self.port) for user in users
        ]
        for user, phone in zip(users, phones, strict=True):
            device_claim(user, phone.device_id)
        assert users[0].organization_id is not None
        return users[0].organization_id, phones

    def start_servers(self) -> None:
        from syncserver.celery import app

        self.web = start_gunicorn(self.children, self.port)
        self.check_foreign_workers()
        app.control.purge()
        self.worker = start_celery_worker(self.children, self.worker_name, self.plan.workers)

    def check_foreign_workers(self) -> None:
        """Note Celery workers other than ours on this broker: they take our rings."""
        for name in other_celery_workers(self.worker_name):
            if name not in self.foreign_workers:
                say(f"another Celery worker shares this broker: {name}")
                self.foreign_workers.append(name)

    def create_work_orders(self) -> None:
        """Every device creates its work orders through the API; waits until they are applied."""
        from operations.models import Operation, OpStatus

        counts = [(p, self.plan.a_records) for p in self.a_phones]
        counts += [(p, self.plan.b_records) for p in self.b_phones]
        for phone, count in counts:
            answer = phone.push(phone.body([phone.create() for _ in range(count)]))
            if statuses([answer])["accepted"] != count:
                raise RuntimeError(f"set-up push not all accepted: {answer[:300]!r}")
        devices = [phone.device_id for phone, _ in counts]
        pending = Operation.objects.filter(device_id__in=devices, status=OpStatus.PENDING)
        deadline = time.monotonic() + self.plan.setup_timeout
        while pending.exists():
            self.check_servers()
            if time.monotonic() > deadline:
                raise TimeoutError(f"set-up: {pending.count()} creates still pending")
            time.sleep(0.1)

    def check_servers(self) -> None:
        for child in (self.web, self.worker):
            if child is not None:
                child.check()

    # --- 1. baseline ----------------------------------------------------------------------
    def baseline(self, watch: FeedWatch) -> tuple[Trickled, CpuUse]:
        plan = self.plan
        say(f"baseline: B alone, {plan.b_rate:g} ops/s for {plan.baseline_seconds:g} s")
        trickle = Trickle(self.b_phones, plan.b_rate, watch)
        self.meter.start()
        trickle.start()
        try:
            time.sleep(plan.baseline_seconds)
        finally:
            sent = trickle.stop()
        watch.settle(plan.settle_timeout)
        cpu = self.meter.stop()
        return self._trickled(sent, trickle, watch), cpu

    # --- 2. burst -------------------------------------------------------------------------
    def burst(self, watch: FeedWatch) -> Burst:
        plan = self.plan
        bodies = {p: self._a_bodies(i, p) for i, p in enumerate(self.a_phones)}
        lanes = [self.a_phones[t :: plan.a_threads] for t in range(plan.a_threads)]
        trickle = Trickle(self.b_phones, plan.b_rate, watch)
        lock = threading.Lock()
        first_sent = 0.0
        last_answered = 0.0

        def answered(now: float) -> None:
            nonlocal last_answered
            with lock:
                if not trickle.began:
                    say("burst: A's first push answered; B starts")
                    trickle.start()
                last_answered = max(last_answered, now)

        def lane(phones: list[Phone]) -> Callable[[Callable[[], object]], list[bytes]]:
            def work(go: Callable[[], object]) -> list[bytes]:
                nonlocal first_sent
                go()
                with lock:
                    first_sent = first_sent or time.perf_counter()
                answers = []
                # The lane's devices take turns, so every device of A soon has a backlog.
                for k in range(max(len(bodies[p]) for p in phones)):
                    for phone in phones:
                        if k < len(bodies[phone]):
                            answers.append(phone.push(bodies[phone][k]))
                            answered(time.perf_counter())
                return answers

            return work

        say(
            f"burst: A pushes {plan.a_ops:,} ops from {plan.a_devices} devices "
            f"({plan.a_threads} threads, pushes of {plan.a_batch})"
        )
        since = datetime.now(UTC)
        assert self.worker is not None
        log_offset = self.worker.log.stat().st_size
        self.meter.start()
        try:
            answers, _ = timed_threads([lane(p) for p in lanes], timeout=plan.drain_timeout)
            counts = statuses([a for lane_answers in answers for a in lane_answers])
            if counts["accepted"] != plan.a_ops:
                raise RuntimeError(f"A's pushes not all accepted: {dict(counts)}")
            say(f"burst: A pushed in {last_answered - first_sent:.1f} s; waiting for its backlog")
            drained = self._wait_drained(watch, plan.a_ops)
        finally:
            sent = trickle.stop()
        watch.settle(plan.settle_timeout)
        cpu = self.meter.stop()
        self.check_foreign_workers()
        b = self._trickled(sent, trickle, watch)
        during = [s for s in sent if s.at <= drained]
        return Burst(
            ops=plan.a_ops,
            push_seconds=last_answered - first_sent,
            drain_seconds=drained - first_sent,
            outcomes=self._outcomes(self.a_phones, since),
            b=b,
            during_backlog=during,
            during_push=[s for s in during if s.at <= last_answered],
            after_drain=len(sent) - len(during),
            rounds=self._rounds(since, [s.op_id for s in during]),
            tasks=worker_tasks(self.worker.log, log_offset),
            cpu=cpu,
        )

    def _a_bodies(self, index: int, phone: Phone) -> list[bytes]:
        records = list(phone.versions)
        ops = [phone.update(records[i % len(records)]) for i in range(self.plan.a_ops_of(index))]
        batch = self.plan.a_batch
        return [phone.body(ops[i : i + batch]) for i in range(0, len(ops), batch)]

    def _wait_drained(self, watch: FeedWatch, ops: int) -> float:
        """When A's last outcome showed in the feed (perf_counter)."""
        deadline = time.monotonic() + self.plan.drain_timeout
        while True:
            seen, last = watch.a_progress()
            if seen >= ops:
                return last
            watch.check()
            self.check_servers()
            if time.monotonic() > deadline:
                raise TimeoutError(f"burst: {ops - seen:,} of A's ops not applied in time")
            time.sleep(0.05)

    # --- what the database says ------------------------------------------------------------
    def _trickled(self, sent: list[Sent], trickle: Trickle, watch: FeedWatch) -> Trickled:
        from operations.models import Operation

        rows = Operation.objects.filter(op_id__in=[s.op_id for s in sent]).values_list(
            "op_id", "status", "received_at", "finished_at"
        )
        server = {
            op_id: (finished - received).total_seconds()
            for op_id, _, received, finished in rows
            if finished is not None
        }
        outcomes = Counter(status for _, status, _, _ in rows)
        with watch.lock:
            latency = {s.op_id: watch.latency[s.op_id] for s in sent if s.op_id in watch.latency}
        return Trickled(sent, latency, server, outcomes, trickle.late)

    def _outcomes(self, phones: list[Phone], since: datetime) -> Counter[str]:
        from operations.models import Operation

        ops = Operation.objects.filter(
            device_id__in=[p.device_id for p in phones], received_at__gte=since
        )
        return Counter(ops.values_list("status", flat=True))

    def _rounds(self, since: datetime, b_ops: list[uuid.UUID]) -> Rounds:
        """The burst's rounds, told apart by the transaction that wrote the outcomes (an op
        row's xmin: nothing writes an op row again once it is finished), and what each of
        B's ops waited for."""
        rounds_sql = """
            SELECT xmin::text, count(*), count(DISTINCT device_id)
            FROM operations_operation
            WHERE organization_id = ANY(%(orgs)s) AND received_at >= %(since)s
              AND NOT rejected_at_push AND finished_at IS NOT NULL
            GROUP BY xmin::text
        """
        b_sql = """
            SELECT b.xmin::text,
                   (SELECT count(*) FROM operations_operation a
                    WHERE a.finished_at > b.received_at AND a.finished_at < b.finished_at
                      AND a.organization_id = %(a)s)
            FROM operations_operation b WHERE b.op_id = ANY(%(b_ops)s)
        """
        orgs = [self.a_org, self.b_org]
        with psycopg.connect(self.conninfo) as conn:
            rounds = conn.execute(rounds_sql, {"orgs": orgs, "since": since}).fetchall()
            of_b = conn.execute(b_sql, {"a": self.a_org, "b_ops": b_ops}).fetchall()
        sizes = {xmin: (int(ops), int(devices)) for xmin, ops, devices in rounds}
        of_b_rounds = [sizes[xmin] for xmin, _ in of_b if xmin in sizes]
        return Rounds(
            ops=[int(ops) for _, ops, _ in rounds],
            devices=[int(devices) for _, _, devices in rounds],
            b_ops=[ops for ops, _ in of_b_rounds],
            b_devices=[devices for _, devices in of_b_rounds],
            ahead=[int(ahead) for _, ahead in of_b],
        )

    # --- context --------------------------------------------------------------------------
    def machine(self) -> Machine:
        with psycopg.connect(self.conninfo) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            sync = conn.execute("SHOW synchronous_commit").fetchone()
        web = (
            f"gunicorn {os.environ.get('WEB_CONCURRENCY', '2')} gthread workers of "
            f"{os.environ.get('WEB_THREADS', '64')} threads, Celery 1 worker of "
            f"{self.plan.workers} processes"
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


def worker_tasks(log: Path, offset: int) -> Tasks:
    """The apply tasks that the worker's log says finished after byte `offset`."""
    with log.open("rb") as lines:
        lines.seek(offset)
        text = lines.read().decode(errors="replace")
    runs: dict[str, list[tuple[float, int]]] = {}
    for done in TASK_DONE.finditer(text):
        runs.setdefault(done["name"], []).append((float(done["seconds"]), int(done["finished"])))
    return Tasks(runs)


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
            bench = FairnessBench(plan, children, conninfo, database)
            bench.setup()
            say("starting gunicorn and the Celery worker")
            bench.start_servers()
            say("set-up: every device creates its work orders")
            bench.create_work_orders()
            watch = FeedWatch(conninfo, bench.a_org, bench.b_org)
            watch.start()
            try:
                baseline, baseline_cpu = bench.baseline(watch)
                say(f"baseline: B p99 {_ms(baseline.latencies(baseline.sent), 0.99)}")
                burst = bench.burst(watch)
            finally:
                watch.stop()
            say(
                f"burst: A drained in {burst.drain_seconds:.1f} s; B p99 while A had a backlog "
                f"{_ms(burst.b.latencies(burst.during_backlog), 0.99)}"
            )
            report["fairness"] = render(plan, bench.machine(), baseline, baseline_cpu, burst)
    finally:
        say(f"server logs in {LOGS.relative_to(ROOT)}/")


# ============================================================================================
# Report
# ============================================================================================
def _ms(values: Sequence[float], fraction: float) -> str:
    return f"{percentile(values, fraction) * 1000:,.0f} ms" if values else "n/a"


def _max_ms(values: Sequence[float]) -> str:
    return f"{max(values) * 1000:,.0f} ms" if values else "n/a"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def render(
    plan: Plan, machine: Machine, baseline: Trickled, baseline_cpu: CpuUse, burst: Burst
) -> str:
    alone = baseline.latencies(baseline.sent)
    during = burst.b.latencies(burst.during_backlog)
    pushing = burst.b.latencies(burst.during_push)
    pushed_ids = {s.op_id for s in burst.during_push}
    draining = burst.b.latencies([s for s in burst.during_backlog if s.op_id not in pushed_ids])
    p99 = percentile(during, 0.99) if during else float("inf")
    target = f"p99 < {plan.p99_target * 1000:,.0f} ms"

    def row(what: str, values: list[float], goal: str = "", met: str = "") -> str:
        return (
            f"| {what} | {len(values):,} | {_ms(values, 0.5)} | {_ms(values, 0.99)} "
            f"| {_max_ms(values)} | {goal} | {met} |"
        )

    lines = [
        f"Run {machine.date} on {machine.cores} cores, Postgres {machine.postgres} "
        f"(synchronous_commit {machine.synchronous_commit}), {machine.web}, commit "
        f"{machine.commit}. Client, servers and Postgres share the machine.",
        "",
        f"| B's single ops ({plan.b_rate:g} ops/s from {plan.b_devices} devices), push → "
        "applied | ops | p50 | p99 | max | target | met? |",
        "|---|---:|---:|---:|---:|---|---|",
        row(f"B alone (baseline, {plan.baseline_seconds:g} s)", alone),
        row("while A had a backlog", during, target, _met(p99 < plan.p99_target)),
        row("… of them while A was still pushing", pushing),
        row("… of them after A's last push, while its backlog drained", draining),
        "",
        "| A's burst | value |",
        "|---|---:|",
        f"| ops pushed ({plan.a_devices} devices, pushes of {plan.a_batch}, "
        f"{plan.a_threads} client threads) | {burst.ops:,} |",
        f"| pushed in (first push sent → last answered) | {burst.push_seconds:.1f} s "
        f"({burst.ops / burst.push_seconds:,.0f} ops/s) |",
        f"| drained in (first push sent → last outcome in the feed) | "
        f"{burst.drain_seconds:.1f} s ({burst.ops / burst.drain_seconds:,.0f} ops/s) |",
        f"| B's ops pushed while A had a backlog | {len(burst.during_backlog):,} |",
        "",
        *_notes(plan, baseline, burst),
        "",
        "CPU seconds by process during each phase (`other` is everything else on the machine: "
        "a figure from a busy machine is not one to keep):",
        "",
        "| phase | wall s | bench client | gunicorn | celery | postgres | other | machine busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        _cpu_row("baseline (B alone)", baseline_cpu, machine.cores),
        _cpu_row("burst (A's push and drain, B meanwhile)", burst.cpu, machine.cores),
    ]
    warnings = _warnings(machine, baseline, baseline_cpu, burst)
    if warnings:
        lines += ["", *(f"**Warning:** {w}" for w in warnings)]
    return "\n".join(lines)


def _notes(plan: Plan, baseline: Trickled, burst: Burst) -> list[str]:
    def rtt(sent: Sequence[Sent]) -> str:
        ms = [s.rtt for s in sent]
        return f"{_ms(ms, 0.5)} / {_ms(ms, 0.99)}"

    def server(trickled: Trickled, sent: Sequence[Sent]) -> str:
        seconds = [trickled.server[s.op_id] for s in sent if s.op_id in trickled.server]
        return f"{_ms(seconds, 0.5)} / {_ms(seconds, 0.99)}"

    rounds = burst.rounds
    return [
        f"- **How**: organisation A has {plan.a_devices} dispatcher devices with "
        f"{plan.a_records} work orders each, B {plan.b_devices} with {plan.b_records} each, all "
        "created through the API and applied before the clock starts. A pushes updates of its "
        f"own work orders as fast as it can; B pushes one update a push at {plan.b_rate:g} ops/s "
        "in all, first alone, then from A's first answered push until A's last op is applied "
        f"({burst.after_drain} of B's ops pushed after that are left out). Latency = from "
        "sending the push to the op's outcome first showing in the change feed that pull reads "
        f"(committed), polled straight from Postgres every {OBSERVER_POLL * 1000:.0f} ms.",
        f"- **Where B's time went**: push round trip p50 / p99 {rtt(baseline.sent)} alone, "
        f"{rtt(burst.during_backlog)} during A's backlog; received_at → finished_at on the "
        f"server p50 / p99 {server(baseline, baseline.sent)} alone, "
        f"{server(burst.b, burst.during_backlog)} during A's backlog. Celery messages already "
        "waiting in the queue when one of B's ops was pushed (its ring went in behind them) "
        f"p50 / p99 / max {_spread([s.queued for s in burst.during_backlog])}; A's ops applied "
        "while one of B's waited (between its arrival and its own apply) p50 / p99 / max "
        f"{_spread(rounds.ahead)}.",
        f"- **Apply rounds during the burst** (one transaction each, told apart by the xmin of "
        f"the op rows they finished): {len(rounds.ops):,} rounds of p50 / max "
        f"{_int(rounds.ops, 0.5)} / {max(rounds.ops, default=0):,} ops and "
        f"{_int(rounds.devices, 0.5)} / {max(rounds.devices, default=0)} devices; the round "
        f"that applied one of B's ops held p50 / max {_int(rounds.b_ops, 0.5)} / "
        f"{max(rounds.b_ops, default=0):,} ops of {_int(rounds.b_devices, 0.5)} / "
        f"{max(rounds.b_devices, default=0)} devices.",
        f"- **Apply tasks during the burst** (the worker's log): {_tasks(burst.tasks)}.",
        f"- **Outcomes**: A {_counts(burst.outcomes)}; B alone {_counts(baseline.outcomes)}, "
        f"B during the burst {_counts(burst.b.outcomes)}.",
    ]


def _int(values: Sequence[int], fraction: float) -> str:
    return f"{percentile(values, fraction):,}" if values else "n/a"


def _spread(values: Sequence[int]) -> str:
    """p50 / p99 / max of counts."""
    return f"{_int(values, 0.5)} / {_int(values, 0.99)} / {max(values, default=0):,}"


def _tasks(tasks: Tasks) -> str:
    if not tasks.runs:
        return "none"
    described = []
    for name, runs in sorted(tasks.runs.items()):
        seconds = [s for s, _ in runs]
        ops = [n for _, n in runs]
        described.append(
            f"{len(runs):,} `{name}`, run time p50 / max {_ms(seconds, 0.5)} / "
            f"{_max_ms(seconds)}, ops finished p50 / max {_int(ops, 0.5)} / {max(ops):,}"
        )
    return "; ".join(described)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counter.most_common()) or "none"


def _cpu_row(phase: str, use: CpuUse, cores: int) -> str:
    groups = [use.by_group.get(g, 0.0) for g in ("bench client", "gunicorn", "celery", "postgres")]
    busy = use.machine / (use.wall * cores) if use.wall and cores else 0.0
    cells = " | ".join(f"{x:.1f}" for x in [*groups, use.other])
    return f"| {phase} | {use.wall:.1f} | {cells} | {busy:.0%} |"


def _warnings(
    machine: Machine, baseline: Trickled, baseline_cpu: CpuUse, burst: Burst
) -> list[str]:
    found = []
    if machine.foreign_workers:
        found.append(
            f"other Celery workers shared the broker and took some of our rings: "
            f"{', '.join(machine.foreign_workers)}; the figures are not ours"
        )
    if set(burst.outcomes) != {"applied"}:
        found.append(f"A's ops not all applied cleanly: {_counts(burst.outcomes)}")
    if set(baseline.outcomes) | set(burst.b.outcomes) != {"applied"}:
        found.append("some of B's ops were not applied cleanly (see outcomes)")
    late = baseline.late + burst.b.late
    if late:
        found.append(f"{late} of B's pushes went out late (client overloaded)")
    for phase, use in (("baseline", baseline_cpu), ("burst", burst.cpu)):
        if use.other > 0.25 * use.wall * machine.cores:
            found.append(
                f"other processes used {use.other:.1f} CPU-s during the {phase} "
                f"({use.other / (use.wall * machine.cores):.0%} of the machine): rerun it quiet"
            )
    return found
