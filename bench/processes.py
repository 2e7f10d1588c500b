"""The server processes a benchmark starts (gunicorn, Celery workers), and their cleanup.

Each runs in a session of its own with its output in a log file, so a benchmark's report is
not buried in access logs, and stopping it ends its whole process group (gunicorn's and
Celery's worker processes too), whatever state the benchmark failed in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psycopg
import urllib3

ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT = 20.0


class ProcessDied(RuntimeError):
    """A server process exited while the benchmark still needed it."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def check(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise ProcessDied(f"{self.name} exited with code {code}:\n{tail(self.log)}")


class Children:
    """Processes started for one benchmark; leaving the `with` block stops every one."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self._running: list[Child] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(self, name: str, command: list[str], env: Mapping[str, str] | None = None) -> Child:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                command,
                env={**self.env, **(env or {})},
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, process, log)
        self._running.append(child)
        return child

    def stop(self, child: Child) -> None:
        """SIGTERM (a graceful stop), then SIGKILL to whatever is left of its group."""
        if child.process.poll() is None:
            child.process.terminate()
            try:
                child.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"bench: {child.name} did not stop; killing it", file=sys.stderr)
        # Also after a clean exit: a leader that dies first can leave its workers behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signal.SIGKILL)
        child.process.wait()
        if child in self._running:
            self._running.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self._running)):
            self.stop(child)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def wait_for(ready: Callable[[], bool], what: str, child: Child, timeout: float = 60.0) -> None:
    """Poll `ready` until it holds; fail early if `child` dies, late if it never gets there."""
    deadline = time.monotonic() + timeout
    while not ready():
        child.check()
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not ready within {timeout:.0f} s:\n{tail(child.log)}")
        time.sleep(0.1)


def tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"


# --- the servers as the benchmarks run them -------------------------------------------------
def start_gunicorn(children: Children, port: int) -> Child:
    """gunicorn as `gunicorn.conf.py` sets it up, on 127.0.0.1:`port`; returns once it answers."""
    command = [
        sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
        "--bind", f"127.0.0.1:{port}", "syncserver.wsgi",
    ]  # fmt: skip
    web = children.start("gunicorn", command, {"PORT": str(port)})
    probe = urllib3.HTTPConnectionPool("127.0.0.1", port, retries=False, timeout=2.0)

    def healthy() -> bool:
        try:
            return probe.request("GET", "/healthz").status == 200
        except urllib3.exceptions.HTTPError:
            return False

    wait_for(healthy, "gunicorn", web)
    return web


def start_celery_worker(children: Children, name: str, concurrency: int) -> Child:
    """A prefork Celery worker on the fieldsync queue, named `name`; returns once it answers."""
    from syncserver.celery import app

    command = [
        sys.executable, "-m", "celery", "-A", "syncserver", "worker", "-Q", "fieldsync",
        "-c", str(concurrency), "--pool", "prefork", "-n", name, "--loglevel", "INFO",
    ]  # fmt: skip
    worker = children.start("celery", command)
    wait_for(
        lambda: bool(app.control.ping(destination=[name], timeout=0.5)), "Celery worker", worker
    )
    return worker


def other_celery_workers(own: str) -> list[str]:
    """Celery workers on this broker other than `own` (another benchmark run, say): they take
    rings meant for ours."""
    from syncserver.celery import app

    replies = app.control.ping(timeout=1.0) or []
    return [name for reply in replies for name in reply if name != own]


def setup_django() -> tuple[str, str]:
    """Migrate the bench database, set Django up in this process; its name and conninfo."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "syncserver.settings")
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True
    )
    import django
    from django.conf import settings

    django.setup()
    # Our own set-up calls log every user and token they make; the servers still log.
    logging.getLogger("fieldsync").setLevel(logging.WARNING)
    db = settings.DATABASES["default"]
    conninfo = psycopg.conninfo.make_conninfo(
        dbname=db["NAME"],
        user=db.get("USER") or None,
        password=db.get("PASSWORD") or None,
        host=db.get("HOST") or None,
        port=str(db.get("PORT") or "") or None,
    )
    return str(db["NAME"]), conninfo


def git_commit() -> str:
    """The short commit the benchmark ran at, noting uncommitted changes to tracked files."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        return "?"
    return f"{head} + uncommitted changes" if dirty else head
