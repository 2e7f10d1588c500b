"""A scripted field day: technicians' phones (the reference client, each its own process
behind its own fault proxy) and a dispatcher, against the whole stack, with faults on both
sides. `run_day(plan)` plays it and returns what the end-of-day checks need and the report.

Each technician is two things, as on a real phone: the app's screens (a `Client` in this
process, used only for local edits and reads) and the background agent (`python -m
fieldsync_client run`, a process of its own that syncs and uploads, and that a fault may
SIGSTOP, SIGCONT or SIGKILL). They share only the SQLite file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fieldsync_client import Client, Network, Settings
from fieldsync_client.transport import Api
from tests.field.faultproxy import FaultProxy
from tests.field.stack import Stack
from tests.helpers import wait_until

KiB = 1024
MiB = 1024 * KiB
ROOT = Path(__file__).resolve().parents[2]
ORG = "fieldday"
PASSWORD = "field-day-pw-1"
CHECKLIST = ("isolate supply", "replace valve", "pressure test")


@dataclass(frozen=True)
class Plan:
    name: str
    technicians: int
    photos: int  # per technician, split over the two visits
    photo_bytes: int
    videos: int  # per technician, recorded at the second visit
    video_bytes: int
    lock_seconds: float  # "phone locked": how long the agent is frozen
    backoff_base: float  # the client's first retry wait (15 s on a real phone)
    chunk_mib: float
    settle_timeout: float  # how long the phones get to finish once every fault is over
    # The site's wifi: latency and a bandwidth cap widen the windows in which a fault can
    # land mid-transfer; the short plan's files are otherwise gone in milliseconds.
    site_latency: float
    wifi_bandwidth: float | None


SHORT = Plan(
    "short",
    technicians=3,
    photos=4,
    photo_bytes=1536 * KiB,
    videos=1,
    video_bytes=16 * MiB,
    lock_seconds=3,
    backoff_base=0.5,
    chunk_mib=1,
    settle_timeout=180,
    site_latency=0.03,
    wifi_bandwidth=4 * MiB,
)
FULL = Plan(
    "full",
    technicians=3,
    photos=20,
    photo_bytes=3 * MiB,
    videos=2,
    video_bytes=100 * MiB,
    lock_seconds=120,
    backoff_base=2,
    chunk_mib=4,
    settle_timeout=1200,
    site_latency=0.005,
    wifi_bandwidth=None,
)


@dataclass
class Phone:
    """One technician's phone: screens (`ui`), agent process, fault proxy, files."""

    name: str
    username: str
    data: Path
    proxy: FaultProxy
    ui: Client
    settings_args: list[str]
    log: Path
    agent: subprocess.Popen[bytes] | None = None
    files: dict[str, Path] = field(default_factory=dict)  # attachment_id → local file
    visits: list[str] = field(default_factory=list)  # the two work orders
    restarts: int = 0

    def start_agent(self) -> None:
        command = [sys.executable, "-m", "fieldsync_client", "--data", str(self.data)]
        command += [*self.settings_args, "run"]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "client"), "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as out:
            self.agent = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    def kill_agent(self) -> None:
        """The app killed outright: no chance to save anything it had not saved already."""
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGKILL)
            self.agent.wait()
        self.agent = None

    def stop_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGCONT)  # a frozen agent cannot hear SIGTERM
            self.agent.terminate()
            try:
                self.agent.wait(20)
            except subprocess.TimeoutExpired:
                self.kill_agent()
        self.agent = None

    def uploading(self) -> dict[str, Any] | None:
        """A file whose bytes are on their way right now, if any."""
        for item in self.ui.store.uploads():
            if item["status"] == "uploading" and item["offset"] < item["size"]:
                return dict(item)
        return None

    def has_pulled_its_work(self) -> bool:
        return len(self.ui.records("checklist_item")) == 2 * len(CHECKLIST)

    def videos_held_for_wifi(self) -> bool:
        videos = [item for item in self.ui.store.uploads() if item["kind"] == "video"]
        return all(
            state_of(self, item["attachment_id"]) == "paused(waiting_for_wifi)" for item in videos
        )

    def conflicts_on(self, work_order_id: str) -> list[dict[str, Any]]:
        return [c for c in self.ui.conflicts() if c["entity_id"] == work_order_id]

    def ops_settled(self) -> bool:
        return not self.ui.store.ops(("new", "sending", "accepted"))

    def finished(self) -> bool:
        """The agent is alive and has nothing left to do."""
        if self.agent is None or self.agent.poll() is not None:
            raise AssertionError(f"{self.name}'s agent died; its log ends:\n{tail(self.log)}")
        return self.ui.is_idle()

    def wifi(self, plan: Plan) -> None:
        self.proxy.profile("wifi")
        self.proxy.set_latency(plan.site_latency)
        self.proxy.set_bandwidth(plan.wifi_bandwidth)


@dataclass
class Day:
    plan: Plan
    stack: Stack
    workdir: Path
    phones: list[Phone] = field(default_factory=list)
    dispatcher: Client | None = None
    faults: list[tuple[float, str]] = field(default_factory=list)
    expected_open: set[tuple[str, str]] = field(default_factory=set)  # (work order, field)
    started: float = field(default_factory=time.monotonic)
    finished: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(20261123))

    def fault(self, description: str) -> None:
        at = time.monotonic() - self.started
        self.faults.append((at, description))
        print(f"[field day {at:7.1f} s] {description}", flush=True)

    @property
    def desk(self) -> Client:
        assert self.dispatcher is not None
        return self.dispatcher


# --- the day --------------------------------------------------------------------------------


def run_day(plan: Plan, stack: Stack, workdir: Path) -> Day:
    day = Day(plan, stack, workdir)
    try:
        morning(day)
        first_visit(day)
        second_visit(day)
        back_at_the_depot(day)
        end_of_day(day)
        day.finished = time.monotonic()
    finally:
        for phone in day.phones:
            phone.stop_agent()
            phone.proxy.stop()
    return day


def morning(day: Day) -> None:
    """Accounts, the dispatcher's plan, phones signed in behind their proxies."""
    stack, plan = day.stack, day.plan
    stack.create_user(ORG, "dispatcher", "desk", PASSWORD)
    day.dispatcher = Client.setup(day.workdir / "desk", stack.base_url, "desk", PASSWORD)
    for index in range(plan.technicians):
        username = f"tech{index + 1}"
        stack.create_user(ORG, "technician", username, PASSWORD)
        proxy = FaultProxy(("127.0.0.1", stack.web_port), name=username)
        proxy.start()
        data = day.workdir / username
        ui = Client.setup(data, proxy.url, username, PASSWORD, settings=Settings())
        phone = Phone(
            name=username,
            username=username,
            data=data,
            proxy=proxy,
            ui=ui,
            settings_args=[
                "--backoff-base",
                str(plan.backoff_base),
                "--chunk-mib",
                str(plan.chunk_mib),
                "--sync-interval",
                "2",
            ],
            log=day.workdir / f"{username}-agent.log",
        )
        phone.wifi(plan)
        day.phones.append(phone)
        for visit in range(2):
            wo = day.desk.create(
                "work_order",
                {
                    "title": f"Visit {visit + 1} for {username}",
                    "address": f"{10 * index + visit} Harbour Road",
                    "customer_name": "Harbour Flats",
                    "priority": "normal",
                    "status": "scheduled",
                    "assigned_to": username,
                },
            )
            phone.visits.append(wo)
            for label in CHECKLIST:
                day.desk.create("checklist_item", {"work_order_id": wo, "label": label})
    desk_sync(day)
    for phone in day.phones:
        phone.start_agent()
    for phone in day.phones:
        wait_until(
            phone.has_pulled_its_work,
            timeout=60,
            message=f"{phone.name} never pulled its work orders",
        )


def first_visit(day: Day) -> None:
    """On site at visit 1: status, checklist, notes, photos; the radio drops mid-push and
    mid-upload; offline, the technician closes the job while the dispatcher puts it on hold."""
    for phone in day.phones:
        wo = phone.visits[0]
        phone.ui.update("work_order", wo, status="en_route")
        phone.ui.update("work_order", wo, status="on_site", arrived_at=now())
        for item in children(phone, "checklist_item", wo)[:2]:
            phone.ui.update("checklist_item", item, done=True)
        # Airplane mode mid-push: the next answer this phone waits for never arrives.
        phone.proxy.cut_after(0, direction="down")
        phone.ui.comment(wo, "Arrived; customer showed us the leak")
        day.fault(f"{phone.name}: airplane mode mid-push (answer cut)")
        # Good signal at the door: everything so far reaches the server before the lift.
        wait_until(phone.ops_settled, timeout=120, message=f"{phone.name}'s ops never settled")
        for n in range(day.plan.photos // 2):
            attach(day, phone, wo, f"photo_{n + 1:02}.jpg", day.plan.photo_bytes, "photo")
        wait_until(phone.uploading, timeout=120, interval=0.01, message=f"{phone.name} idle")
        phone.proxy.set_offline(True)
        phone.ui.set_network(Network.OFFLINE)
        day.fault(f"{phone.name}: airplane mode mid-upload")
        phone.ui.update(
            "work_order",
            wo,
            status="completed",
            address="what the phone had",
            technician_notes="Replaced the valve; tested at 3 bar",
            completed_at=now(),
        )
        phone.ui.comment(wo, "Done, signed by the customer")
        attach(day, phone, wo, "signature.png", 24 * KiB, "signature")
        day.expected_open.add((wo, "status"))
    desk_sync(day)  # the dispatcher's screen shows the latest version before editing
    for phone in day.phones:
        day.desk.update(
            "work_order", phone.visits[0], status="on_hold", address="Harbour Road 12, rear gate"
        )
    desk_sync(day)
    for phone in day.phones:
        phone.proxy.set_offline(False)
        phone.ui.set_network(Network.WIFI)
        day.fault(f"{phone.name}: back online")


def second_visit(day: Day) -> None:
    """Visit 2 on cellular: photos go, videos wait for wifi; the phone is locked a while,
    the app is killed and reopened; then wifi at the depot."""
    for phone in day.phones:
        phone.proxy.profile("cellular")
        phone.ui.set_network(Network.CELLULAR)
        day.fault(f"{phone.name}: cellular (bandwidth and latency down)")
        wo = phone.visits[1]
        phone.ui.update("work_order", wo, status="on_site", arrived_at=now())
        for n in range(day.plan.videos):
            attach(day, phone, wo, f"video_{n + 1}.mp4", day.plan.video_bytes, "video")
        for n in range(day.plan.photos // 2, day.plan.photos):
            attach(day, phone, wo, f"photo_{n + 1:02}.jpg", day.plan.photo_bytes, "photo")
        for item in children(phone, "checklist_item", wo):
            phone.ui.update("checklist_item", item, done=True)
        attach(day, phone, wo, "signature.png", 24 * KiB, "signature")  # same name, new file
        phone.ui.update("work_order", wo, status="completed", completed_at=now())
    for phone in day.phones:
        wait_until(
            phone.videos_held_for_wifi,
            timeout=30,
            message=f"{phone.name}: videos not held for wifi on cellular",
        )


def back_at_the_depot(day: Day) -> None:
    """Wifi at the depot releases the videos; while they stream, one phone is locked, one
    app is killed and reopened, and the server loses a web process, a worker mid-apply and
    mid-verification, Redis and Postgres."""
    for phone in day.phones:
        phone.wifi(day.plan)
        phone.ui.set_network(Network.WIFI)
        day.fault(f"{phone.name}: cellular → wifi (videos released)")
    locked, killed = day.phones[0], day.phones[-1]
    wait_until(locked.uploading, timeout=120, interval=0.01, message="nothing uploading to freeze")
    assert locked.agent is not None
    locked.agent.send_signal(signal.SIGSTOP)
    locked_at = time.monotonic()
    day.fault(f"{locked.name}: phone locked mid-upload")
    wait_until(killed.uploading, timeout=120, interval=0.01, message="nothing uploading to kill")
    killed.kill_agent()
    day.fault(f"{killed.name}: app killed mid-upload")
    killed.start_agent()
    killed.restarts += 1
    day.fault(f"{killed.name}: app reopened")
    # The locked phone's upload is held open on the server: the web process serving it dies.
    pid = day.stack.kill_web_worker()
    day.fault(f"server: web process {pid} SIGKILLed mid-upload")
    worker_killed_mid_apply(day)
    day.stack.flush_redis()
    day.fault("server: Redis flushed (queued tasks and results gone)")
    wait_until(
        lambda: verifying(day), timeout=300, interval=0.005, message="no upload reached verifying"
    )
    day.stack.kill_worker()
    day.fault("server: Celery worker SIGKILLed mid-verification")
    day.stack.start_worker()
    day.stack.restart_postgres()
    day.fault("server: Postgres restarted")
    # The lock itself: the rest of it is plain waiting, there is nothing to poll for.
    time.sleep(max(0.0, day.plan.lock_seconds - (time.monotonic() - locked_at)))
    locked.agent.send_signal(signal.SIGCONT)
    day.fault(f"{locked.name}: phone unlocked after {time.monotonic() - locked_at:.0f} s")


def worker_killed_mid_apply(day: Day) -> None:
    """A burst of checklist toggles from every phone; the worker is killed while ops wait
    to be applied (the burst is repeated if the worker was too quick for us)."""
    for attempt in range(5):
        for phone in day.phones[1:]:
            for item in children(phone, "checklist_item", phone.visits[0]):
                phone.ui.update("checklist_item", item, done=attempt % 2 == 0)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: pending_ops(day) > 0, timeout=10, interval=0.005)
            day.stack.kill_worker()
            day.fault("server: Celery worker SIGKILLed mid-apply")
            day.stack.start_worker()
            return
    raise AssertionError("the worker never had ops pending to be killed over")


def verifying(day: Day) -> int:
    rows = day.stack.sql("SELECT count(*) FROM media_upload WHERE status = 'verifying'")
    return int(rows[0][0])


def end_of_day(day: Day) -> None:
    """Conflicts settled on two phones (keep mine, accept server), the rest left open for
    the dispatcher; then every phone finishes its queue."""
    choices = ["mine", "server"]
    for phone in day.phones[: len(choices)]:
        wo = phone.visits[0]
        wait_until(
            lambda: phone.conflicts_on(wo),  # noqa: B023 - called before the loop moves on
            timeout=day.plan.settle_timeout,
            message=f"{phone.name} never learned of its conflict",
        )
        (conflict,) = phone.conflicts_on(wo)
        phone.ui.resolve(conflict["id"], choices.pop(0))
        day.expected_open.discard((wo, "status"))
    for phone in day.phones:
        wait_until(
            phone.finished,
            timeout=day.plan.settle_timeout,
            interval=0.5,
            message=f"{phone.name} never finished: {phone.ui.status()}",
        )
    # One more round each, so every phone has the others' last changes too.
    for phone in day.phones:
        phone.ui.sync_once()
    desk_sync(day)


# --- helpers --------------------------------------------------------------------------------


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def desk_sync(day: Day) -> None:
    """The dispatcher's edits applied and pulled (the admin would show them at once)."""

    def done() -> bool:
        day.desk.sync_once()
        return day.desk.store.op_counts().keys() <= {"applied", "conflict", "rejected"}

    wait_until(done, timeout=120, interval=0.3, message="dispatcher's ops never applied")


def children(phone: Phone, entity: str, work_order_id: str) -> list[str]:
    return sorted(
        str(record["entity_id"])
        for record in phone.ui.records(entity)
        if record["fields"].get("work_order_id") == work_order_id
    )


def attach(day: Day, phone: Phone, wo: str, name: str, size: int, kind: str) -> None:
    folder = day.workdir / f"{phone.name}-camera" / wo[:8]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex[:6]}-{name}"
    with path.open("wb") as out:
        left = size
        while left:
            block = day.rng.randbytes(min(left, 4 * MiB))
            out.write(block)
            left -= len(block)
    attachment_id = phone.ui.attach(
        wo,
        path,
        kind=kind,
        note=f"{kind} at {wo[:8]}: {name}",
        job=f"visit-{wo[:8]}",
        filename=name,
    )
    phone.files[attachment_id] = path


def state_of(phone: Phone, attachment_id: str) -> str:
    row = phone.ui.store.upload(attachment_id)
    assert row is not None
    return str(row["status"]) + (f"({row['reason']})" if row["reason"] else "")


def pending_ops(day: Day) -> int:
    return int(
        day.stack.sql("SELECT count(*) FROM operations_operation WHERE status = 'pending'")[0][0]
    )


def tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def server_view(day: Day, phone: Phone) -> dict[tuple[str, str], dict[str, Any]]:
    """Everything in the technician's scope, pulled from scratch with their own token."""
    api = Api(day.stack.base_url, phone.ui.store.get("token"))
    records: dict[tuple[str, str], dict[str, Any]] = {}
    cursor = None
    while True:
        page = api.pull(phone.ui.store.device_id, cursor, 1000)
        for change in page["changes"]:
            key = (str(change["entity"]), str(change["entity_id"]))
            if change["state"] == "live":
                records[key] = dict(change["fields"])
            else:
                records.pop(key, None)
        cursor = page["cursor"]
        if not page["has_more"]:
            api.close()
            return records


def iter_ops(day: Day) -> Iterator[tuple[Phone, Any]]:
    for phone in day.phones:
        for op in phone.ui.store.ops():
            yield phone, op


def jsonable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


Check = Callable[[Day], None]
