"""Infrastructure fixtures: a clean Redis db, real S3-compatible storage, a real Celery worker.

Domain fixtures are in tests/fixtures.py. Run the suite with `make test` (or
`python -m devstack test`), which provides Postgres and Redis db 15.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
import redis
from django.conf import settings
from django.db import connection

from devstack import services
from devstack.ensure_bucket import S3Settings, ensure_bucket
from syncserver import celery_app
from tests.helpers import wait_until

pytest_plugins = ["tests.fixtures"]

ROOT = Path(__file__).resolve().parent.parent
TEST_REDIS_DB = "15"


@pytest.fixture(scope="session", autouse=True)
def _empty_redis() -> None:
    """Start from an empty broker: messages left by an earlier run would reach our worker.

    Only db 15 is flushed, so a developer's own Redis data (db 0) is never touched.
    """
    db = urlsplit(settings.REDIS_URL).path.strip("/") or "0"
    if db != TEST_REDIS_DB:
        pytest.exit(
            f"REDIS_URL {settings.REDIS_URL} selects db {db}; the tests use and flush db 15. "
            "Run them with `make test` or `python -m devstack test`.",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    client.close()


@pytest.fixture(autouse=True)
def _fresh_limits() -> Iterator[None]:
    """Each test starts with no sign-in failures or device hits counted (they live in Redis,
    which outlives a test's database)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter("fieldsync:limit:*"))
    if keys:
        client.delete(*keys)
    client.close()
    yield


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Settings]:
    """The store S3_ENDPOINT_URL names, else a SeaweedFS in a temporary directory.

    Settings and the environment (for subprocesses such as the worker) point at it, and the
    bucket exists.
    """
    with ExitStack() as stack:
        if os.environ.get("S3_ENDPOINT_URL"):
            s3 = S3Settings.from_env(os.environ)
            ensure_bucket(s3)
        else:
            scratch = Path(tempfile.mkdtemp(prefix="fieldsync-s3-"))
            stack.callback(shutil.rmtree, scratch, ignore_errors=True)
            server = services.start_seaweedfs(scratch, os.environ)
            stack.callback(server.stop)
            s3 = S3Settings.from_env(server.env)
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        for name, value in s3.env().items():
            patch.setenv(name, value)
            patch.setattr(settings, name, value)
        yield s3


class CeleryWorker:
    """A real `celery worker` process (prefork pool) on the test database.

    Its output goes to a file, not a pipe, so a chatty worker can never block on a full pipe.
    """

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self._env = env
        self._log = log
        # A name of our own, so ping() hears this worker and no other on the same Redis.
        self.hostname = f"fieldsync-test-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self._running().pid

    def start(self) -> None:
        command = [sys.executable, "-m", "celery", "-A", "syncserver", "worker"]
        command += ["-Q", "fieldsync", "-c", "2", "--pool", "prefork", "--loglevel", "INFO"]
        # No gossip or mingle: they only talk to other workers and slow the start down.
        command += ["-n", self.hostname, "--without-gossip", "--without-mingle"]
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, for kill()
                preexec_fn=services.die_with_parent(),  # noqa: PLW1509 (a prctl call)
            )
        wait_until(self._answers, timeout=60, interval=0.1, message="celery worker never answered")

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once, as a crash would."""
        process = self._running()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        """Warm shutdown (running tasks finish); SIGKILL what is left after 30 s."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def logs(self) -> str:
        return self._log.read_text(errors="replace")

    def _running(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("the celery worker was never started")
        return self._process

    def _answers(self) -> bool:
        code = self._running().poll()
        if code is not None:
            tail = "\n".join(self.logs().splitlines()[-50:])
            raise AssertionError(f"celery worker exited with {code}; its log ends:\n{tail}")
        return bool(celery_app.control.ping(destination=[self.hostname], timeout=0.5))


@pytest.fixture(scope="session")
def celery_worker(django_db_setup: None, s3_server: S3Settings) -> Iterator[CeleryWorker]:
    """A worker on pytest-django's test database; stopped before that database is dropped."""
    log_fd, log_name = tempfile.mkstemp(prefix="fieldsync-celery-", suffix=".log")
    os.close(log_fd)
    log = Path(log_name)
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(connection.settings_dict),
        "REDIS_URL": settings.REDIS_URL,
        "SYNC_STALE_PENDING_SECONDS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    worker = CeleryWorker(env, log)
    try:
        worker.start()
        yield worker
    finally:
        worker.stop()
        log.unlink(missing_ok=True)


def _database_url(db: dict[str, object]) -> str:
    """A URL for the test database the settings dict describes (after pytest-django's setup)."""

    def part(key: str) -> str:
        # Percent-encoded, so a password with '@' or a socket directory for HOST survives.
        return quote(str(db.get(key) or ""), safe="")

    user, password, host, port, name = map(part, ("USER", "PASSWORD", "HOST", "PORT", "NAME"))
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    return f"postgres://{auth}{host}{':' + port if port else ''}/{name}"
