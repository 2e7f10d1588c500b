"""What happens on the hosts (tests/hosts/cluster.py): three technicians' phones and a
dispatcher work through the balancer; mid-upload and mid-apply a web host and a worker host
are lost at once; the phones carry on through the survivors; the web host comes back.
`play(cluster, workdir)` plays it and returns what the checks need.

Each phone is the reference client as on a real phone (tests/field/fieldday.py's `Phone`):
screens in this process, the agent (`python -m fieldsync_client run`) a process of its own,
behind a fault proxy of its own that slows its link, so that an upload is still on its way
when the hosts are lost.

Two things are arranged rather than waited for, so the loss lands where it must:
- mid-apply: the dispatcher's desk holds technician 1's work order (a row lock in an open
  transaction) and work2 is told to stop taking tasks, so technician 1's next apply runs on
  work1 and waits there inside its transaction, holding the device's row: the host is lost
  with that transaction open.
- mid-upload: the web host lost is one in the middle of a PATCH: the upload's row holds
  that PATCH's lease (media.services.locks) and the phone sending it is in a tunnel (its
  link stalls) until the host is gone, so that PATCH cannot end first. The lease names no
  host and the PATCH holds no database connection while it reads the body, so the host is
  told by its kernel: the one reading a request connection that went quiet with the phone.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from fieldsync_client import Client, Settings
from tests.field.faultproxy import FaultProxy
from tests.field.fieldday import Phone
from tests.helpers import wait_until
from tests.hosts import balancer
from tests.hosts.cluster import WEB_HOSTS, Cluster

KiB = 1024
MiB = 1024 * KiB
ORG = "hosts"
PASSWORD = "hosts-pw-1"
TECHNICIANS = 3
CHECKLIST = ("isolate supply", "replace valve", "pressure test")
# Each phone's link: slow enough that a file takes seconds, so the loss finds one on its way.
BANDWIDTH = 384 * KiB
LATENCY = 0.005
FIRST_FILES = (1536 * KiB, 2 * MiB)
SECOND_FILES = (3 * MiB, 3 * MiB)
LOST_WORKER, SURVIVING_WORKER = "work1", "work2"
SETTLE_TIMEOUT = 240.0
# Postgres drops a vanished client's sessions within about 30 s (devstack.services
# DEAD_CLIENT_SETTINGS); this bound leaves room for a loaded machine.
REAP_TIMEOUT = 120.0
# A phone in a tunnel: how long its link stalls before its web host is looked for, and how
# long a request connection must have received nothing to count as that phone's.
TUNNEL = 1.0
QUIET = 0.5


@dataclass
class Loss:
    """What was in flight when the hosts were lost, and how the system came through."""

    web: str = ""
    survivor: str = ""
    at: float = 0.0  # wall clock, like the balancer's log
    held_device: str = ""  # technician 1's device, whose apply was frozen on work1
    pending: set[str] = field(default_factory=set)  # ops pending at the loss
    unfinished: dict[str, str] = field(default_factory=dict)  # upload → status at the loss
    # The upload the lost web host was writing, and its offset in Postgres: what the store
    # had confirmed.
    writing: dict[str, int] = field(default_factory=dict)
    # That upload's lease at the loss: the cut PATCH's token, and when it lapses unless
    # renewed (epoch, by Postgres' clock), and what was seen of it after: (when, by Postgres'
    # clock; still the cut PATCH's), until another request took it.
    lease_token: str = ""
    lease_lapses_at: float = 0.0
    lease_seen: list[tuple[float, bool]] = field(default_factory=list)
    lease_taken_at: float = 0.0  # by Postgres' clock
    # Sessions of the lost hosts Postgres still had right after: (host, in a transaction,
    # holding rows of the devices' sync states).
    orphans: list[tuple[str, bool, bool]] = field(default_factory=list)
    held_row_locked: bool = False  # the held device's sync-state row, right after the loss
    down_at: float = 0.0  # the balancer took the lost web host out of rotation
    reaped_at: float = 0.0  # Postgres had dropped every session of the lost hosts
    returning_at: float = 0.0  # the web host's cable went back in
    back_at: float = 0.0  # the web host was back in rotation


@dataclass
class Run:
    cluster: Cluster
    workdir: Path
    desk: Client | None = None
    phones: list[Phone] = field(default_factory=list)
    loss: Loss = field(default_factory=Loss)
    rng: random.Random = field(default_factory=lambda: random.Random(20261202))
    notes: int = 0

    @property
    def dispatcher(self) -> Client:
        assert self.desk is not None
        return self.desk


def play(cluster: Cluster, workdir: Path) -> Run:
    run = Run(cluster, workdir)
    try:
        morning(run)
        both_of_everything(run)
        lose_a_web_host_and_a_worker_host(run)
        carry_on_through_the_survivors(run)
        bring_the_web_host_back(run)
        settle(run)
    finally:
        for phone in run.phones:
            phone.stop_agent()
            phone.proxy.stop()
    return run


# --- the run --------------------------------------------------------------------------------


def morning(run: Run) -> None:
    """Accounts; the dispatcher plans one work order per technician; phones sign in through
    their own links to the balancer and pull their work."""
    cluster = run.cluster
    cluster.create_user(ORG, "dispatcher", "desk", PASSWORD)
    run.desk = Client.setup(run.workdir / "desk", cluster.base_url, "desk", PASSWORD)
    upstream = (cluster.address("lb"), balancer.PORT)
    for index in range(TECHNICIANS):
        username = f"tech{index + 1}"
        cluster.create_user(ORG, "technician", username, PASSWORD)
        proxy = FaultProxy(upstream, name=username)
        proxy.start()
        proxy.set_bandwidth(BANDWIDTH)
        proxy.set_latency(LATENCY)
        data = run.workdir / username
        phone = Phone(
            name=username,
            username=username,
            data=data,
            proxy=proxy,
            ui=Client.setup(data, proxy.url, username, PASSWORD, settings=Settings()),
            settings_args=["--backoff-base", "0.5", "--chunk-mib", "1", "--sync-interval", "2"],
            log=run.workdir / f"{username}-agent.log",
        )
        run.phones.append(phone)
        work_order = run.dispatcher.create(
            "work_order",
            {
                "title": f"Valve at {index + 1} Quay Street",
                "address": f"{index + 1} Quay Street",
                "customer_name": "Quay Flats",
                "priority": "normal",
                "status": "scheduled",
                "assigned_to": username,
            },
        )
        phone.visits.append(work_order)
        for label in CHECKLIST:
            run.dispatcher.create("checklist_item", {"work_order_id": work_order, "label": label})
    desk_sync(run)
    for phone in run.phones:
        phone.start_agent()
    for phone in run.phones:
        wait_until(
            lambda: len(phone.ui.records("checklist_item")) == len(CHECKLIST),  # noqa: B023
            timeout=60,
            message=f"{phone.name} never pulled its work order",
        )


def both_of_everything(run: Run) -> None:
    """On site: statuses, checklist, a comment and photos from every phone, until both web
    hosts have served requests and both workers have applied ops."""
    for phone in run.phones:
        wo = phone.visits[0]
        phone.ui.update("work_order", wo, status="en_route")
        phone.ui.update("work_order", wo, status="on_site", arrived_at="2026-12-02T08:00:00Z")
        for item in items(phone)[:2]:
            phone.ui.update("checklist_item", item, done=True)
        phone.ui.comment(wo, f"{phone.name}: on site, water off")
        for n, size in enumerate(FIRST_FILES, start=1):
            attach(run, phone, f"before_{n}.jpg", size)
    cluster = run.cluster
    # Pushes ring one shared drain (coalesced), so which worker finds the ops is up to the
    # queue: each worker takes a turn alone (the other told to stop taking tasks) until it
    # has applied ops of its own.
    for busy, other in ((LOST_WORKER, SURVIVING_WORKER), (SURVIVING_WORKER, LOST_WORKER)):
        cluster.consume(other, on=False)
        wait_until(
            lambda: cluster.worker_idle(other),  # noqa: B023
            timeout=60,
            interval=0.2,
            message=f"{other} never finished the tasks it had",
        )
        before = len(cluster.log_events(busy, "celery-worker", "ops.finished"))
        for phone in run.phones:
            note(run, phone)
        wait_until(
            lambda: len(cluster.log_events(busy, "celery-worker", "ops.finished")) > before,  # noqa: B023
            timeout=60,
            interval=0.3,
            message=f"{busy} applied no op while it worked alone",
        )
        cluster.consume(other, on=True)
        cluster.event(f"{busy} applied ops while {other} took no tasks")

    def idle_web_hosts() -> set[str]:
        return set(WEB_HOSTS) - {r.server for r in balancer.requests_logged(cluster.request_log)}

    wait_until(lambda: not idle_web_hosts(), timeout=120, interval=0.5, message="a web host idled")
    cluster.event("both web hosts have served phones; both workers have applied ops")


def lose_a_web_host_and_a_worker_host(run: Run) -> None:
    cluster, loss = run.cluster, run.loss
    for phone in run.phones:
        for n, size in enumerate(SECOND_FILES, start=1):
            attach(run, phone, f"after_{n}.jpg", size)
    held = run.phones[0]
    loss.held_device = held.ui.store.device_id
    cluster.consume(SURVIVING_WORKER, on=False)
    wait_until(
        lambda: cluster.worker_idle(SURVIVING_WORKER),
        timeout=60,
        interval=0.2,
        message=f"{SURVIVING_WORKER} never finished the tasks it had",
    )
    with psycopg.connect(cluster.database_url, connect_timeout=5) as desk:
        (desk_pid,) = desk.execute("SELECT pg_backend_pid()").fetchone() or (0,)
        desk.execute(
            "SELECT id FROM workorders_workorder WHERE id = %s FOR UPDATE", (held.visits[0],)
        )
        cluster.event(f"the desk holds {held.name}'s work order; work2 takes no new tasks")
        note(run, held)
        wait_until(
            lambda: apply_waiting_on(cluster, LOST_WORKER, desk_pid),
            timeout=60,
            interval=0.05,
            message=f"{held.name}'s apply never started on {LOST_WORKER}",
        )
        stalled = catch_a_patch(run)
        loss.web = stalled.web
        loss.survivor = next(name for name in WEB_HOSTS if name != loss.web)
        loss.at = cluster.lose([loss.web, LOST_WORKER])
        # What the lost hosts left: their sessions (Postgres cannot know they are gone), the
        # row locks those hold, the upload's lease no one renews now, the ops and uploads no
        # one is working on now.
        lost = (cluster.address(loss.web), cluster.address(LOST_WORKER))
        loss.orphans = orphans(cluster, lost)
        loss.held_row_locked = sync_state_locked(cluster, loss.held_device)
        ((offset, token, lapses_at),) = cluster.sql(
            'SELECT "offset", lease_token::text, extract(epoch FROM lease_expires_at)'
            " FROM media_upload WHERE id = %s",
            (stalled.upload,),
        )
        if token != stalled.token:
            raise AssertionError("the PATCH caught ended before its host was lost")
        loss.writing = {stalled.upload: offset}
        loss.lease_token, loss.lease_lapses_at = token, float(lapses_at)
        loss.pending = {row[0] for row in pending_ops(cluster)}
        loss.unfinished = dict(
            cluster.sql("SELECT id::text, status FROM media_upload WHERE status != 'attached'")
        )
        cluster.consume(SURVIVING_WORKER, on=True)
        desk.rollback()
    for phone in stalled.phones:
        phone.proxy.set_stalled(False)
    cluster.wait_for_servers(
        lambda states: states[loss.web].down,
        f"the balancer kept sending phones to the lost {loss.web}",
        timeout=30,
    )
    loss.down_at = cluster.event_now(f"the balancer took {loss.web} out (/readyz unanswered)")


@dataclass(frozen=True)
class Stalled:
    web: str  # the web host in the middle of a PATCH
    phones: list[Phone]  # whose links are stalled, so that PATCH cannot end
    upload: str  # the upload it writes
    token: str  # its lease's token


def catch_a_patch(run: Run) -> Stalled:
    """A web host in the middle of a PATCH, kept there: the phone sending it loses its
    signal for a moment (its link stalls), so the PATCH cannot end before the host is lost.

    The PATCH is found by its lease in the upload's row; the web host it runs on, by that
    host's kernel: with the phone in a tunnel, it is the one web host holding a request
    connection that received nothing for QUIET seconds. A PATCH whose last bytes were already
    past the phone's link may still end (its lease is given back), and a web host may be
    quiet for other reasons (a request waiting for the object store): then the phone gets
    its signal back and another PATCH is caught."""
    cluster = run.cluster
    owner = {upload: phone for phone in run.phones for upload in phone.files}
    for _ in range(10):
        leases = wait_until(
            lambda: {u: t for u, t in leases_held(cluster).items() if u in owner},
            timeout=60,
            interval=0.02,
            message="no web host was writing an upload",
        )
        upload, token = next(iter(leases.items()))
        phone = owner[upload]
        phone.proxy.set_stalled(True)
        with contextlib.suppress(AssertionError):
            # Bytes already past the link reach the web host within milliseconds.
            wait_until(
                lambda: leases_held(cluster).get(upload) != token,  # noqa: B023
                timeout=TUNNEL,
                interval=0.1,
            )
            phone.proxy.set_stalled(False)
            continue
        quiet = [name for name in WEB_HOSTS if cluster.quiet_requests(name, QUIET)]
        if len(quiet) == 1 and leases_held(cluster).get(upload) == token:
            cluster.event(
                f"{quiet[0]} is in the middle of a PATCH; the phone sending it is in a tunnel"
            )
            return Stalled(quiet[0], [phone], upload, token)
        phone.proxy.set_stalled(False)
    raise AssertionError("every PATCH caught ended, or its host was not told, before the loss")


def carry_on_through_the_survivors(run: Run) -> None:
    """Phones keep working; the cut upload's lease lapses and the phone's retry takes it on
    the surviving web host; Postgres drops the lost hosts' sessions (and their row locks);
    the held apply, the cut uploads and the verifications finish on the survivors."""
    cluster, loss = run.cluster, run.loss
    for phone in run.phones:
        note(run, phone)
        toggle(phone)
        phone.ui.comment(phone.visits[0], f"{phone.name}: carrying on")
    lost = (cluster.address(loss.web), cluster.address(LOST_WORKER))
    (upload,) = loss.writing

    def watched() -> bool:
        if not loss.lease_taken_at:
            ((now, token),) = cluster.sql(
                "SELECT extract(epoch FROM now()), lease_token::text FROM media_upload"
                " WHERE id = %s",
                (upload,),
            )
            held = token == loss.lease_token
            loss.lease_seen.append((float(now), held))
            if not held:
                loss.lease_taken_at = float(now)
                cluster.event_now(f"the cut PATCH's lease lapsed; {loss.survivor} took the upload")
        if not loss.reaped_at and not orphans(cluster, lost):
            loss.reaped_at = cluster.event_now(
                "Postgres has dropped every session of the lost hosts"
            )
        return bool(loss.lease_taken_at and loss.reaped_at)

    wait_until(
        watched,
        timeout=REAP_TIMEOUT,
        interval=0.2,
        message="the cut upload's lease was never taken over, or Postgres kept the lost"
        " hosts' sessions (and their row locks)",
    )
    wait_for_phones(run)
    cluster.event("every phone finished through the survivors")


def bring_the_web_host_back(run: Run) -> None:
    cluster, loss = run.cluster, run.loss
    loss.returning_at = time.time()
    cluster.bring_back_web(loss.web)
    cluster.wait_for_servers(
        lambda states: states[loss.web].up, f"the balancer never took {loss.web} back"
    )
    loss.back_at = cluster.event_now(f"the balancer has {loss.web} back in rotation")

    def served_again() -> bool:
        for phone in run.phones:
            note(run, phone)
        return any(
            r.server == loss.web and r.began >= loss.back_at and 200 <= r.status < 300
            for r in balancer.requests_logged(cluster.request_log)
        )

    wait_until(served_again, timeout=60, interval=1.0, message=f"{loss.web} served no one")


def settle(run: Run) -> None:
    wait_for_phones(run)
    for phone in run.phones:
        phone.ui.sync_once()
    desk_sync(run)
    run.cluster.event("settled")


# --- helpers --------------------------------------------------------------------------------


def desk_sync(run: Run) -> None:
    def done() -> bool:
        run.dispatcher.sync_once()
        return run.dispatcher.store.op_counts().keys() <= {"applied", "conflict", "rejected"}

    wait_until(done, timeout=120, interval=0.3, message="the dispatcher's ops never applied")


def wait_for_phones(run: Run) -> None:
    for phone in run.phones:
        wait_until(
            phone.finished,
            timeout=SETTLE_TIMEOUT,
            interval=0.5,
            message=f"{phone.name} never finished: {phone.ui.status()}",
        )


def items(phone: Phone) -> list[str]:
    return sorted(str(record["entity_id"]) for record in phone.ui.records("checklist_item"))


def note(run: Run, phone: Phone) -> None:
    """A technician's note: a new value every time, so every op changes its record."""
    run.notes += 1
    phone.ui.update("work_order", phone.visits[0], technician_notes=f"note {run.notes}")


def toggle(phone: Phone) -> None:
    item = items(phone)[-1]
    record = phone.ui.record("checklist_item", item)
    assert record is not None
    fields = record["fields"]
    assert isinstance(fields, dict)
    phone.ui.update("checklist_item", item, done=not fields["done"])


def attach(run: Run, phone: Phone, name: str, size: int) -> None:
    folder = run.workdir / f"{phone.name}-camera"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex[:6]}-{name}"
    path.write_bytes(run.rng.randbytes(size))
    attachment_id = phone.ui.attach(
        phone.visits[0], path, kind="photo", note=f"{name} by {phone.name}", filename=name
    )
    phone.files[attachment_id] = path


def pending_ops(cluster: Cluster) -> list[tuple[Any, ...]]:
    return cluster.sql("SELECT op_id::text FROM operations_operation WHERE status = 'pending'")


def apply_waiting_on(cluster: Cluster, worker: str, holder: int) -> bool:
    """A session of `worker`'s host waits for a lock `holder` has: an apply, inside its
    transaction (holding its device's row), waiting for the held work order."""
    rows = cluster.sql(
        "SELECT 1 FROM pg_stat_activity WHERE host(client_addr) = %s"
        " AND %s = ANY(pg_blocking_pids(pid))",
        (cluster.address(worker), holder),
    )
    return bool(rows)


def leases_held(cluster: Cluster) -> dict[str, str]:
    """The uploads a request is writing right now (in the middle of a PATCH), by their
    lease in the upload's row (media.services.locks: a token, and an expiry by Postgres'
    clock that its holder keeps renewing), and each lease's token."""
    rows = cluster.sql(
        "SELECT id::text, lease_token::text FROM media_upload"
        " WHERE lease_token IS NOT NULL AND lease_expires_at > now()"
    )
    return dict(rows)


def sync_state_locked(cluster: Cluster, device: str) -> bool:
    """Whether a transaction holds the device's sync-state row (the apply's claim on it)."""
    with psycopg.connect(cluster.database_url, connect_timeout=5) as conn:
        exists = conn.execute(
            "SELECT 1 FROM operations_devicesyncstate WHERE device_id = %s", (device,)
        ).fetchall()
        free = conn.execute(
            "SELECT 1 FROM operations_devicesyncstate WHERE device_id = %s FOR UPDATE SKIP LOCKED",
            (device,),
        ).fetchall()
        conn.rollback()
    return bool(exists) and not free


def orphans(cluster: Cluster, addresses: tuple[str, ...]) -> list[tuple[str, bool, bool]]:
    """Sessions Postgres still keeps for hosts that are gone: (host, in a transaction,
    holding rows of the devices' sync states: `SELECT … FOR UPDATE` took the table's
    RowShareLock, as an apply round's claim does)."""
    rows = cluster.sql(
        "SELECT host(a.client_addr), a.xact_start IS NOT NULL, EXISTS ("
        "  SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'relation'"
        "  AND l.relation = 'operations_devicesyncstate'::regclass"
        "  AND l.mode = 'RowShareLock' AND l.granted)"
        " FROM pg_stat_activity a WHERE host(a.client_addr) = ANY(%s)",
        (list(addresses),),
    )
    names = {cluster.address(name): name for name in cluster.hosts}
    return [(names[address], bool(xact), bool(states)) for address, xact, states in rows]
