"""fieldsync on several hosts, each a network namespace of its own (tests/hosts/network.py):

    svc    Postgres, Redis, SeaweedFS (embedded, as devstack starts them) and Celery beat
    lb     HAProxy, health-checking each web host's /readyz
    web1   gunicorn from gunicorn.conf.py, as `make run` runs it
    web2   the same
    work1  a Celery worker
    work2  a Celery worker whose clock runs SKEW seconds ahead (libfaketime)

Beat runs on the services host: there must be exactly one (two would ring every periodic task
twice), and a host the system must survive losing is no place for it, since the sweeps it
rings are what finishes the work a lost worker left. The services host is the one whose loss
stops everything anyway.

No two hosts share a directory: each has its own working directory, TMPDIR, HOME and
Prometheus multiprocess directory under `workdir/<host>/`. They share the checkout (the
"image" every host runs) and the network, nothing else. Every process here is started in its
host's namespace, and losing a host means pulling its cable and SIGKILLing everything in it,
so nothing it says on the way down reaches anyone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, LiteralString

import kombu.exceptions
import psycopg
import redis
import requests
from celery import Celery

from bench.processes import ROOT, Child, tail, wait_for
from devstack import services
from devstack.ensure_bucket import S3Settings
from tests.hosts import balancer, network
from tests.hosts.network import Host

log = logging.getLogger("fieldsync.hosts")

WEB_PORT = 8000
SKEW = 5  # seconds work2's clock runs ahead
START_TIMEOUT = 90.0
# Last octet of each host's address on the bridge.
ADDRESSES = {"svc": 2, "lb": 5, "web1": 11, "web2": 12, "work1": 21, "work2": 22}
WEB_HOSTS = ("web1", "web2")
WORKER_HOSTS = ("work1", "work2")
SKEWED = "work2"
FAKETIME_LIBRARIES = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
)
# Settings every host shares, as a deployment's environment would give them. The sweeps run
# every 2 s, a verification a dead worker held is handed out again after 20 s, and an
# upload's lease a dead web host held lapses 15 s after its last renewal: the defaults (15 s,
# 5 min, 60 s) are sized for a real day, longer than this test may take. The lease stays
# above twice the read timeout (settings.py, docs/deploy.md): its holder renews it every
# third, and a wait for the phone lasts at most the read timeout.
SHARED_SETTINGS = {
    "SECRET_KEY": "fieldsync-hosts-not-a-secret",
    "PYTHONUNBUFFERED": "1",
    "SWEEP_INTERVAL_SECONDS": "2",
    "SYNC_STALE_PENDING_SECONDS": "2",
    "SYNC_GAP_TIMEOUT_SECONDS": "30",
    "UPLOADS_VERIFY_LEASE_SECONDS": "20",
    "UPLOADS_READ_TIMEOUT_SECONDS": "6",
    "UPLOADS_LOCK_LEASE_SECONDS": "15",
}
# What the test's own environment may hold that would point a host at something outside.
FOREIGN = (
    "DATABASE_URL", "REDIS_URL", "S3_ENDPOINT_URL", "S3_PUBLIC_ENDPOINT_URL", "S3_BUCKET",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PROMETHEUS_MULTIPROC_DIR",
    "CELERY_METRICS_PORT", "SECRET_KEY", "ALLOWED_HOSTS", "TRUSTED_PROXIES", "TMPDIR", "HOME",
)  # fmt: skip


class ClusterError(RuntimeError):
    """The cluster could not be started, or a host could not be lost or brought back."""


def faketime_library() -> str | None:
    return next((path for path in FAKETIME_LIBRARIES if Path(path).exists()), None)


class Cluster:
    """The hosts and what runs on them; a context manager that leaves nothing behind."""

    database_url: str
    redis_url: str
    s3: S3Settings

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.hosts: dict[str, Host] = {}
        self.children: dict[str, Child] = {}  # by host name: the host's one main process
        self.beat: Child | None = None
        self.celery: Celery | None = None
        self.events: list[tuple[float, str]] = []  # (wall clock, what happened)
        self.startup_states: dict[str, balancer.ServerState] = {}

    # --- life cycle -----------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Everything in every host killed, the namespaces and the bridge removed. The
        services host is stopped gracefully first: a SIGKILLed Postgres leaves its shared
        memory behind."""
        if self.celery is not None:
            self.celery.close()
            self.celery = None
        try:
            for name, host in self.hosts.items():
                if name != "svc":
                    host.kill_everything()
            for child in (self.beat, self.children.get("svc")):
                if child is not None and child.process.poll() is None:
                    child.process.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.process.wait(services.STOP_TIMEOUT)
        finally:
            network.remove_leftovers()
            for child in [*self.children.values(), *([self.beat] if self.beat else [])]:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.process.wait(5)
            self._forget_fake_clock()

    def _forget_fake_clock(self) -> None:
        """libfaketime's shared memory, named after the pid that loaded it first (the
        skewed host's main process), outlives a SIGKILL: remove it."""
        skewed = self.children.get(SKEWED)
        if skewed is not None:
            for name in (
                f"faketime_shm_{skewed.process.pid}",
                f"sem.faketime_sem_{skewed.process.pid}",
            ):
                (Path("/dev/shm") / name).unlink(missing_ok=True)

    def _start(self) -> None:
        network.remove_leftovers()
        network.make_bridge()
        for name, octet in ADDRESSES.items():
            self.hosts[name] = network.make_host(name, octet)
        for name in [*ADDRESSES, "console"]:
            for sub in ("logs", "tmp", "home", "prometheus"):
                (self.workdir / name / sub).mkdir(parents=True, exist_ok=True)
        self._start_services()
        self.manage("migrate", "--noinput")
        self.beat = self._spawn(
            "svc",
            "beat",
            [*_celery("beat"), "--schedule", str(self.workdir / "svc" / "beat-schedule")],
        )
        self.celery = Celery("fieldsync-hosts", broker=self.redis_url, set_as_current=False)
        self._start_balancer()
        for name in WEB_HOSTS:
            self.start_web(name)
        # No worker yet: /readyz answers 503, and the balancer must hold both web hosts out.
        # L7STS: the host answered its check with a failing status (the 503); while the next
        # check is under way HAProxy shows "* L7STS" and no code yet.
        self.wait_for_servers(
            lambda states: all(
                s.down and "L7STS" in s.check_status and s.check_code in ("503", "0")
                for s in states.values()
            ),
            "the balancer never took the web hosts out while /readyz said 503",
        )
        self.startup_states = balancer.servers(self.address("lb"))
        for name in WORKER_HOSTS:
            self.start_worker(name)
        self.wait_for_servers(
            lambda states: all(s.up for s in states.values()),
            "the balancer never put the web hosts in rotation",
        )
        self.event("every host up; the balancer routes to web1 and web2")

    def _start_services(self) -> None:
        svc = self.hosts["svc"]
        out = self.workdir / "svc" / "logs" / "services.log"
        command = [sys.executable, "-m", "tests.hosts.servicehost", str(self.workdir / "svc")]
        command += [svc.address, network.NETWORK]
        with out.open("ab") as errors:
            agent = subprocess.Popen(
                svc.command(command),
                cwd=ROOT,
                env=self._own_env("svc"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
                start_new_session=True,
                preexec_fn=services.die_with_parent(),  # noqa: PLW1509 (only a prctl call)
            )
        self.children["svc"] = Child("services", agent, out)
        assert agent.stdout is not None
        ready, _, _ = select.select([agent.stdout], [], [], START_TIMEOUT)
        line = agent.stdout.readline() if ready else b""
        if not line:
            raise ClusterError(f"the services host did not start:\n{tail(out)}")
        started = json.loads(line)
        self.database_url = started["database_url"]
        self.redis_url = started["redis_url"]
        self.s3 = S3Settings.from_env(started["s3"])

    def _start_balancer(self) -> None:
        lb = self.address("lb")
        servers = {name: self.address(name) for name in WEB_HOSTS}
        config = self.workdir / "lb" / "haproxy.cfg"
        config.write_text(balancer.config(lb, servers, WEB_PORT))
        child = self._spawn("lb", "haproxy", ["haproxy", "-db", "-f", str(config)])
        wait_for(self._stats_answer, "HAProxy", child, timeout=START_TIMEOUT)

    def _stats_answer(self) -> bool:
        try:
            return bool(balancer.servers(self.address("lb")))
        except requests.RequestException:
            return False

    # --- hosts ----------------------------------------------------------------------------
    def address(self, name: str) -> str:
        return self.hosts[name].address

    @property
    def base_url(self) -> str:
        """Where phones reach the system: the balancer."""
        return f"http://{self.address('lb')}:{balancer.PORT}"

    @property
    def request_log(self) -> Path:
        return self.workdir / "lb" / "logs" / "haproxy.log"

    def worker_name(self, name: str) -> str:
        return f"worker@{self.hosts[name].namespace}"

    def _own_env(self, name: str) -> dict[str, str]:
        """The test's environment without what points elsewhere, and the host's directories."""
        env = {key: value for key, value in os.environ.items() if key not in FOREIGN}
        home = self.workdir / name
        env.update(TMPDIR=str(home / "tmp"), HOME=str(home / "home"))
        return env

    def host_env(self, name: str) -> dict[str, str]:
        """What a host's processes get: the settings a deployment gives every host (where
        the services are, the shared secret), and the host's own directories."""
        env = self._own_env(name)
        env.update(SHARED_SETTINGS)
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            **self.s3.env(),
            # Phones name the balancer; the console's probes name each web host.
            ALLOWED_HOSTS=",".join(self.address(n) for n in ("lb", *WEB_HOSTS)) + ",127.0.0.1",
            # The client's address comes from X-Forwarded-For only behind the balancer.
            TRUSTED_PROXIES=f"{self.address('lb')}/32",
        )
        if name in (*WEB_HOSTS, *WORKER_HOSTS):
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.workdir / name / "prometheus")
        if name == SKEWED:
            library = faketime_library()
            if library is None:
                raise ClusterError("libfaketime is not installed (apt-get install faketime)")
            # Wall clock only: the kernel's monotonic clock is one per machine anyway.
            env.update(LD_PRELOAD=library, FAKETIME=f"+{SKEW}s", FAKETIME_DONT_FAKE_MONOTONIC="1")
        return env

    def start_web(self, name: str) -> None:
        """gunicorn on the host, as `make run` runs it; returns once it answers /healthz."""
        # Like devstack: the metrics files belong to one run of the web processes.
        metrics = self.workdir / name / "prometheus"
        shutil.rmtree(metrics, ignore_errors=True)
        metrics.mkdir()
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
        web = self._spawn(name, "gunicorn", [*command, "syncserver.wsgi:application"])
        url = f"http://{self.address(name)}:{WEB_PORT}/healthz"

        def answers() -> bool:
            try:
                return requests.get(url, timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(answers, f"gunicorn on {name}", web, timeout=START_TIMEOUT)

    def start_worker(self, name: str) -> None:
        command = [*_celery("worker"), "-Q", "fieldsync", "-c", "2", "--pool", "prefork"]
        # No gossip or mingle: they only talk to other workers and slow the start down.
        command += ["-n", self.worker_name(name), "--without-gossip", "--without-mingle"]
        worker = self._spawn(name, "celery-worker", command)
        wait_for(
            lambda: self.worker_answers(name), f"Celery worker on {name}", worker, START_TIMEOUT
        )

    def worker_answers(self, name: str) -> bool:
        assert self.celery is not None
        try:
            replies = self.celery.control.ping(destination=[self.worker_name(name)], timeout=0.5)
        except (kombu.exceptions.OperationalError, redis.RedisError):
            return False
        return bool(replies)

    def worker_idle(self, name: str) -> bool:
        """The worker runs no task and holds none in reserve."""
        assert self.celery is not None
        inspect = self.celery.control.inspect(destination=[self.worker_name(name)], timeout=1.0)
        active, reserved = inspect.active(), inspect.reserved()
        if not active or not reserved:
            return False  # no answer
        return not any(active.values()) and not any(reserved.values())

    def quiet_requests(self, name: str, quiet_for: float) -> int:
        """How many request connections the web host `name` holds that received nothing for
        `quiet_for` seconds, by its own kernel (each socket's time since data last came)."""
        argv = ["ss", "-H", "-t", "-i", "-n", "state", "established"]
        argv += ["(", "sport", "=", f":{WEB_PORT}", ")"]
        listing = subprocess.run(
            self.hosts[name].command(argv), capture_output=True, text=True, check=True, timeout=10
        ).stdout
        # Each socket's details hold one lastrcv (ms), or none when it is 0.
        since = [int(ms) for ms in re.findall(r"\blastrcv:(\d+)", listing)]
        return sum(ms >= quiet_for * 1000 for ms in since)

    def consume(self, name: str, on: bool) -> None:
        """Tell a worker to stop (or start again) taking tasks from the queue."""
        assert self.celery is not None
        control = self.celery.control
        change = control.add_consumer if on else control.cancel_consumer
        replies = change("fieldsync", destination=[self.worker_name(name)], reply=True)
        if not replies:
            raise ClusterError(f"{name}'s worker did not answer {change.__name__}")

    def lose(self, names: Sequence[str]) -> float:
        """Lose whole hosts at once: every cable pulled first, then every process SIGKILLed.
        Returns when it happened (wall clock)."""
        hosts = [self.hosts[name] for name in names]
        for host in hosts:
            host.cut()
        at = time.time()
        for host in hosts:
            host.kill_everything()
        for name in names:
            child = self.children.pop(name, None)
            if child is not None:
                child.process.wait()
        self.event(f"lost {' and '.join(names)}: cables pulled, every process SIGKILLed", at)
        return at

    def bring_back_web(self, name: str) -> None:
        self.hosts[name].reconnect()
        self.start_web(name)
        self.event(f"{name} back: cable in, gunicorn started")

    def logs(self, name: str, process: str) -> str:
        return (self.workdir / name / "logs" / f"{process}.log").read_text(errors="replace")

    def log_events(self, name: str, process: str, event: str) -> list[dict[str, Any]]:
        """The structured (JSON) lines of `event` a process on a host logged."""
        found = []
        for line in self.logs(name, process).splitlines():
            if f'"{event}"' not in line or not line.startswith("{"):
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == event:
                    found.append(record)
        return found

    # --- the operator's console -----------------------------------------------------------
    def manage(self, *args: str) -> str:
        """`manage.py *args` from the console, as a deployment's one-shot jobs run."""
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.host_env("console"),
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(
                f"manage.py {' '.join(args)} exited with {result.returncode}:\n"
                f"{result.stdout[-2000:]}{result.stderr[-4000:]}"
            )
        return result.stdout

    def create_user(self, org: str, role: str, username: str, password: str) -> None:
        self.manage(
            "create_field_user", "--org", org, "--role", role,
            "--username", username, "--password", password,
        )  # fmt: skip

    def sql(self, query: LiteralString, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def wait_for_servers(
        self,
        condition: Callable[[dict[str, balancer.ServerState]], bool],
        message: str,
        timeout: float = START_TIMEOUT,
    ) -> dict[str, balancer.ServerState]:
        """Poll the balancer's view of the web hosts until `condition(states)` holds."""
        deadline = time.monotonic() + timeout
        states: dict[str, balancer.ServerState] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                states = balancer.servers(self.address("lb"))
                if condition(states):
                    return states
            time.sleep(0.2)
        raise ClusterError(f"{message}; last seen: {states}")

    def event(self, description: str, at: float | None = None) -> None:
        self.events.append((at or time.time(), description))
        log.info("%s", description)
        print(f"[hosts] {description}", flush=True)

    def event_now(self, description: str) -> float:
        """Note what just happened; returns when (wall clock, like the balancer's log)."""
        at = time.time()
        self.event(description, at)
        return at

    # --- processes ------------------------------------------------------------------------
    def _spawn(self, name: str, process: str, argv: list[str]) -> Child:
        out = self.workdir / name / "logs" / f"{process}.log"
        with out.open("ab") as sink:
            popen = subprocess.Popen(
                self.hosts[name].command(argv),
                cwd=ROOT,
                env=self.host_env(name),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=services.die_with_parent(),  # noqa: PLW1509 (only a prctl call)
            )
        child = Child(f"{process} on {name}", popen, out)
        if process != "beat":
            self.children[name] = child
        return child


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "syncserver", *args, "--loglevel", "INFO"]
