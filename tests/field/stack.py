"""The whole fieldsync system on one machine, started from a test and abused by it.

Postgres, Redis and SeaweedFS are always embedded, started from data directories under the
workdir, never a developer's or CI's: the faults stop, restart and flush them. Web (gunicorn),
a Celery worker and beat run as `make run` runs them, each in a session of its own with its
output in workdir/logs/<name>.log.

Every process started here dies with the thread that started it (PR_SET_PDEATHSIG), so a
killed test leaves nothing running: call the start and restart methods from a thread that
outlives the stack, such as the test's main thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, LiteralString

import kombu.exceptions
import psutil  # type: ignore[import-untyped]
import psycopg
import redis
import requests
from celery import Celery

from bench.processes import ROOT, Child, tail, wait_for
from devstack import services, supervisor
from devstack.ensure_bucket import S3Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("fieldsync.stack")

DATABASE = "fieldsync"
START_TIMEOUT = 60.0
PROCESSES = ("web", "worker", "beat")
SERVICES = ("postgres", "redis", "seaweedfs")
SERVICE_LOGS = {"postgres": "postgres.log", "redis": "redis.log", "seaweedfs": "weed.log"}


class StackError(RuntimeError):
    """The stack could not be started, or a fault could not be applied as asked."""


class Stack:
    """Postgres, Redis, SeaweedFS, gunicorn, a Celery worker and beat, and the faults to
    inflict on them. A context manager: leaving it stops everything, whatever happened."""

    base_url: str
    database_url: str
    redis_url: str
    s3: S3Settings
    env: dict[str, str]

    def __init__(
        self, workdir: Path, *, web_workers: int = 2, env: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.web_workers = web_workers
        self.web_port = 0
        self.worker_name = f"fieldsync-field-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        self.faults: list[tuple[float, str]] = []
        self._overrides = dict(env or {})
        self._services: dict[str, services.Service] = {}
        self._children: dict[str, Child] = {}
        self._celery: Celery | None = None

    # --- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Web, worker and beat, then the services; every step runs even if one fails."""
        with contextlib.ExitStack() as steps:
            for name in SERVICES:
                steps.callback(self._stop_service, name)
            steps.callback(self._stop_processes)
            if self._celery is not None:
                steps.callback(self._celery.close)
                self._celery = None

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self) -> None:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        postgres = services.start_postgres(self.workdir / "postgres")
        self._services["postgres"] = postgres
        self._services["redis"] = services.start_redis(self.workdir / "redis", persistent=False)
        store = services.start_seaweedfs(self.workdir / "seaweedfs", self._overrides)
        self._services["seaweedfs"] = store
        services.ensure_database(postgres.url, DATABASE)
        self.database_url = services.with_path(postgres.url, DATABASE)
        self.redis_url = self._services["redis"].url
        self.s3 = S3Settings.from_env(store.env)
        self.web_port = services.free_port_below_ephemeral(host="")  # gunicorn binds 0.0.0.0
        self.base_url = f"http://127.0.0.1:{self.web_port}"
        self.env = self._environment(store.env)
        self.manage("migrate", "--noinput")
        # Not the current app: shared tasks in this process must keep the project's broker.
        self._celery = Celery("fieldsync-stack", broker=self.redis_url, set_as_current=False)
        # Spawned together, waited for one by one: their start-ups overlap.
        web = self._spawn_web()
        worker = self._spawn_worker()
        self._spawn_beat()
        self._wait_web(web)
        self._wait_worker(worker)
        log.info("stack up at %s (workdir %s)", self.base_url, self.workdir)

    def _environment(self, store_env: Mapping[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        # Both point at things outside this stack: another run's metrics, another store.
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.pop("S3_PUBLIC_ENDPOINT_URL", None)
        env.update(store_env)
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            SECRET_KEY="fieldsync-field-day-not-a-secret",
            PYTHONUNBUFFERED="1",
            SWEEP_INTERVAL_SECONDS="2",
            SYNC_STALE_PENDING_SECONDS="2",
            SYNC_GAP_TIMEOUT_SECONDS="30",
        )
        env.update(self._overrides)
        return env

    # --- using it -------------------------------------------------------------------------
    def manage(self, *args: str) -> str:
        """`manage.py *args` with the stack's environment; its stdout."""
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(
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
        """Run `query` on a fresh autocommit connection; its rows (none for a statement)."""
        with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def s3_client(self) -> S3Client:
        return self.s3.client()

    def ready(self) -> bool:
        """GET /readyz answers 200: Postgres, Redis, the store and a worker all answer."""
        try:
            return requests.get(f"{self.base_url}/readyz", timeout=10).status_code == 200
        except requests.RequestException:
            return False

    def logs(self, name: str) -> str:
        """The log of a process (web, worker, beat) or service (postgres, redis, seaweedfs)."""
        if name in SERVICE_LOGS:
            path = self.workdir / name / SERVICE_LOGS[name]
        else:
            path = self.workdir / "logs" / f"{name}.log"
        return path.read_text(errors="replace")

    def heal(self) -> None:
        """Start again whatever a fault left stopped: Postgres, web, worker, beat."""
        if "postgres" not in self._services:
            self.start_postgres()
        for name, start in (("web", self.start_web), ("worker", self.start_worker)):
            if not self._is_running(name):
                if name in self._children:
                    self._kill(name)  # a dead leader can leave its children holding the port
                start()
        if not self._is_running("beat"):
            self._spawn_beat()
            self._fault("started beat")

    def web_worker_pids(self) -> list[int]:
        master = psutil.Process(self._child("web").process.pid)
        return [worker.pid for worker in master.children()]

    # --- faults ---------------------------------------------------------------------------
    def kill_web_worker(self) -> int:
        """SIGKILL one gunicorn worker; its master starts another. The victim's pid."""
        pids = self.web_worker_pids()
        if not pids:
            raise StackError("gunicorn has no worker to kill")
        victim = random.choice(pids)
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        self._fault(f"SIGKILLed web worker {victim}")
        return victim

    def kill_web(self) -> None:
        """SIGKILL gunicorn's master and workers at once, as a crashed machine would."""
        self._kill("web")
        self._fault("SIGKILLed web (master and workers)")

    def start_web(self) -> None:
        """Start gunicorn again, on the same port."""
        self._wait_web(self._spawn_web())
        self._fault("started web")

    def kill_worker(self) -> None:
        """SIGKILL the Celery worker and its pool at once, as a crash would."""
        self._kill("worker")
        self._fault("SIGKILLed Celery worker (and its pool)")

    def start_worker(self) -> None:
        self._wait_worker(self._spawn_worker())
        self._fault("started Celery worker")

    def flush_redis(self) -> None:
        """FLUSHALL: every queued message and binding in the broker is gone."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            client.flushall()
        finally:
            client.close()
        self._fault("flushed Redis (FLUSHALL)")

    def stop_postgres(self) -> None:
        """Fast shutdown: every session is ended, the server is gone until start_postgres."""
        self._stop_service("postgres")
        self._fault("stopped Postgres")

    def start_postgres(self) -> None:
        """Postgres again on the same data directory and port; returns once it answers."""
        data = self.workdir / "postgres"
        service = services.start_postgres(data)
        self._services["postgres"] = service
        if services.with_path(service.url, DATABASE) != self.database_url:
            raise StackError(f"Postgres came back at {service.url}, not at {self.database_url}")
        deadline = time.monotonic() + START_TIMEOUT
        while not services.postgres_answers(self.database_url):
            if time.monotonic() >= deadline:
                raise StackError(f"Postgres does not answer:\n{tail(data / 'postgres.log')}")
            time.sleep(0.05)
        self._fault("started Postgres")

    def restart_postgres(self) -> None:
        self.stop_postgres()
        self.start_postgres()

    # --- processes ------------------------------------------------------------------------
    def _spawn(
        self, name: str, command: list[str], extra: Mapping[str, str] | None = None
    ) -> Child:
        if self._is_running(name):
            raise StackError(f"{name} is already running")
        log_path = self.workdir / "logs" / f"{name}.log"
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**self.env, **(extra or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so a kill takes its children
                preexec_fn=services.die_with_parent(),  # noqa: PLW1509 (only a prctl call)
            )
        child = Child(name, process, log_path)
        self._children[name] = child
        return child

    def _spawn_web(self) -> Child:
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
        extra = {"PORT": str(self.web_port), "WEB_CONCURRENCY": str(self.web_workers)}
        return self._spawn("web", [*command, "syncserver.wsgi:application"], extra)

    def _spawn_worker(self) -> Child:
        command = self._celery_command("worker", "-Q", "fieldsync", "-c", "2", "--pool", "prefork")
        # No gossip or mingle: they only talk to other workers and slow the start down.
        command += ["-n", self.worker_name, "--without-gossip", "--without-mingle"]
        return self._spawn("worker", command)

    def _spawn_beat(self) -> Child:
        schedule = str(self.workdir / "beat-schedule")
        return self._spawn("beat", self._celery_command("beat", "--schedule", schedule))

    def _celery_command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "syncserver", *args, "--loglevel", "INFO"]

    def _wait_web(self, web: Child) -> None:
        def answers() -> bool:
            try:
                return requests.get(f"{self.base_url}/healthz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(answers, "gunicorn", web, timeout=START_TIMEOUT)

    def _wait_worker(self, worker: Child) -> None:
        wait_for(self._worker_answers, "Celery worker", worker, timeout=START_TIMEOUT)

    def _worker_answers(self) -> bool:
        assert self._celery is not None
        try:
            return bool(self._celery.control.ping(destination=[self.worker_name], timeout=0.5))
        except (kombu.exceptions.OperationalError, redis.RedisError):
            return False

    def _child(self, name: str) -> Child:
        child = self._children.get(name)
        if child is None:
            raise StackError(f"{name} is not running")
        return child

    def _is_running(self, name: str) -> bool:
        child = self._children.get(name)
        return child is not None and child.process.poll() is None

    def _kill(self, name: str) -> None:
        child = self._children.pop(name, None)
        if child is None:
            raise StackError(f"{name} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.process.pid, signal.SIGKILL)
        child.process.wait()

    def _stop_processes(self) -> None:
        """Web, worker and beat stopped gracefully, side by side; their groups SIGKILLed."""
        running = [self._children.pop(name) for name in PROCESSES if name in self._children]
        supervisor.stop([supervisor.Child(child.name, child.process) for child in running])

    def _stop_service(self, name: str) -> None:
        service = self._services.pop(name, None)
        if service is not None:
            service.stop()

    def _fault(self, description: str) -> None:
        self.faults.append((time.monotonic(), description))
        log.info("fault: %s", description)
